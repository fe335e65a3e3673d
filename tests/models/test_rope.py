"""Axial RoPE (student.pos_embed=rope, DINOv3's ViT): hand values, the relative-position property, prefix
tokens left alone, training-only reproducible augmentation, and the backbone and config that use it."""

from __future__ import annotations

import math

import pytest
import torch

from dinolite.config import ConfigError, load_config
from dinolite.models import build_backbone
from dinolite.models.attention import Attention
from dinolite.models.rope import RopePositionEmbedding, RotaryAngles, apply_rotary, rope_periods, rotate_half
from dinolite.models.vision_transformer import DinoVisionTransformer


def _rope_vit(**overrides: object) -> DinoVisionTransformer:
    """A 16 px ViT (4 x 4 patches of 4 px, width 32, 2 heads of 16, 2 blocks) with RoPE and 2 registers."""
    kwargs = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, attention="sdpa")
    return DinoVisionTransformer(**{**kwargs, "pos_embed_type": "rope", "num_register_tokens": 2, **overrides})


def test_periods_by_hand() -> None:
    # head_dim 16: 4 periods base ** (2k / 8)
    torch.testing.assert_close(rope_periods(16, 100.0, None, None), torch.tensor([1.0, 100**0.25, 10.0, 100**0.75]))
    # geometric from min to max
    torch.testing.assert_close(rope_periods(16, None, 0.5, 4.0), torch.tensor([0.5, 1.0, 2.0, 4.0]))
    for base, low, high in ((100.0, 0.5, 4.0), (None, None, None), (None, 0.5, None)):
        with pytest.raises(ValueError, match="either a base or both"):
            rope_periods(16, base, low, high)


@pytest.mark.parametrize(
    ("normalize", "rows", "cols"),
    [
        ("separate", [-0.5, 0.5], [-2 / 3, 0.0, 2 / 3]),  # each axis by its own length
        ("max", [-2 / 3, 0.0], [-2 / 3, 0.0, 2 / 3]),  # both by 3
        ("min", [-0.5, 0.5], [-0.5, 0.5, 1.5]),  # both by 2
    ],
)
def test_patch_centres_in_minus_one_to_one(normalize: str, rows: list[float], cols: list[float]) -> None:
    coords = RopePositionEmbedding(16, 1, normalize_coords=normalize).coordinates(2, 3)
    expected = torch.tensor([[r, c] for r in rows for c in cols])
    torch.testing.assert_close(coords, expected)


def test_a_constructed_query_is_rotated_by_its_row_and_column_angles() -> None:
    """head_dim 4, one period (1): channels (0, 2) turn by 2 pi y, channels (1, 3) by 2 pi x."""
    rope = RopePositionEmbedding(4, 1, base=100.0)
    angles = rope((2, 3))
    q = torch.tensor([1.0, 2.0, 3.0, 4.0]).expand(1, 1, 6, 4)
    out = apply_rotary(q, angles)[0, 0]
    coords = rope.coordinates(2, 3)
    for patch, (y, x) in enumerate(coords.tolist()):
        ay, ax = 2 * math.pi * y, 2 * math.pi * x
        expected = [
            1 * math.cos(ay) - 3 * math.sin(ay),
            2 * math.cos(ax) - 4 * math.sin(ax),
            3 * math.cos(ay) + 1 * math.sin(ay),
            4 * math.cos(ax) + 2 * math.sin(ax),
        ]
        torch.testing.assert_close(out[patch], torch.tensor(expected), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0])), torch.tensor([-3.0, -4.0, 1.0, 2.0]))


def test_query_key_products_depend_only_on_the_offset_in_each_axis() -> None:
    rope = RopePositionEmbedding(32, 2)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 16, generator=g).unbind(0)
    angles = rope((4, 4))
    rq = apply_rotary(q.expand(1, 1, 16, 16), angles)[0, 0].double()
    rk = apply_rotary(k.expand(1, 1, 16, 16), angles)[0, 0].double()
    products = rq @ rk.T
    by_offset: dict[tuple[int, int], list[float]] = {}
    for i in range(16):
        for j in range(16):
            by_offset.setdefault((i // 4 - j // 4, i % 4 - j % 4), []).append(float(products[i, j]))
    assert len(by_offset) == 49
    for offset, values in by_offset.items():
        assert max(values) - min(values) < 1e-5, (offset, values)
    # and it does depend on the offset: the same pair at different offsets differs
    assert abs(by_offset[(0, 0)][0] - by_offset[(1, 2)][0]) > 1e-3


def test_prefix_tokens_are_not_rotated() -> None:
    angles = RopePositionEmbedding(16, 1)((2, 2))
    x = torch.randn(2, 1, 3 + 4, 16)
    out = apply_rotary(x, angles)
    assert torch.equal(out[:, :, :3], x[:, :, :3])
    assert not torch.allclose(out[:, :, 3:], x[:, :, 3:])
    with pytest.raises(ValueError, match="do not fit a sequence of 3 tokens"):
        apply_rotary(x[:, :, :3], angles)


def test_attention_rotates_queries_and_keys_before_the_product() -> None:
    torch.manual_seed(0)
    attn = Attention(16, 2).eval()
    x = torch.randn(2, 1 + 9, 16)
    angles = RopePositionEmbedding(16, 2)((3, 3))
    q, k, v = (t.transpose(1, 2) for t in attn._split_heads(x).unbind(0))
    q, k = apply_rotary(q, angles), apply_rotary(k, angles)
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 10, 16))
    torch.testing.assert_close(attn(x, angles), expected, atol=1e-6, rtol=1e-5)
    explicit, _ = attn.forward_explicit(x, angles)
    torch.testing.assert_close(explicit, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("option", "check"),
    [
        ("shift_coords", lambda base, moved: (moved - base).std(dim=0).max() < 1e-6),  # one offset per axis
        ("jitter_coords", lambda base, moved: (moved / base).std(dim=0).max() < 1e-6),  # one factor per axis
        ("rescale_coords", lambda base, moved: (moved / base).std() < 1e-6),  # one factor for both axes
    ],
)
def test_augmentation_only_in_training_and_reproducible(option: str, check) -> None:
    rope = RopePositionEmbedding(16, 1, **{option: 2.0})
    base = rope.coordinates(2, 4)  # no zero coordinate (ratios below)
    rope.eval()
    assert not rope.augments
    assert torch.equal(rope((2, 4)).sin, RopePositionEmbedding(16, 1)((2, 4)).sin)
    rope.train()
    assert rope.augments
    torch.manual_seed(7)
    first = rope.augment(base)
    torch.manual_seed(7)
    assert torch.equal(rope.augment(base), first)
    assert not torch.equal(first, base) and check(base, first)
    assert not torch.equal(rope((2, 4)).cos, rope.eval()((2, 4)).cos)


def test_augmentation_draws_stay_in_their_ranges() -> None:
    rope = RopePositionEmbedding(16, 1, shift_coords=0.25, jitter_coords=1.5, rescale_coords=2.0)
    base = rope.coordinates(2, 2)
    torch.manual_seed(0)
    for _ in range(50):
        shifted = RopePositionEmbedding(16, 1, shift_coords=0.25).augment(base) - base
        assert shifted.abs().max() <= 0.25
        factor = (RopePositionEmbedding(16, 1, rescale_coords=2.0).augment(base) / base)[0, 0]
        assert 0.5 <= factor <= 2.0
    assert rope.augment(base).shape == base.shape


def test_the_backbone_has_no_position_table_to_learn_and_draws_per_block_in_training() -> None:
    torch.manual_seed(0)
    model = _rope_vit(rope={"rescale_coords": 2.0})
    assert not model.pos_embed.requires_grad and not model.pos_embed.any()
    assert "rope_embed.periods" in model.state_dict()
    calls: list[tuple[int, int]] = []
    model.rope_embed.register_forward_hook(lambda module, args, out: calls.append(args[0]))
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    first = model.forward_features(x)["x_norm_patchtokens"]
    assert calls == [(4, 4)] and torch.equal(model.forward_features(x)["x_norm_patchtokens"], first)
    calls.clear()
    model.train()
    torch.manual_seed(3)
    trained = model.forward_features(x)["x_norm_patchtokens"]
    assert calls == [(4, 4)] * model.n_blocks  # a new draw for every block, as DINOv3's backbone
    torch.manual_seed(3)
    assert torch.equal(model.forward_features(x)["x_norm_patchtokens"], trained)
    assert not torch.allclose(trained, first)


def test_the_backbone_rotates_patches_only_and_reads_other_resolutions() -> None:
    torch.manual_seed(0)
    model = _rope_vit().eval()
    x = torch.randn(2, 3, 16, 16)
    out = model.forward_features(x)
    keep_all = torch.arange(16).expand(2, -1)
    kept = model.forward_features(x, keep_indices=keep_all)
    torch.testing.assert_close(kept["x_norm_patchtokens"], out["x_norm_patchtokens"])
    assert model.forward_features(torch.randn(1, 3, 24, 32))["x_norm_patchtokens"].shape == (1, 48, 32)
    listed = model.forward_features_list([x, x[:, :, :8, :8]])
    torch.testing.assert_close(listed[0]["x_norm_clstoken"], out["x_norm_clstoken"])
    with torch.no_grad():
        last = model.get_last_selfattention(x)
    assert last.shape == (2, 2, 1 + 2 + 16, 1 + 2 + 16)


def test_rope_needs_heads_a_multiple_of_four_channels() -> None:
    with pytest.raises(ValueError, match="embed_dim divisible by 4 \\* num_heads"):
        _rope_vit(embed_dim=24, num_heads=4)


def test_the_config_builds_a_rope_backbone_and_checks_its_keys(tmp_path) -> None:
    overrides = ["student.embed_dim=32", "student.depth=1", "student.num_heads=2", "student.patch_size=4"]
    dinov3 = [
        "student.pos_embed_rope_jitter_coords=1.5",
        "student.mask_k_bias=true",
        "student.norm_layer=layernormbf16",
    ]
    cfg = load_config("demo", [*overrides, "student.pos_embed=rope", *dinov3])
    model = build_backbone(cfg.student, img_size=16)
    assert model.rope_embed is not None and model.rope_embed.jitter_coords == 1.5 and model.rope_embed.base == 100.0
    assert model.blocks[0].attn.mask_k_bias and model.norm.eps == 1e-5
    assert build_backbone(load_config("demo", overrides).student, img_size=16).rope_embed is None  # off by default
    bad = {
        "student.pos_embed_rope_min_period=0.5": "give a base, or both periods",
        "student.pos_embed_rope_rescale_coords=0.5": "pos_embed_rope_rescale_coords",
        "student.pos_embed_rope_normalize_coords=maximum": "did you mean 'max'",
    }
    for override, match in bad.items():
        with pytest.raises(ConfigError, match=match):
            load_config("demo", [*overrides, "student.pos_embed=rope", override])
    assert isinstance(RopePositionEmbedding(16, 1)((1, 1)), RotaryAngles)


def test_mask_k_bias_leaves_the_key_bias_out_which_rope_would_otherwise_feel() -> None:
    torch.manual_seed(0)
    x, angles = torch.randn(2, 1 + 4, 16), RopePositionEmbedding(16, 2)((2, 2))
    masked, plain = Attention(16, 2, mask_k_bias=True), Attention(16, 2)
    plain.load_state_dict(masked.state_dict())
    with torch.no_grad():
        masked.qkv.bias.normal_()
        reference = masked(x, angles)
        masked.qkv.bias[16:32] += 1.0  # the keys' third: no effect when masked
    torch.testing.assert_close(masked(x, angles), reference)
    masked(x, angles).sum().backward()
    assert not masked.qkv.bias.grad[16:32].any() and masked.qkv.bias.grad[:16].any()
    with torch.no_grad():
        plain.qkv.bias.copy_(masked.qkv.bias)
        # without the mask a key bias shifts the logits by q . R(j) b, which depends on the key's position j
        assert (plain(x, angles) - reference).abs().max() > 1e-3
