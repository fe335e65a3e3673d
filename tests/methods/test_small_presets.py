"""The generic small-image presets ``small_<method>`` (issue 26): one per method, not tuned to one data set.

Each validates, names its own method, and trains a few steps in the registry suite's cheapest check (the
shrunk demo of tests/methods/test_every_method.py: a 2-block ViT on random images). Each keeps the generic
recipe: horizontal flips, colour jitter and grayscale on every view, crops no larger than the papers'
standard scales; a digits-only departure (no flip, no grayscale, crops of at least 60%) fails the check,
as the digits presets ``demo_<method>`` show. A value a recipe grid chose on the digits and Fashion-MNIST
together (docs/recipes.md) is not a departure towards one set (:data:`CHOSEN_ON_TWO_SETS`).

The masked-image methods (MAE, SimMIM, BEiT, I-JEPA) are the one exception, and a precise one: their transforms
apply no colour jitter or grayscale by design, so none is required; instead their flip and their lower crop
scale must be exactly their paper's (:data:`MASKED_RECIPES`).
"""

from __future__ import annotations

import json
from typing import Any, Optional

import pytest
import torch

from dinolite.config import Config, available_presets, load_config
from dinolite.train.loop import train
from dinolite.train.methods import get_method
from tests.methods.test_every_method import ITERATIONS, PRESET_INPUTS, SMALL, random_image_stream

# The methods that must have a generic preset (issue 26 item 2), by preset: every registered method but
# distillation (a teacher checkpoint, not a recipe), and DINO and iBOT as presets of the DINOv2 objective.
REQUIRED = (
    *("simclr", "byol", "simsiam", "barlow_twins", "vicreg", "msn", "directclr", "dinov2", "mocov3", "swav"),
    *("lejepa", "pirl", "mae", "simmim", "beit", "ijepa", "dino", "ibot"),
)
# Presets whose name is not their method: DINO and iBOT train the DINOv2 objective (no train.method key).
METHOD_OF_PRESET = {"small_dino": "dinov2", "small_ibot": "dinov2"}
# The digits preset beside each generic one (DINOv2's is the demo itself).
DIGITS_PRESET = {"dinov2": "demo"}
SMALL_PRESETS = sorted(name for name in available_presets() if name.startswith("small_"))
# The largest lower crop scale of a standard recipe: DINO's 0.4 (DINOv2 0.32, SimCLR, BYOL 0.08, SimSiam 0.2,
# MSN and LeJEPA 0.3, iBOT 0.25, SwAV 0.14); every digits preset crops at 0.6 or more.
MAX_MIN_CROP_SCALE = 0.4
# Values a recipe grid chose on the digits and Fashion-MNIST together (docs/recipes.md): chosen on two sets,
# so not a departure towards one, by preset and key.
CHOSEN_ON_TWO_SETS: dict[str, dict[str, float]] = {
    "small_simclr": {"crops.global_crops_scale": 0.6},  # configs/lab/recipes_simclr.yaml
    "small_barlow_twins": {"crops.global_crops_scale": 0.6},  # configs/lab/recipes_barlow_twins.yaml
    "small_simsiam": {"crops.global_crops_scale": 0.6},  # configs/lab/recipes_simsiam.yaml
    "small_msn": {"crops.global_crops_scale": 0.6},  # configs/lab/recipes_msn.yaml
    "small_vicreg": {"crops.global_crops_scale": 0.6},  # configs/lab/recipes_vicreg.yaml
}
# Masked-image methods: (flip probability, lower crop scale) of their paper's only augmentations; None: the
# method's transform has no flip to set (I-JEPA hard-codes none). No colour jitter or grayscale is required:
# their transforms apply none by design.
MASKED_RECIPES: dict[str, tuple[Optional[float], float]] = {
    "mae": (0.5, 0.2),  # main_pretrain.py: RandomResizedCrop(scale=(0.2, 1.0)), RandomHorizontalFlip
    "simmim": (0.5, 0.67),  # SimMIM's pre-training transform: scale (0.67, 1.0), RandomHorizontalFlip
    "beit": (0.5, 0.08),  # BEiT's datasets.py: scale (0.08, 1.0), RandomHorizontalFlip
    "ijepa": (None, 0.3),  # I-JEPA's config: crop_scale (0.3, 1.0), use_horizontal_flip false
}


def method_of(preset: str) -> str:
    """The method a generic preset trains."""
    return METHOD_OF_PRESET.get(preset, preset.removeprefix("small_"))


def view_recipes(cfg: Config) -> dict[str, dict[str, Any]]:
    """Each view's flip, jitter and grayscale probabilities, by the name of the key that sets them."""
    sections = {section.name for section in get_method(cfg.train.method).config_sections}
    if "pirl" in sections:
        return {f"pirl.{key}": vars(getattr(cfg.pirl, key)) for key in ("image_view", "jigsaw_view")}
    if "joint_embedding" in sections:
        section = cfg.joint_embedding
        views = {"joint_embedding.view1": section.view1, "joint_embedding.view2": section.view2}
        if cfg.crops.local_crops_number:
            views["joint_embedding.local_view"] = section.local_view
        return {key: vars(view) for key, view in views.items()}
    return {"crops": {k: getattr(cfg.crops, k) for k in ("horizontal_flip_p", "color_jitter_p", "grayscale_p")}}


def masked_departures(cfg: Config, flip_p: Optional[float], low: float) -> list[str]:
    """A masked-image method's departures from its paper's flip and lower crop scale (empty: none)."""
    found = []
    if flip_p is not None and cfg.crops.horizontal_flip_p != flip_p:
        found.append(f"crops.horizontal_flip_p={cfg.crops.horizontal_flip_p} (the paper's: {flip_p})")
    if cfg.crops.global_crops_scale[0] != low:
        found.append(f"crops.global_crops_scale starts at {cfg.crops.global_crops_scale[0]} (the paper's: {low})")
    return found


def data_set_departures(cfg: Config, chosen: Optional[dict[str, float]] = None) -> list[str]:
    """What in ``cfg`` departs from a generic small-image recipe towards one data set (empty: none);
    ``chosen``: lower crop scales a recipe grid chose on both development sets, by key."""
    if cfg.train.method in MASKED_RECIPES:
        return masked_departures(cfg, *MASKED_RECIPES[cfg.train.method])
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
        if low > MAX_MIN_CROP_SCALE and (chosen or {}).get(key) != low:
            found.append(f"{key} starts at {low} (standard recipes: at most {MAX_MIN_CROP_SCALE})")
    return found


def test_every_required_method_has_a_generic_preset():
    missing = [f"small_{name}" for name in REQUIRED if f"small_{name}" not in SMALL_PRESETS]
    assert not missing, f"no generic small-image preset for {missing}"


@pytest.mark.parametrize("preset", SMALL_PRESETS)
def test_a_generic_preset_validates_and_names_its_method(preset):
    cfg = load_config(preset)
    assert cfg.train.method == method_of(preset)
    assert (cfg.train.batch_size_per_gpu, cfg.optim.epochs * cfg.train.iterations_per_epoch) == (64, 300)
    assert (cfg.student.embed_dim, cfg.student.depth, cfg.crops.global_crops_size) == (96, 4, 32)  # the demo ViT


@pytest.mark.parametrize("preset", SMALL_PRESETS)
def test_a_generic_preset_has_no_data_set_specific_departure(preset):
    assert data_set_departures(load_config(preset), CHOSEN_ON_TWO_SETS.get(preset)) == []


def test_only_a_value_chosen_on_both_sets_is_let_through():
    """The exception is exactly the chosen value: another large crop, or flips off, is still a departure."""
    chosen = CHOSEN_ON_TWO_SETS["small_simclr"]
    assert data_set_departures(load_config("small_simclr")) == [
        "crops.global_crops_scale starts at 0.6 (standard recipes: at most 0.4)"
    ]
    assert data_set_departures(load_config("small_simclr", ["crops.global_crops_scale=[0.7,1.0]"]), chosen) == [
        "crops.global_crops_scale starts at 0.7 (standard recipes: at most 0.4)"
    ]
    flips_off = ["joint_embedding.view1.horizontal_flip_p=0.0"]
    assert data_set_departures(load_config("small_simclr", flips_off), chosen) == [
        "joint_embedding.view1.horizontal_flip_p=0.0 (generic: 0.5)"
    ]


@pytest.mark.parametrize("preset", [DIGITS_PRESET.get(name, f"demo_{name}") for name in REQUIRED])
def test_the_digits_presets_departures_are_found(preset):
    """The check above can fail: every digits preset turns flips off and crops at 60% or more. Two are found by
    one of the two alone: demo_simmim crops at SimMIM's own 0.67, and I-JEPA has no flip to turn off."""
    found = data_set_departures(load_config(preset))
    flips_off = any("horizontal_flip_p=0.0" in item for item in found)
    crops_large = any("starts at 0.6" in item for item in found)
    expected = {"demo_simmim": (True, False), "demo_ijepa": (False, True)}.get(preset, (True, True))
    assert (flips_off, crops_large) == expected, found


def test_the_masked_exception_is_only_their_papers_recipe():
    """A masked-image preset needs no jitter, but its flip and crop must be its paper's, not any generic one."""
    assert data_set_departures(load_config("small_mae", ["crops.global_crops_scale=[0.08,1.0]"])) == [
        "crops.global_crops_scale starts at 0.08 (the paper's: 0.2)"
    ]
    assert data_set_departures(load_config("small_beit", ["crops.horizontal_flip_p=0.0"])) == [
        "crops.horizontal_flip_p=0.0 (the paper's: 0.5)"
    ]
    jitter_off = "crops.color_jitter_p=0.0"  # a joint-embedding-style check would flag this; the masked one must not
    assert data_set_departures(load_config("small_simmim", [jitter_off])) == []


@pytest.mark.parametrize("preset", SMALL_PRESETS)
def test_a_generic_preset_trains_a_few_steps(preset, tmp_path):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        inputs = PRESET_INPUTS.get(method_of(preset), [])  # BEiT's tokenizer: a random one, as the registry suite
        cfg = load_config(preset, [*SMALL, *inputs, f"train.output_dir={tmp_path}"])
        result = train(cfg, batches=random_image_stream)
    finally:
        torch.set_num_threads(previous)
    assert result.status == "finished" and result.iteration == ITERATIONS
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = torch.tensor([r["loss"] for r in records if "loss" in r])
    assert len(losses) == 1 + ITERATIONS // 2 and bool(torch.isfinite(losses).all())
