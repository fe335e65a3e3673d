"""dinolite/train/methods/ijepa.py: the context encoder sees only the context tokens; the released recipe's CLS-free
encoder and masks."""

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


def test_cls_free_released_recipe_encodes_the_context_alone_and_draws_the_released_masks():
    """vitb16_ijepa's encoder layout and masks on the demo: no CLS token in the blocks, the collate draws the
    released collator's masks (nothing on the last row or column of the 8x8 grid), and the step trains."""
    cfg = load_config("demo_ijepa", [*TINY, "student.cls_token=false", "ijepa.mask_sampler=released"])
    spec = get_method("ijepa")
    objective = spec.build_objective(cfg)
    assert "cls_token" not in dict(objective.student.named_parameters())
    batch = _batch(cfg, spec)
    for indices in (batch["context_idx"], batch["target_idx"]):
        assert int((indices // 8).max()) < 7 and int((indices % 8).max()) < 7
    seen = []
    objective.student["backbone"].blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    output = objective(batch, 0)
    assert seen[0] == batch["context_idx"].shape[1]  # the context patches, nothing else
    output.loss.backward()
    assert objective.student["backbone"].patch_embed.proj.weight.grad.abs().sum() > 0
    assert spec.training_flops(cfg)["context_patches"] < 49
