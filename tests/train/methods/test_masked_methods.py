"""I-JEPA, MSN and SimMIM objectives built from their demo presets: one step on real views."""

from __future__ import annotations

import pytest
import torch

from dinolite.config import ConfigError, load_config
from dinolite.train.methods import get_method
from dinolite.train.methods.ijepa import IJEPAObjective
from dinolite.train.methods.msn import MSNObjective
from dinolite.train.methods.simmim import SimMIMObjective

TINY = ["student.depth=1", "student.embed_dim=24", "student.num_heads=2", "train.batch_size_per_gpu=4"]


def _batch(cfg, spec, n: int = 4) -> dict:
    g = torch.Generator().manual_seed(0)
    transform, collate = spec.build_transform(cfg), spec.build_collate(cfg)
    images = [torch.randint(0, 256, (3, 36, 36), dtype=torch.uint8, generator=g) for _ in range(n)]
    samples = [transform(img, generator=torch.Generator().manual_seed(i)) for i, img in enumerate(images)]
    return collate(samples, generator=torch.Generator().manual_seed(0))


def _step(name: str, overrides=()):
    cfg = load_config(f"demo_{name}", [*TINY, *overrides])
    spec = get_method(name)
    torch.manual_seed(0)
    objective = spec.build_objective(cfg)
    out = objective(_batch(cfg, spec), iteration=0)
    out.loss.backward()
    return cfg, spec, objective, out


@pytest.mark.parametrize(
    "name, cls, network, heads",
    [
        ("ijepa", IJEPAObjective, "teacher", ("predictor",)),
        ("msn", MSNObjective, "teacher", ("projector", "prototypes")),
        ("simmim", SimMIMObjective, "student", ("decoder",)),
    ],
)
def test_one_step_trains_the_student_only(name, cls, network, heads):
    cfg, spec, objective, out = _step(name)
    assert isinstance(objective, cls) and spec.demo_preset == f"demo_{name}"
    assert spec.eval_network == network and spec.head_names(cfg) == heads
    assert set(objective.student) == {"backbone", *heads}
    assert torch.isfinite(out.loss) and set(out.terms)
    torch.testing.assert_close(sum(out.terms.values()), out.loss)
    for param_name, param in objective.student.named_parameters():
        if param_name.endswith(("mask_token", "register_tokens")):
            continue  # mask_token: only SimMIM uses the backbone's own mask token
        if not param.requires_grad:  # demo_ijepa's fixed sine-cosine position table
            assert param.grad is None and param_name == "backbone.pos_embed"
            continue
        assert param.grad is not None, f"{name}: no gradient for student.{param_name}"
    assert all(p.grad is None and not p.requires_grad for p in objective.teacher.parameters())
    # the monitor gets the embeddings and per-image scalars the spec names
    assert set(spec.monitor_embeddings) | set(spec.monitor_means) <= set(out.diagnostics)
    flops = spec.training_flops(cfg)
    assert flops["flops_per_batch"] == flops["flops_per_image"] * cfg.train.batch_size_per_gpu > 0


@pytest.mark.parametrize("name", ["ijepa", "msn"])
def test_ema_moves_the_shared_modules_and_ignores_student_only_ones(name):
    _, _, objective, _ = _step(name)
    with torch.no_grad():
        for p in objective.student.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in objective.teacher.state_dict().items()}
    objective.after_optimizer_step(0)
    momentum = objective.momentum(0)
    student = objective.student.state_dict()
    frozen = {k for k, p in objective.student.named_parameters() if not p.requires_grad}  # I-JEPA's sin-cos table
    for key, value in objective.teacher.state_dict().items():
        if key in frozen:
            torch.testing.assert_close(value, before[key], rtol=0, atol=0)  # the EMA leaves it alone
        elif value.is_floating_point() and "running" not in key:
            torch.testing.assert_close(value, momentum * before[key] + (1 - momentum) * student[key])
    assert "predictor" not in objective.teacher and "prototypes" not in objective.teacher


def test_bad_method_settings_name_their_section():
    with pytest.raises(ConfigError, match="'ijepa'.*target_scale"):
        get_method("ijepa").build_collate(load_config("demo_ijepa", ["ijepa.target_scale=[0.3,0.2]"]))
    with pytest.raises(ConfigError, match="'simmim'.*multiple of the ViT patch_size"):
        get_method("simmim").build_collate(load_config("demo_simmim", ["simmim.mask_patch_size=6"]))
    with pytest.raises(ConfigError, match="msn.mask_ratio"):
        get_method("msn").build_collate(load_config("demo_msn", ["msn.mask_ratio=1.0"]))
