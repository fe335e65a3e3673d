"""dinolite/train/methods/ijepa.py: the context encoder sees only the context tokens."""

from __future__ import annotations

from dinolite.config import load_config
from dinolite.train.methods import get_method
from tests.train.methods.test_masked_methods import TINY, _batch


def test_ijepa_context_encoder_sees_only_the_context():
    cfg = load_config("demo_ijepa", TINY)
    spec = get_method("ijepa")
    objective = spec.build_objective(cfg)
    batch = _batch(cfg, spec)
    seen = []
    objective.student["backbone"].blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    objective(batch, 0)
    seen = {"tokens": seen[0]}
    assert seen["tokens"] == 1 + batch["context_idx"].shape[1] < 1 + 64
    flops = spec.training_flops(cfg)
    assert flops["flops_context_encoder"] < flops["flops_full_encoder"]
