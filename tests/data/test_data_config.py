"""The data section's keys: present in the schema and default.yaml, range-checked with errors naming the key,
and passed through to the loader's options (dinolite.train.batches.loader_options)."""

from __future__ import annotations

import pytest

from dinolite.config import ConfigError, load_config
from dinolite.data.decode import DEFAULT_MAX_IMAGE_PIXELS
from dinolite.data.loader import LoaderOptions
from dinolite.data.skip_window import DEFAULT_MAX_SKIP_FRACTION, DEFAULT_SKIP_WINDOW
from dinolite.train.batches import loader_options


def test_defaults_agree_between_config_and_loader():
    data = load_config("demo").data
    assert data.decode_errors_max_fraction == DEFAULT_MAX_SKIP_FRACTION
    assert data.decode_errors_window == DEFAULT_SKIP_WINDOW
    assert data.max_image_pixels == DEFAULT_MAX_IMAGE_PIXELS


@pytest.mark.parametrize(
    "override,message",
    [
        ("data.decode_errors_max_fraction=1.5", r"'data\.decode_errors_max_fraction': 1\.5; must be in \[0, 1\]"),
        ("data.decode_errors_max_fraction=-0.1", r"'data\.decode_errors_max_fraction': -0\.1"),
        ("data.decode_errors_window=0", r"'data\.decode_errors_window': 0; must be >= 1"),
        ("data.max_image_pixels=0", r"'data\.max_image_pixels': 0; must be >= 1"),
        ("data.shuffle_buffer=-1", r"'data\.shuffle_buffer': -1; must be >= 0"),
        ("data.num_workers=-2", r"'data\.num_workers': -2; must be >= 0"),
    ],
)
def test_out_of_range_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", [override])


def test_edge_values_are_accepted():
    for override in (
        "data.decode_errors_max_fraction=0",
        "data.decode_errors_max_fraction=1",
        "data.decode_errors_window=1",
        "data.max_image_pixels=1",
    ):
        load_config("demo", [override])


def test_the_data_keys_reach_the_loader_options():
    cfg = load_config(
        "demo",
        [
            "data.decode_errors_max_fraction=0.2",
            "data.decode_errors_window=77",
            "data.max_image_pixels=1234",
            "data.max_sample_bytes=5678",
            "data.shuffle_buffer_bytes=91011",
            "data.shuffle_buffer=12",
            "data.num_workers=3",
            "train.batch_size_per_gpu=5",
            "train.seed=9",
        ],
    )
    assert loader_options(cfg, rank=1, world_size=2) == LoaderOptions(
        batch_size=5,
        num_workers=3,
        seed=9,
        rank=1,
        world_size=2,
        shuffle_buffer=12,
        max_image_pixels=1234,
        max_sample_bytes=5678,
        shuffle_buffer_bytes=91011,
        max_skip_fraction=0.2,
        skip_window=77,
    )
