"""Crop packing: the packed block forward equals the per-crop forward (features and gradients), with iBOT
masks, stochastic depth, activation checkpointing, RoPE (with its training-time coordinate augmentation) and
the DINOv2 objective; the option is off by default.

Tolerance: ``torch.testing.assert_close``'s float32 defaults (rtol 1.3e-6, atol 1e-5). Every operation
outside attention is per token and attention runs on the same crops, so only the float rounding of a
matrix product of another shape can differ (on this CPU the results are in fact bitwise equal).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from dinolite.config import load_config
from dinolite.fsdp.sharding import enable_activation_checkpointing, shard_objective
from dinolite.models.backbone_factory import build_backbone
from dinolite.models.crop_packing import grouped_attention, pack, unpack
from dinolite.models.vision_transformer import DinoVisionTransformer
from tests.train.scale_worker import build_objective, global_batch_slice, tiny_config


def demo_backbone(**kwargs) -> DinoVisionTransformer:
    """The demo preset's backbone shape (embed 64, depth 3, patch 4, 16 px global crops), LayerScale on."""
    torch.manual_seed(0)
    options = dict(img_size=16, patch_size=4, embed_dim=64, depth=3, num_heads=4, init_values=0.1)
    return DinoVisionTransformer(**{**options, **kwargs})


def crops(n_local: int = 6, batch: int = 4) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """2 global crops of 16 px (with a quarter of the patches masked) and ``n_local`` local crops of 8 px."""
    generator = torch.Generator().manual_seed(1)
    global_crops = torch.randn(2 * batch, 3, 16, 16, generator=generator)
    local_crops = torch.randn(n_local * batch, 3, 8, 8, generator=generator)
    masks = torch.rand(2 * batch, 16, generator=generator) < 0.25
    return [global_crops, local_crops], [masks, None]


def features_and_grads(model: DinoVisionTransformer, packed: bool, images, masks, seed: int = 5, keep=None):
    """Every output tensor of ``forward_features_list`` and every parameter's gradient of a loss on them."""
    model.set_crop_packing(packed)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # stochastic depth and RoPE coordinate draws
    outs = model.forward_features_list(images, masks, keep)
    loss = sum((o["x_prenorm"].square().mean() + o["x_norm_clstoken"].sum()) for o in outs)
    loss.backward()
    tensors = [o[key] for o in outs for key in ("x_norm_clstoken", "x_norm_patchtokens", "x_prenorm")]
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return [t.detach() for t in tensors], grads


def assert_same(reference, packed) -> None:
    (ref_features, ref_grads), (features, grads) = reference, packed
    for ref, got in zip(ref_features, features, strict=True):
        torch.testing.assert_close(got, ref)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], msg=name)


# rate 0: no stochastic depth; 0.05: DropPath's per-sample masks; 0.3: the batch-subset form (DINOv2's > 0.1)
@pytest.mark.parametrize("drop_path_rate", [0.0, 0.05, 0.3])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_packed_forward_and_gradients_equal_the_per_crop_forward(drop_path_rate, checkpointing):
    model = demo_backbone(drop_path_rate=drop_path_rate, drop_path_uniform=True).train()
    if checkpointing:
        for block in model.blocks:
            enable_activation_checkpointing(block)
    images, masks = crops()
    reference = features_and_grads(model, False, images, masks)
    assert_same(reference, features_and_grads(model, True, images, masks))
    assert model.blocks[0].crop_packing


def test_packing_keeps_the_keys_bias_masked():
    """DINOv3's mask_k_bias: the packed projection leaves the keys' bias out as the per-crop one does."""
    model = demo_backbone(mask_k_bias=True)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.bias.normal_(0, 1.0)  # a key bias that would change the logits if applied
    images, masks = crops()
    assert_same(features_and_grads(model, False, images, masks), features_and_grads(model, True, images, masks))


def test_stochastic_depth_drops_the_same_samples_as_the_per_crop_forward():
    """A different seed drops other samples: the equality above is not an accident of nothing dropped."""
    model = demo_backbone(drop_path_rate=0.5, drop_path_uniform=True).train()
    images, masks = crops()
    features_a, _ = features_and_grads(model, True, images, masks, seed=5)
    features_b, _ = features_and_grads(model, True, images, masks, seed=6)
    assert not torch.equal(features_a[2], features_b[2])


@pytest.mark.parametrize("position", [{}, {"pos_embed_type": "rope"}], ids=["learned", "rope"])
def test_each_layer_runs_once_per_block_and_attention_once_per_crop_size(monkeypatch, position):
    """Three crop batches of two sizes: qkv runs once per block, SDPA twice (the two 8 px batches together; with
    RoPE too: each crop is rotated by its own angles before the crops of one size are batched)."""
    model = demo_backbone(**position).eval()
    images, masks = crops()
    local_a, local_b = images[1].chunk(2)
    calls = {"qkv": 0, "sdpa": 0}
    attn = model.blocks[0].attn
    project = attn.project_qkv

    def counting_projection(x):
        calls["qkv"] += 1
        return project(x)

    monkeypatch.setattr(attn, "project_qkv", counting_projection)  # the one qkv projection both paths call
    sdpa = F.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls["sdpa"] += 1
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)  # the module both paths call
    with torch.no_grad():
        reference = model.forward_features_list([images[0], local_a, local_b], [masks[0], None, None])
        assert calls == {"qkv": 3, "sdpa": model.n_blocks * 3}  # per crop batch
        model.set_crop_packing(True)
        packed = model.forward_features_list([images[0], local_a, local_b], [masks[0], None, None])
    assert calls == {"qkv": 3 + 1, "sdpa": model.n_blocks * (3 + 2)}  # packed: once; the 16 px and 8 px groups
    for ref, got in zip(reference, packed):
        torch.testing.assert_close(got["x_prenorm"], ref["x_prenorm"])


def test_shared_relative_position_bias_is_applied_per_crop_size():
    """SimMIM's ViT: a logit bias per crop size, which grouped attention keeps with its crops."""
    model = demo_backbone(pos_embed_type="shared_rel_pos_bias", init_values=None).train()
    images, masks = crops(n_local=2)
    assert_same(features_and_grads(model, False, images, masks), features_and_grads(model, True, images, masks))


def rope_backbone(augment: bool, drop_path_rate: float = 0.0) -> DinoVisionTransformer:
    """DINOv3's backbone options: RoPE (with shift, jitter and rescale of the coordinates in training when
    ``augment``), 4 registers (its storage tokens, which RoPE leaves unrotated), and ``mask_k_bias`` with a key
    bias that would change the logits if it were applied."""
    rope = {"shift_coords": 0.1, "jitter_coords": 1.5, "rescale_coords": 2.0} if augment else {}
    model = demo_backbone(
        pos_embed_type="rope",
        rope=rope,
        num_register_tokens=4,
        mask_k_bias=True,
        drop_path_rate=drop_path_rate,
        drop_path_uniform=True,
    )
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.bias.normal_(0, 1.0)
    return model


def rope_crops() -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """:func:`crops` (4 x 4 and 2 x 2 patch grids, iBOT masks on the global crops) with the local crops in two
    batches (one grid, two coordinate draws in training) and a 3 x 2 grid of 12 x 8 px."""
    (global_crops, local_crops), (masks, _) = crops()
    other = torch.randn(4, 3, 12, 8, generator=torch.Generator().manual_seed(2))
    return [global_crops, *local_crops.chunk(2), other], [masks, None, None, None]


# mode, coordinate augmentation, drop path rate, activation checkpointing
ROPE_CASES = [
    ("eval", True, 0.0, False),
    ("train", False, 0.0, False),
    ("train", True, 0.0, False),
    ("train", True, 0.05, False),
    ("train", True, 0.3, False),
    ("train", True, 0.3, True),
]


@pytest.mark.parametrize(("mode", "augment", "drop_path_rate", "checkpointing"), ROPE_CASES)
def test_packed_rope_forward_and_gradients_equal_the_per_crop_forward(mode, augment, drop_path_rate, checkpointing):
    """Each crop rotated by the RoPE of its own grid, drawn per crop and per block in the per-crop order."""
    model = rope_backbone(augment, drop_path_rate).train(mode == "train")
    if checkpointing:
        for block in model.blocks:
            enable_activation_checkpointing(block)
    images, masks = rope_crops()
    assert_same(features_and_grads(model, False, images, masks), features_and_grads(model, True, images, masks))


def test_packed_rope_draws_the_coordinates_anew_in_training_only():
    """The equality above is not an accident of no draw: another seed moves the coordinates, eval mode does not."""
    model = rope_backbone(augment=True)
    images, masks = rope_crops()
    seeds = [features_and_grads(model.train(), True, images, masks, seed=seed)[0][2] for seed in (5, 6)]
    assert not torch.equal(seeds[0], seeds[1])
    seeds = [features_and_grads(model.eval(), True, images, masks, seed=seed)[0][2] for seed in (5, 6)]
    assert torch.equal(seeds[0], seeds[1])


def test_packed_rope_with_kept_patches_equals_the_per_crop_forward():
    """Per-image angles (keep_indices: I-JEPA, MSN) rotate their own images; the batch-subset form of stochastic
    depth, which the per-crop forward refuses with them, is refused packed too."""
    images, _ = rope_crops()
    keep = [torch.rand(8, 16, generator=torch.Generator().manual_seed(3)).argsort(1)[:, :6], None, None, None]
    model = rope_backbone(augment=True, drop_path_rate=0.05).train()
    reference = features_and_grads(model, False, images, None, keep=keep)
    assert_same(reference, features_and_grads(model, True, images, None, keep=keep))
    model = rope_backbone(augment=True, drop_path_rate=0.3).train()
    for packed in (False, True):
        with pytest.raises(ValueError, match="per-image rotary angles"):
            features_and_grads(model, packed, images, None, keep=keep)


def test_pack_and_unpack_are_inverse_and_a_foreign_position_signal_is_refused():
    xs = [torch.randn(2, 5, 4), torch.randn(3, 2, 4)]
    flat = pack(xs)
    assert flat.shape == (16, 4)
    for x, y in zip(xs, unpack(flat, [x.shape for x in xs])):
        assert torch.equal(x, y)
    attn = demo_backbone().blocks[0].attn
    with pytest.raises(TypeError, match="student.crop_packing"):
        grouped_attention(attn, [torch.randn(2, 5, 3 * 64)], [object()])


def test_option_is_off_by_default_and_set_from_the_student_config():
    assert load_config("demo").student.crop_packing is False
    assert not any(block.crop_packing for block in build_backbone(load_config("demo")).blocks)
    packed = build_backbone(load_config("demo", ["student.crop_packing=true"]))
    assert packed.crop_packing and all(block.crop_packing for block in packed.blocks)
    assert packed.state_dict().keys() == build_backbone(load_config("demo")).state_dict().keys()


# DINOv3's backbone (demo_rope's keys) with every RoPE coordinate augmentation on
ROPE_OVERRIDES = (
    "student.pos_embed=rope",
    "student.num_register_tokens=4",
    "student.mask_k_bias=true",
    "student.pos_embed_rope_shift_coords=0.1",
    "student.pos_embed_rope_jitter_coords=1.5",
    "student.pos_embed_rope_rescale_coords=2.0",
)


@pytest.mark.parametrize("overrides", [(), ROPE_OVERRIDES], ids=["learned", "rope"])
def test_dinov2_objective_loss_and_gradients_are_unchanged_by_packing_under_checkpointing(overrides):
    """The DINOv2 objective (student: 2 global + 2 local crops with iBOT masks; teacher: global crops)."""
    torch.manual_seed(0)
    cfg = tiny_config(separate_head=False, koleo=0.1, overrides=overrides)
    reference = build_objective(cfg).train()
    packed = copy.deepcopy(reference)
    packed.student["backbone"].set_crop_packing(True)
    packed.teacher["backbone"].set_crop_packing(True)
    shard_objective(packed, "full_shard", mixed_precision=False, activation_checkpointing=True, compile=False)
    batch = global_batch_slice(0, 4, 0, 1)
    results = []
    for objective in (reference, packed):
        torch.manual_seed(0)
        objective.zero_grad(set_to_none=True)
        output = objective.loss_at_temperature(batch, teacher_temp=0.05)
        output.loss.backward()
        grads = {n: p.grad.clone() for n, p in objective.student.named_parameters() if p.grad is not None}
        results.append((output.loss.detach(), {k: v.detach() for k, v in output.terms.items()}, grads))
    (ref_loss, ref_terms, ref_grads), (loss, terms, grads) = results
    torch.testing.assert_close(loss, ref_loss)
    for name in ref_terms:
        torch.testing.assert_close(terms[name], ref_terms[name], msg=name)
    assert grads.keys() == ref_grads.keys() and len(grads) > 0
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], msg=name)
