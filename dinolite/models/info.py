"""Model summary: parameter counts and forward FLOPs of the backbone and the heads.

Counting convention: fvcore's ``FlopCountAnalysis`` counts one fused multiply-add as one "flop". This
module reports multiply-adds as **MACs** and **FLOPs = 2 x MACs** (the convention of hardware peak
numbers, so FLOPs divided by time and by the GPU's peak gives MFU). Matrix products (patch
convolution, every Linear, attention's ``QK^T`` and ``AV``) dominate; LayerNorm counts 5 per element
(fvcore's rule) and other element-wise operations (GELU, residual adds, softmax) are not counted.

The training cost of one iteration depends on the method (views, heads, teacher): each method's
``MethodSpec.training_flops`` computes it from the per-crop and per-token costs here;
``dinolite-info`` prints the model's figures, ``python -m dinolite.commands.summary --config NAME`` both.

Large backbones are not traced whole: every block is identical, so the backbone cost is exactly
``C(1) + (depth - 1) * (C(2) - C(1))`` from depth-1 and depth-2 copies, and parameters are counted on
the ``meta`` device (no memory). ``dinolite-info --config vitg14`` runs in seconds.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from dinolite.extras import optional_import
from dinolite.models.backbone_factory import backbone_kwargs
from dinolite.models.heads import DINOHead
from dinolite.models.vision_transformer import DinoVisionTransformer


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once); works on ``meta`` modules."""
    seen: dict[int, int] = {}
    for p in module.parameters():
        if not trainable_only or p.requires_grad:
            seen[id(p)] = p.numel()
    return sum(seen.values())


def _sdpa_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention``: ``B*H*Tq*Tk*(d_qk + d_v)`` MACs."""
    q, k, v = (t.type().sizes() for t in inputs[:3])
    *batch, t_q, d_qk = q
    t_k, d_v = k[-2], v[-1]
    n = 1
    for b in batch:
        n *= b
    return n * t_q * t_k * (d_qk + d_v)


def forward_macs(model: nn.Module, inputs: tuple) -> int:
    """Multiply-adds of ``model(*inputs)`` counted by fvcore (with attention counted, see module doc)."""
    was_training = model.training
    model.eval()  # no stochastic depth: count the full forward
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # fvcore traces with torch.jit, which recent torch flags as deprecated; the count is unaffected.
            warnings.simplefilter("ignore", FutureWarning)
            # fvcore (the ``flops`` extra) is imported here: its import warns about torch.jit.
            fvcore_nn = optional_import("fvcore.nn", extra="flops", purpose="FLOP counting")

            analysis = fvcore_nn.FlopCountAnalysis(model, inputs)
            analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_macs)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            return int(analysis.total())
    finally:
        model.train(was_training)


def _image(img_size: int | tuple[int, int], in_chans: int = 3) -> torch.Tensor:
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    return torch.zeros(1, in_chans, h, w)


def forward_flops(model: nn.Module, img_size: int | tuple[int, int]) -> int:
    """FLOPs (= 2 x multiply-adds) of one forward of ``model`` on one ``img_size`` image."""
    in_chans = model.patch_embed.proj.in_channels if hasattr(model, "patch_embed") else 3
    return 2 * forward_macs(model, (_image(img_size, in_chans),))


def backbone_forward_macs(kwargs: dict[str, Any], img_size: int | tuple[int, int]) -> int:
    """Multiply-adds of one image through the backbone built from ``kwargs``, from depth-1 and depth-2
    copies (exact: the blocks are identical)."""
    base = {**kwargs, "drop_path_rate": 0.0}
    one = forward_macs(DinoVisionTransformer(**{**base, "depth": 1}), (_image(img_size),))
    if kwargs["depth"] == 1:
        return one
    two = forward_macs(DinoVisionTransformer(**{**base, "depth": 2}), (_image(img_size),))
    return one + (kwargs["depth"] - 1) * (two - one)


def head_forward_macs(head: nn.Module, in_dim: int) -> int:
    """Multiply-adds of the head on one token."""
    return forward_macs(head, (torch.zeros(1, in_dim),))


def _head_kwargs(section: Any) -> dict[str, int]:
    return {
        "out_dim": section.head_n_prototypes,
        "hidden_dim": section.head_hidden_dim,
        "bottleneck_dim": section.head_bottleneck_dim,
        "nlayers": section.head_nlayers,
    }


def model_summary(cfg: Any) -> dict[str, Any]:
    """Parameter counts and per-crop forward MACs/FLOPs for a full ``Config`` (see module doc)."""
    kwargs = backbone_kwargs(cfg.student, cfg.crops.global_crops_size)
    with torch.device("meta"):
        backbone = DinoVisionTransformer(**kwargs)
        dino_head = DINOHead(kwargs["embed_dim"], **_head_kwargs(cfg.dino))
        ibot_head = DINOHead(kwargs["embed_dim"], **_head_kwargs(cfg.ibot)) if cfg.ibot.separate_head else None
    heads_params = count_parameters(dino_head) + (count_parameters(ibot_head) if ibot_head is not None else 0)
    dino_head_macs = head_forward_macs(DINOHead(kwargs["embed_dim"], **_head_kwargs(cfg.dino)), kwargs["embed_dim"])
    ibot_head_macs = (
        head_forward_macs(DINOHead(kwargs["embed_dim"], **_head_kwargs(cfg.ibot)), kwargs["embed_dim"])
        if cfg.ibot.separate_head
        else dino_head_macs
    )
    backbone_params = count_parameters(backbone)
    return {
        "arch": cfg.student.arch,
        "embed_dim": kwargs["embed_dim"],
        "depth": kwargs["depth"],
        "num_heads": kwargs["num_heads"],
        "patch_size": kwargs["patch_size"],
        "params_backbone": backbone_params,
        "params_heads": heads_params,
        "params_total": backbone_params + heads_params,
        "global_crop_size": cfg.crops.global_crops_size,
        "local_crop_size": cfg.crops.local_crops_size,
        "macs_global_crop": backbone_forward_macs(kwargs, cfg.crops.global_crops_size),
        "macs_local_crop": backbone_forward_macs(kwargs, cfg.crops.local_crops_size),
        "macs_dino_head_per_token": dino_head_macs,
        "macs_ibot_head_per_token": ibot_head_macs,
    }


def _fmt_count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}"


def format_summary(summary: dict[str, Any], train: dict[str, Any] | None = None, method: str = "") -> str:
    """The model summary as text; with ``train`` (a ``MethodSpec.training_flops`` dict) also the
    per-image FLOPs of one training iteration (every ``flops_*_per_image`` key) and per GPU batch."""
    s = summary
    lines = [
        f"{s['arch']} / patch {s['patch_size']}: embed_dim {s['embed_dim']}, depth {s['depth']}, "
        f"heads {s['num_heads']}",
        "parameters",
        f"  backbone              {s['params_backbone']:>15,}  ({_fmt_count(s['params_backbone'])})",
        f"  heads (dino+ibot)     {s['params_heads']:>15,}  ({_fmt_count(s['params_heads'])})",
        f"  total (student)       {s['params_total']:>15,}  ({_fmt_count(s['params_total'])})",
        "forward, one crop, backbone (MACs = multiply-adds; FLOPs = 2 x MACs)",
        f"  global {s['global_crop_size']}px".ljust(24)
        + f"{_fmt_count(s['macs_global_crop'])}MACs".rjust(14)
        + f"{_fmt_count(2 * s['macs_global_crop'])}FLOPs".rjust(16),
        f"  local {s['local_crop_size']}px".ljust(24)
        + f"{_fmt_count(s['macs_local_crop'])}MACs".rjust(14)
        + f"{_fmt_count(2 * s['macs_local_crop'])}FLOPs".rjust(16),
        "  dino head per token".ljust(24) + f"{_fmt_count(s['macs_dino_head_per_token'])}MACs".rjust(14),
        "  ibot head per token".ljust(24) + f"{_fmt_count(s['macs_ibot_head_per_token'])}MACs".rjust(14),
    ]
    if train is not None:
        lines.append(f"training iteration{f' ({method})' if method else ''}")
        for key, value in train.items():
            if key.startswith("flops_") and key.endswith("_per_image") and key != "flops_per_image":
                part = key[len("flops_") : -len("_per_image")].replace("_", " ")
                lines.append(f"  {part} / img".ljust(24) + f"{_fmt_count(value)}FLOPs".rjust(16))
        lines.append("  total / img".ljust(24) + f"{_fmt_count(train['flops_per_image'])}FLOPs".rjust(16))
        lines.append(
            f"  total / batch of {train.get('batch_size_per_gpu', '?')}".ljust(24)
            + f"{_fmt_count(train['flops_per_batch'])}FLOPs".rjust(16)
        )
    return "\n".join(lines)
