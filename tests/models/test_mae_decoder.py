"""dinolite/models/mae_decoder.py: MAE's decoder puts every token back at its image position."""

from __future__ import annotations

import pytest
import torch

from dinolite.data.masked_views import mae_shuffle
from dinolite.models.mae_decoder import MAEDecoder
from dinolite.models.pos_embed import sincos_pos_embed_2d


def _decoder() -> MAEDecoder:
    torch.manual_seed(0)
    return MAEDecoder(grid=3, embed_dim=8, patch_pixels=12, decoder_embed_dim=16, depth=2, num_heads=4).eval()


def test_the_output_does_not_depend_on_the_order_the_visible_tokens_come_in():
    """The encoder sees the visible patches in shuffled order; ids_restore undoes the shuffle, so the same
    patches in another order (with its own ids_restore) give the same prediction for every position."""
    decoder = _decoder()
    cls, patches = torch.randn(1, 1, 8), torch.randn(1, 9, 8)  # one encoder output per image position
    predictions = []
    for seed in (0, 1):
        ids_keep, ids_restore = mae_shuffle(torch.rand(1, 9, generator=torch.Generator().manual_seed(seed)), 0.0)
        latent = torch.cat([cls, patches[:, ids_keep[0]]], dim=1)
        predictions.append(decoder(latent, ids_restore))
    assert predictions[0].shape == (1, 9, 12)
    torch.testing.assert_close(predictions[0], predictions[1], rtol=1e-5, atol=1e-6)


def test_removed_positions_get_the_mask_token_and_their_own_position():
    decoder = _decoder()
    noise = torch.tensor([[0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4, 0.5]])
    ids_keep, ids_restore = mae_shuffle(noise, 5 / 9)
    assert ids_keep.tolist() == [[1, 3, 5, 7]]  # the 4 smallest numbers, in ascending order
    latent = torch.randn(1, 5, 8)
    embedded = decoder.decoder_embed(latent)
    captured = {}
    decoder.blocks[0].register_forward_pre_hook(lambda module, args: captured.setdefault("x", args[0]))
    decoder(latent, ids_restore)
    table = decoder.position_table()
    x = captured["x"][0]
    torch.testing.assert_close(x[0], embedded[0, 0] + table[0])  # CLS first
    for place, patch in enumerate(ids_keep[0].tolist()):
        torch.testing.assert_close(x[1 + patch], embedded[0, 1 + place] + table[1 + patch])
    for patch in (0, 2, 4, 6, 8):
        torch.testing.assert_close(x[1 + patch], decoder.mask_token[0, 0] + table[1 + patch])


def test_the_position_table_is_fixed_sincos_with_a_zero_cls_row_and_not_a_parameter():
    decoder = _decoder()
    table = decoder.position_table()
    assert torch.equal(table[0], torch.zeros(16))
    assert torch.equal(table[1:], sincos_pos_embed_2d(16, 3, 3, "column_first"))
    assert not any("pos" in key for key in decoder.state_dict())


def test_init_is_the_releases_xavier_with_zero_biases():
    decoder = _decoder()
    for name, module in decoder.named_modules():
        if isinstance(module, torch.nn.Linear):
            bound = (6 / (module.in_features + module.out_features)) ** 0.5
            largest = float(module.weight.detach().abs().max())
            assert 0.8 * bound < largest <= bound, name
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
    assert 0.005 < float(decoder.mask_token.detach().std()) < 0.05


def test_bad_shapes_and_settings_are_refused():
    decoder = _decoder()
    with pytest.raises(ValueError, match="ids_restore"):
        decoder(torch.randn(2, 3, 8), torch.zeros(2, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="num_heads=3"):
        MAEDecoder(grid=3, embed_dim=8, patch_pixels=12, decoder_embed_dim=16, depth=1, num_heads=3)
