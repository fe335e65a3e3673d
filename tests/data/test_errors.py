"""A SourceError keeps its one-line message even when a DataLoader worker re-raises it with a traceback."""

from __future__ import annotations

from dinolite.data.errors import SourceError


def test_a_plain_message_is_unchanged():
    assert str(SourceError("/data/*.tar: matches no file")) == "/data/*.tar: matches no file"


def test_a_worker_traceback_is_cut_to_the_message_and_says_where_it_was_raised():
    relayed = (
        "Caught SourceError in DataLoader worker process 1.\n"
        "Original Traceback (most recent call last):\n"
        '  File "/x/dinolite/data/tar_streams.py", line 10, in read\n'
        "    raise SourceError(message)\n"
        "dinolite.data.errors.SourceError: /data/shard-3.tar: truncated at member 12\n"
    )
    assert str(SourceError(relayed)) == "/data/shard-3.tar: truncated at member 12 (raised in a DataLoader worker)"


def test_a_worker_traceback_of_another_error_is_left_whole():
    relayed = "Caught OSError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\nOSError: x"
    assert str(SourceError(relayed)) == relayed
