"""Every field of a handed-over backbone record is type- and range-checked, naming the file, key and value."""

from __future__ import annotations

import pytest

from dinolite.export.errors import ExportFormatError
from dinolite.export.spec_checks import MAX_IMAGE_SIDE, check_record_fields

ORIGIN = "/exports/model.safetensors"


def test_valid_fields_pass_and_lists_of_numbers_become_tuples():
    record = {"embed_dim": 384, "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2], "qkv_bias": True, "iteration": None}
    assert check_record_fields(record, ORIGIN) == {**record, "mean": (0.5,) * 3, "std": (0.2,) * 3}


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("embed_dim", 0, "an integer >= 1"),
        ("depth", True, "an integer"),  # a JSON true is not a depth
        ("num_register_tokens", -1, ">= 0"),
        ("train_img_size", MAX_IMAGE_SIDE + 1, f"from 1 to {MAX_IMAGE_SIDE}"),
        ("std", [0.2, 0.0, 0.2], "three finite numbers > 0"),
        ("mean", [0.5, float("nan"), 0.5], "three finite numbers"),
        ("mlp_ratio", 0.0, "a finite number"),
        ("interpolate_offset", 1.0, "a finite number"),
        ("qkv_bias", "no", "true or false"),
        ("ffn_layer", "moe", "one of"),
        ("format_version", 2, "an integer from 1 to 1"),
        ("extra", [], "a JSON object"),
        ("arch", 7, "text"),
    ],
)
def test_a_bad_field_is_refused_naming_file_key_and_value(key, value, expected):
    with pytest.raises(ExportFormatError) as caught:
        check_record_fields({key: value}, ORIGIN)
    message = str(caught.value)
    assert message.startswith(f"{ORIGIN}: {key}={value!r} is not valid: expected")
    assert expected in message


def test_a_long_value_is_shortened_in_the_message():
    with pytest.raises(ExportFormatError) as caught:
        check_record_fields({"arch": ["x" * 200]}, ORIGIN)
    assert "..." in str(caught.value) and len(str(caught.value)) < 200
