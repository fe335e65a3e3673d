"""A raw sample's image and label: the first image member, and a label that is a class index or an error."""

from __future__ import annotations

import pytest

from dinolite.data.budget import InputTooLargeError
from dinolite.data.samples import LabelError, image_bytes, sample_label

WHERE = {"__key__": "000042", "__url__": "/data/shard-0001.tar"}


def test_the_image_member_is_found_whatever_its_extension():
    assert image_bytes({**WHERE, "png": b"PNG", "cls": b"3"}) == b"PNG"
    assert image_bytes({**WHERE, "webp": b"WEBP"}) == b"WEBP"


def test_a_sample_without_image_names_its_members_and_a_skipped_one_its_reason():
    with pytest.raises(
        KeyError, match=r"sample '000042' of '/data/shard-0001.tar' has no image \(members: \['cls', 'txt'\]\)"
    ):
        image_bytes({**WHERE, "cls": b"1", "txt": b"a cat"})
    with pytest.raises(InputTooLargeError, match="over the budget"):
        image_bytes({**WHERE, "__error__": "member 000042.jpg is over the budget"})


@pytest.mark.parametrize(("raw", "label"), [(b"7", 7), (b" 12\n", 12), (b"9223372036854775807", 2**63 - 1)])
def test_a_class_index_is_read_as_an_integer(raw, label):
    assert sample_label({**WHERE, "cls": raw}) == label


def test_a_sample_without_label_is_minus_one():
    assert sample_label(dict(WHERE)) == -1
    assert sample_label({**WHERE, "cls": b""}) == -1


@pytest.mark.parametrize("raw", [b"cat", b"-3", b"1.5", b"1_000", b"9223372036854775808", b"\xff"])
def test_anything_else_stops_naming_shard_key_and_value(raw):
    with pytest.raises(LabelError, match="shard '/data/shard-0001.tar' key '000042': member '000042.cls' holds"):
        sample_label({**WHERE, "cls": raw})
