"""Crop packing: the packed block forward equals the per-crop forward (features and gradients), with iBOT
masks, stochastic depth, activation checkpointing and the DINOv2 objective; the option is off by default.

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
from dinolite.models.crop_packing import grouped_attention, pack, unpack
from dinolite.models.vision_transformer import DinoVisionTransformer, build_backbone
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


def features_and_grads(model: DinoVisionTransformer, packed: bool, images, masks, seed: int = 5):
    """Every output tensor of ``forward_features_list`` and every parameter's gradient of a loss on them."""
    model.set_crop_packing(packed)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # stochastic depth draws
    outs = model.forward_features_list(images, masks)
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


def test_each_layer_runs_once_per_block_and_attention_once_per_crop_size(monkeypatch):
    """Three crop batches of two sizes: qkv runs once per block, SDPA twice (the two 8 px batches together)."""
    model = demo_backbone().eval()
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


def test_dinov2_objective_loss_and_gradients_are_unchanged_by_packing_under_checkpointing():
    """The DINOv2 objective (student: 2 global + 2 local crops with iBOT masks; teacher: global crops)."""
    torch.manual_seed(0)
    cfg = tiny_config(separate_head=False, koleo=0.1)
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
