"""The generic small-image presets ``small_<method>`` (issue 26): one per method, not tuned to one data set.

Each validates, names its own method, and trains a few steps in the registry suite's cheapest check (the
shrunk demo of tests/methods/test_every_method.py: a 2-block ViT on random images). Each keeps the generic
recipe: horizontal flips, colour jitter and grayscale on every view, crops no larger than the papers'
standard scales; a digits-only departure (no flip, no grayscale, crops of at least 60%) fails the check,
as the digits presets ``demo_<method>`` show.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from dinolite.config import Config, available_presets, load_config
from dinolite.train.loop import train
from dinolite.train.methods import get_method
from tests.methods.test_every_method import ITERATIONS, SMALL, random_image_stream

# The methods that must have a generic preset (the joint-embedding and distillation family, issue 26 item 2).
REQUIRED = ("simclr", "byol", "simsiam", "barlow_twins", "vicreg", "msn", "directclr", "dinov2")
SMALL_PRESETS = sorted(name for name in available_presets() if name.startswith("small_"))
# The largest lower crop scale of a standard recipe: DINOv2's 0.32 (SimCLR, BYOL 0.08, SimSiam 0.2, MSN 0.3).
MAX_MIN_CROP_SCALE = 0.32


def view_recipes(cfg: Config) -> dict[str, dict[str, Any]]:
    """Each view's flip, jitter and grayscale probabilities, by the name of the key that sets them."""
    if "joint_embedding" in {section.name for section in get_method(cfg.train.method).config_sections}:
        section = cfg.joint_embedding
        views = {"joint_embedding.view1": section.view1, "joint_embedding.view2": section.view2}
        if cfg.crops.local_crops_number:
            views["joint_embedding.local_view"] = section.local_view
        return {key: vars(view) for key, view in views.items()}
    return {"crops": {k: getattr(cfg.crops, k) for k in ("horizontal_flip_p", "color_jitter_p", "grayscale_p")}}


def data_set_departures(cfg: Config) -> list[str]:
    """What in ``cfg`` departs from a generic small-image recipe towards one data set (empty: none)."""
    found = []
    for key, view in view_recipes(cfg).items():
        if view["horizontal_flip_p"] != 0.5:
            found.append(f"{key}.horizontal_flip_p={view['horizontal_flip_p']} (generic: 0.5)")
        if view["color_jitter_p"] <= 0 or view["grayscale_p"] <= 0:
            found.append(f"{key}: colour jitter p {view['color_jitter_p']}, grayscale p {view['grayscale_p']}")
    scales = {"crops.global_crops_scale": cfg.crops.global_crops_scale}
    if cfg.crops.local_crops_number:
        scales["crops.local_crops_scale"] = cfg.crops.local_crops_scale
    for key, (low, _) in scales.items():
        if low > MAX_MIN_CROP_SCALE:
            found.append(f"{key} starts at {low} (standard recipes: at most {MAX_MIN_CROP_SCALE})")
    return found


def test_every_required_method_has_a_generic_preset():
    missing = [name for name in REQUIRED if f"small_{name}" not in SMALL_PRESETS]
    assert not missing, f"no generic small-image preset for {missing}"


@pytest.mark.parametrize("preset", SMALL_PRESETS)
def test_a_generic_preset_validates_and_names_its_method(preset):
    cfg = load_config(preset)
    assert cfg.train.method == preset.removeprefix("small_")
    assert (cfg.train.batch_size_per_gpu, cfg.optim.epochs * cfg.train.iterations_per_epoch) == (64, 300)
    assert (cfg.student.embed_dim, cfg.student.depth, cfg.crops.global_crops_size) == (96, 4, 32)  # the demo ViT


@pytest.mark.parametrize("preset", SMALL_PRESETS)
def test_a_generic_preset_has_no_data_set_specific_departure(preset):
    assert data_set_departures(load_config(preset)) == []


@pytest.mark.parametrize("preset", [f"demo_{name}" if name != "dinov2" else "demo" for name in REQUIRED])
def test_the_digits_presets_departures_are_found(preset):
    """The check above can fail: every digits preset turns flips off and crops at 60% or more."""
    found = data_set_departures(load_config(preset))
    assert any("horizontal_flip_p=0.0" in item for item in found) and any("starts at" in item for item in found)


@pytest.mark.parametrize("preset", SMALL_PRESETS)
def test_a_generic_preset_trains_a_few_steps(preset, tmp_path):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(load_config(preset, [*SMALL, f"train.output_dir={tmp_path}"]), batches=random_image_stream)
    finally:
        torch.set_num_threads(previous)
    assert result.status == "finished" and result.iteration == ITERATIONS
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = torch.tensor([r["loss"] for r in records if "loss" in r])
    assert len(losses) == 1 + ITERATIONS // 2 and bool(torch.isfinite(losses).all())
