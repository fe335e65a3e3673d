"""``student.init_scale``: the named student modules' weight matrices x the factor, nothing else; 1.0 = today."""

from __future__ import annotations

import pytest
import torch

from dinolite.config import ConfigError, load_config
from dinolite.distributed import DistributedEnv
from dinolite.train.build import build_run
from dinolite.train.init_scale import scale_initial_weights, scaled_parameter_names
from tests.train.test_loop import TINY

CPU = DistributedEnv()
TINY_BARLOW = [
    "student.embed_dim=16",
    "student.depth=1",
    "student.num_heads=2",
    "joint_embedding.projector_hidden_dim=32",
    "joint_embedding.projector_out_dim=8",
]


def tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def built(preset: str, overrides: list[str]) -> dict[str, torch.Tensor]:
    with build_run(load_config(preset, overrides), CPU) as run:
        return tensors(run.objective)


def test_the_factor_scales_the_projector_weight_matrices_and_nothing_else():
    plain = built("demo_barlow_twins", TINY_BARLOW)
    small = built("demo_barlow_twins", [*TINY_BARLOW, "student.init_scale=0.001"])
    scaled = {k for k in plain if k.startswith("student.projector.") and k.endswith(".weight") and plain[k].dim() >= 2}
    assert scaled == {f"student.projector.layers.fc{i}.weight" for i in range(3)}  # not the BatchNorm weights
    for key in plain:
        if key in scaled:
            assert torch.equal(small[key], plain[key] * 0.001), key
        else:  # backbone, biases, BatchNorm affines and running stats: bitwise as built
            assert torch.equal(small[key], plain[key]), key


def test_a_factor_of_one_is_bit_identical_to_the_default_build():
    plain = built("demo", TINY)
    explicit = built("demo", [*TINY, "student.init_scale=1.0", "student.init_scale_modules=[backbone,dino_head]"])
    assert sorted(plain) == sorted(explicit)
    assert all(torch.equal(plain[k], explicit[k]) for k in plain)


def test_the_ema_teacher_copy_is_scaled_with_the_student():
    small = built("demo", [*TINY, "student.init_scale=0.5", "student.init_scale_modules=[dino_head]"])
    plain = built("demo", TINY)
    head = [k for k in plain if k.startswith("student.dino_head.") and k.endswith("weight") and plain[k].dim() >= 2]
    assert head
    for key in head:
        teacher_key = "teacher." + key.removeprefix("student.")
        assert torch.equal(small[key], plain[key] * 0.5) and torch.equal(small[teacher_key], small[key])
    backbone = [k for k in plain if ".backbone." in k or k.startswith(("student.backbone", "teacher.backbone"))]
    assert backbone and all(torch.equal(small[k], plain[k]) for k in backbone)


def test_only_weight_matrices_and_kernels_are_named():
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    assert scaled_parameter_names(module) == ["0.weight", "2.weight"]


def test_an_unknown_module_or_a_non_positive_factor_is_refused():
    with build_run(load_config("demo_barlow_twins", TINY_BARLOW), CPU) as run:
        with pytest.raises(
            ConfigError, match=r"'student.init_scale_modules': 'head'; this method's student has backbone, projector"
        ):
            scale_initial_weights(run.objective, 0.1, ["head"])
        with pytest.raises(ConfigError, match=r"'student.init_scale': -1.0; must be > 0"):
            scale_initial_weights(run.objective, -1.0, ["projector"])
    with pytest.raises(ConfigError, match=r"student.init_scale"):
        load_config("demo_barlow_twins", ["student.init_scale=0"])
