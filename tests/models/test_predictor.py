"""I-JEPA's predictor: output shapes, and each target block predicted independently of the others."""

from __future__ import annotations

import torch

from dinolite.models.predictor import IJEPAPredictor


def test_predictor_shapes_and_block_independence():
    torch.manual_seed(0)
    predictor = IJEPAPredictor(grid=4, embed_dim=48, predictor_embed_dim=24, depth=2, num_heads=2).eval()
    context = torch.randn(2, 6, 48, requires_grad=True)
    context_idx = torch.tensor([[0, 1, 2, 3, 4, 5], [10, 11, 12, 13, 14, 15]])
    target_idx = torch.tensor([[[8, 9], [12, 13], [6, 7]], [[0, 1], [4, 5], [2, 3]]])
    out = predictor(context, context_idx, target_idx)
    assert out.shape == (2, 3, 2, 48)
    # each target block is predicted from the context alone: other blocks' queries do not matter
    other = target_idx.clone()
    other[:, 1:] = torch.tensor([[9, 8], [7, 6]])
    torch.testing.assert_close(predictor(context, context_idx, other)[:, 0], out[:, 0])
    # the prediction depends on where the target is (position embedding of the query)
    assert not torch.allclose(out[0, 0], out[0, 1])
    out.sum().backward()
    assert context.grad is not None and predictor.mask_token.grad is not None
    assert not any(k.startswith("pos") for k in predictor.state_dict())


def test_residual_rescale_is_the_only_difference_of_the_released_init():
    """``residual_rescale=False``: the residual output projections start at std 0.02, as released training's
    ``init_model`` redraws them; otherwise the same draws, divided by sqrt(2 * layer)."""
    kwargs = dict(grid=4, embed_dim=48, predictor_embed_dim=24, depth=3, num_heads=2)
    torch.manual_seed(0)
    rescaled = IJEPAPredictor(**kwargs).state_dict()
    torch.manual_seed(0)
    released = IJEPAPredictor(**kwargs, residual_rescale=False).state_dict()
    for key, value in released.items():
        layer = int(key.split(".")[1]) + 1 if key.endswith(("attn.proj.weight", "mlp.fc2.weight")) else None
        expected = value / (2.0 * layer) ** 0.5 if layer else value
        torch.testing.assert_close(rescaled[key], expected, rtol=1e-6, atol=0, msg=key)
    assert released["blocks.2.attn.proj.weight"].std() > 0.015  # 0.02, where the rescaled one is 0.0082
