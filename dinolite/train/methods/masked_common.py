"""What the masked-prediction methods (I-JEPA, MSN, SimMIM) share: a FLOP count for ViTs that run on a
subset of the tokens and config errors naming their key.

FLOPs (for the benchmark's MFU) count the matrix products only, as multiply-adds x 2 (the convention of
:mod:`dinolite.models.info`): per block on ``T`` tokens of width ``D`` with an MLP of ratio ``r``::

    MACs = T * (4 D^2 + 2 r D^2)   (qkv, output projection, the two MLP matrices)
         + 2 T^2 D                 (Q K^T and A V)

plus ``N * 3 p^2 D`` for the patch embedding of the ``N`` patches the image has (all patches are
embedded before the visible ones are selected). LayerNorm, softmax and GELU are not counted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dinolite.config import Config, ConfigError
from dinolite.models.backbone_factory import backbone_kwargs


def transformer_macs(num_tokens: float, dim: int, depth: int, mlp_ratio: float = 4.0) -> float:
    """Multiply-adds of ``depth`` pre-norm transformer blocks on ``num_tokens`` tokens (module docstring)."""
    return depth * (num_tokens * (4 + 2 * mlp_ratio) * dim * dim + 2 * num_tokens * num_tokens * dim)


def embed_dim(cfg: Config) -> int:
    """The backbone width ``cfg.student`` builds."""
    return backbone_kwargs(cfg.student, cfg.crops.global_crops_size)["embed_dim"]


def vit_macs(cfg: Config, img_size: int, visible_patches: float | None = None) -> float:
    """Backbone multiply-adds on one ``img_size`` image, encoding ``visible_patches`` of its patches
    (all of them when None) plus the CLS token (if the student has one) and the register tokens."""
    kwargs = backbone_kwargs(cfg.student, img_size)
    n_patches = (img_size // kwargs["patch_size"]) ** 2
    visible = n_patches if visible_patches is None else visible_patches
    tokens = int(kwargs["cls_token"]) + kwargs["num_register_tokens"] + visible
    patch_embed = n_patches * 3 * kwargs["patch_size"] ** 2 * kwargs["embed_dim"]
    return patch_embed + transformer_macs(tokens, kwargs["embed_dim"], kwargs["depth"])


def flops_record(student_forward_macs: float, teacher_forward_macs: float, cfg: Config, **extra: Any) -> dict[str, Any]:
    """``training_flops`` dict: forward + backward (3x forward) of the student, forward of the teacher."""
    per_image = round(2 * (3 * student_forward_macs + teacher_forward_macs))
    return {
        "flops_student_per_image": round(2 * 3 * student_forward_macs),
        "flops_teacher_per_image": round(2 * teacher_forward_macs),
        "flops_per_image": per_image,
        "batch_size_per_gpu": cfg.train.batch_size_per_gpu,
        "flops_per_batch": per_image * cfg.train.batch_size_per_gpu,
        **extra,
    }


def checked(section: str, build: Callable[[], Any]) -> Any:
    """Run ``build``; a ``ValueError`` (bad mask/loss settings) becomes a ConfigError naming ``section``."""
    try:
        return build()
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"invalid '{section}' settings: {exc}") from exc
