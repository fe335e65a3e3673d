"""Self-supervised losses (pure modules, fp32 inside): DINO CLS, iBOT masked-patch, KoLeo, I-JEPA, MSN,
SimMIM."""

from dinolite.losses.centering import TeacherCentering, sinkhorn_knopp, softmax_centered
from dinolite.losses.dino_clstoken_loss import DINOLoss
from dinolite.losses.ibot_patch_loss import iBOTPatchLoss
from dinolite.losses.ijepa_loss import IJEPALoss
from dinolite.losses.koleo_loss import KoLeoLoss, koleo_loss
from dinolite.losses.msn_loss import MSNLoss
from dinolite.losses.simmim_loss import SimMIMLoss

__all__ = [
    "DINOLoss",
    "IJEPALoss",
    "KoLeoLoss",
    "MSNLoss",
    "SimMIMLoss",
    "TeacherCentering",
    "iBOTPatchLoss",
    "koleo_loss",
    "sinkhorn_knopp",
    "softmax_centered",
]
