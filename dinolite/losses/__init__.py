"""Self-supervised losses (pure modules, fp32 inside): DINO CLS, iBOT masked-patch, KoLeo."""

from dinolite.losses.centering import TeacherCentering, sinkhorn_knopp, softmax_centered
from dinolite.losses.dino_clstoken_loss import DINOLoss
from dinolite.losses.ibot_patch_loss import iBOTPatchLoss
from dinolite.losses.koleo_loss import KoLeoLoss, koleo_loss

__all__ = [
    "DINOLoss",
    "KoLeoLoss",
    "TeacherCentering",
    "iBOTPatchLoss",
    "koleo_loss",
    "sinkhorn_knopp",
    "softmax_centered",
]
