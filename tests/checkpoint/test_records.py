"""``state.json`` and its method record are checked before use; a failure names the file, key and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from dinolite.checkpoint.errors import DamagedCheckpointError
from dinolite.checkpoint.layout import FORMAT_VERSION
from dinolite.checkpoint.records import check_method_record, check_state_info

FILE = Path("/run/checkpoints/iter_00000004/state.json")
GOOD = {"iteration": 4, "batches_consumed": 4, "world_size": 2, "format": FORMAT_VERSION, "app_state": {}}


def test_a_valid_state_passes_through_unchanged():
    assert check_state_info(dict(GOOD), FILE) == GOOD


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"iteration": -1}, "iteration"),
        ({"iteration": True}, "iteration"),  # a bool is not a counter
        ({"batches_consumed": 1.5}, "batches_consumed"),
        ({"world_size": 0}, "world_size"),
        ({"format": FORMAT_VERSION + 1}, "format"),
        ({"format": 0}, "format"),
        ({"app_state": []}, "app_state"),
    ],
)
def test_a_field_out_of_range_is_refused_naming_file_key_and_value(change, key):
    with pytest.raises(DamagedCheckpointError) as caught:
        check_state_info({**GOOD, **change}, FILE)
    message = str(caught.value)
    assert str(FILE) in message and f"{key}={change[key]!r}" in message


def test_a_missing_counter_or_a_non_object_is_refused():
    with pytest.raises(DamagedCheckpointError, match="missing or non-integer 'world_size'"):
        check_state_info({"iteration": 1, "batches_consumed": 1}, FILE)
    with pytest.raises(DamagedCheckpointError, match="holds a JSON list"):
        check_state_info([1, 2], FILE)


def test_a_method_record_names_the_method_the_network_and_module_heads():
    record = {"name": "dinov2", "eval_network": "teacher", "heads": ["dino_head", "ibot_head"]}
    assert check_method_record(record, FILE) == record


@pytest.mark.parametrize(
    ("record", "key"),
    [
        ({"name": "", "eval_network": "teacher"}, "method.name"),
        ({"name": "byol", "eval_network": "target"}, "method.eval_network"),
        ({"name": "byol", "eval_network": "student", "heads": ["../x"]}, "method.heads"),
        ({"name": "byol", "eval_network": "student", "heads": "head"}, "method.heads"),
        ("dinov2", "method"),
    ],
)
def test_a_bad_method_record_is_refused_naming_the_key(record, key):
    with pytest.raises(DamagedCheckpointError, match=f"{key}="):
        check_method_record(record, FILE)
