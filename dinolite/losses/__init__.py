"""Self-supervised losses (pure modules, fp32 inside): DINO CLS, iBOT masked-patch, KoLeo, InfoNCE (SimCLR),
DirectCLR, Barlow Twins, negative cosine (SimSiam / BYOL), I-JEPA, MSN, SimMIM, MAE, Gram anchoring (DINOv3),
MoCo v3, SwAV, BEiT."""

from dinolite.losses.barlow_twins_loss import BarlowTwinsLoss, cross_correlation
from dinolite.losses.beit_loss import BEiTLoss
from dinolite.losses.centering import TeacherCentering, sinkhorn_knopp, softmax_centered
from dinolite.losses.dino_clstoken_loss import DINOLoss
from dinolite.losses.directclr_loss import DirectCLRLoss
from dinolite.losses.gram_loss import GramLoss, gram_matrix
from dinolite.losses.ibot_patch_loss import iBOTPatchLoss
from dinolite.losses.ijepa_loss import IJEPALoss
from dinolite.losses.info_nce_loss import InfoNCELoss, info_nce_loss
from dinolite.losses.koleo_loss import KoLeoLoss, koleo_loss
from dinolite.losses.mae_loss import MAELoss
from dinolite.losses.moco_v3_loss import MoCoV3Loss, moco_v3_loss
from dinolite.losses.msn_loss import MSNLoss
from dinolite.losses.negative_cosine_loss import NegativeCosineLoss, negative_cosine
from dinolite.losses.pirl_loss import PIRLLoss
from dinolite.losses.simmim_loss import SimMIMLoss
from dinolite.losses.swav_loss import SwAVLoss

__all__ = [
    "BEiTLoss",
    "BarlowTwinsLoss",
    "DINOLoss",
    "DirectCLRLoss",
    "GramLoss",
    "IJEPALoss",
    "InfoNCELoss",
    "KoLeoLoss",
    "MAELoss",
    "MSNLoss",
    "MoCoV3Loss",
    "NegativeCosineLoss",
    "SimMIMLoss",
    "PIRLLoss",
    "SwAVLoss",
    "TeacherCentering",
    "cross_correlation",
    "gram_matrix",
    "iBOTPatchLoss",
    "info_nce_loss",
    "koleo_loss",
    "moco_v3_loss",
    "negative_cosine",
    "sinkhorn_knopp",
    "softmax_centered",
]
