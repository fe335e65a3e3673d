"""Attention back-ends: SDPA equals explicit attention, the xformers fallback, CUDA bf16 agreement."""

from __future__ import annotations

import warnings

import pytest
import torch

from dinolite.models import explicit_attention
from tests.models.test_vision_transformer import tiny


def test_sdpa_matches_explicit_attention():
    torch.manual_seed(0)
    model = tiny().eval()
    x = torch.randn(2, 17, 32)
    attn = model.blocks[0].attn
    out_sdpa = attn(x)
    out_ref, weights = attn.forward_explicit(x)
    torch.testing.assert_close(out_sdpa, out_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 17))
    q, k, v = torch.randn(3, 2, 4, 7, 8).unbind(0)
    by_hand = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1) @ v
    torch.testing.assert_close(explicit_attention(q, k, v)[0], by_hand)


def test_xformers_request_falls_back_to_sdpa_and_warns_once():
    torch.manual_seed(0)
    sdpa = tiny(attention="sdpa").eval()
    asked = tiny(attention="xformers").eval()
    asked.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out1, out2 = asked(x), asked(x)  # 2 blocks x 2 calls
        auto = tiny(attention="auto").eval()
        auto.load_state_dict(sdpa.state_dict())
        out_auto = auto(x)
    fallbacks = [w for w in caught if "falling back" in str(w.message)]
    assert len(fallbacks) == 1 and issubclass(fallbacks[0].category, RuntimeWarning)
    torch.testing.assert_close(out1, sdpa(x))
    torch.testing.assert_close(out2, out_auto)


def test_xformers_installed_but_cpu_tensors_falls_back():
    model = tiny(attention="xformers").eval()
    model.attention_backend._has_xformers = True  # as if installed: CPU tensors must still use SDPA
    with pytest.warns(RuntimeWarning, match="tensors are on cpu"):
        out = model(torch.randn(1, 3, 32, 32))
    assert torch.isfinite(out).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("attention", ["auto", "sdpa", "xformers"])
def test_cuda_bf16_attention_backends_agree(attention):
    """On CUDA every back-end (xformers when installed, else the SDPA fallback) matches the fp32
    explicit reference within bf16 tolerance."""
    torch.manual_seed(0)
    model = tiny(embed_dim=64, attention=attention).cuda().eval()
    x = torch.randn(2, 17, 64, device="cuda")
    attn = model.blocks[0].attn
    with torch.no_grad():
        reference, _ = attn.forward_explicit(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # xformers may be absent
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = attn(x)
    torch.testing.assert_close(out.float(), reference, atol=3e-2, rtol=3e-2)
