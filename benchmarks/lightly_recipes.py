"""lightly's side of benchmarks/methods_vs_lightly.py: each method built from lightly's own modules (its
view transform, heads, loss and momentum utilities) around dinolite's demo ViT, and a plain training loop.

Only the method differs from dinolite's side: the backbone is the same :class:`DinoVisionTransformer`
(built from the dinolite preset's ``student`` section with the same seed, so both sides start from the
same weights), fed the same decoded training images, for the same iterations and batch size. What is
lightly's, per method, is what lightly's own small-image (32 px, CIFAR-10) benchmark uses, with the
input width set to the ViT's: the transform and its arguments, the head widths, the loss with its
defaults, the EMA momentum. MSN is not in that benchmark: its settings are lightly's Imagenette
benchmark's (128/64 px crops there, scaled to 32/16 px here) and its example's (the prototypes go to the
loss as ``prototypes.data``, so they stay at their initial values). The optimiser is the same for every
lightly method: AdamW at 1e-3 (the protocol of issue 13's lightly reference runs) with weight decay
0.05 and lightly's ``CosineWarmupScheduler`` (a tenth of the run as warm-up), both of lightly's ViT
benchmarks.

A method is one entry of :data:`RECIPES`: a function from the backbone to a :class:`LightlyMethod`.
Needs ``lightly`` (``pip install --no-deps lightly==1.6.0 lightning-utilities``; benchmarks/README.md).
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Callable, Optional

import torch
from lightly.loss import BarlowTwinsLoss, DINOLoss, MSNLoss, NegativeCosineSimilarity, NTXentLoss, VICRegLoss
from lightly.models import utils as lightly_utils
from lightly.models.modules import heads
from lightly.transforms import (
    BYOLTransform,
    BYOLView1Transform,
    BYOLView2Transform,
    DINOTransform,
    MSNTransform,
    SimCLRTransform,
    SimSiamTransform,
    VICRegTransform,
)
from lightly.utils.scheduler import CosineWarmupScheduler
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from dinolite.models.vision_transformer import DinoVisionTransformer

LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.05
logger = logging.getLogger("methods_vs_lightly")


class CLSBackbone(nn.Module):
    """The dinolite ViT as lightly's methods call a backbone: images -> the normalised CLS feature (the
    feature both sides are evaluated on). ``idx_keep`` is lightly's token index (0 = the class token),
    as its masked ViTs take it; the patches it keeps are encoded, the others dropped."""

    def __init__(self, vit: DinoVisionTransformer) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, images: Tensor, idx_keep: Optional[Tensor] = None) -> Tensor:
        keep = None if idx_keep is None else idx_keep[:, 1:] - 1  # token index -> patch index
        return self.vit.forward_features(images, keep_indices=keep)["x_norm_clstoken"]


def _momentum_copy(module: nn.Module) -> nn.Module:
    twin = copy.deepcopy(module)
    lightly_utils.deactivate_requires_grad(twin)
    return twin


class LightlyMethod(nn.Module):
    """One method: ``transform`` (PIL image -> list of views), ``loss(views)`` (momentum updates first,
    as lightly's benchmarks do), and ``evaluated``, the backbone whose CLS is evaluated."""

    transform: Callable[[Image.Image], list[Tensor]]
    evaluated: nn.Module

    def loss(self, views: list[Tensor]) -> Tensor:
        raise NotImplementedError


class TwoViewMethod(LightlyMethod):
    """SimCLR, Barlow Twins, VICReg: one backbone and projection head on two views, a symmetric loss."""

    def __init__(self, backbone: CLSBackbone, transform, head: nn.Module, criterion: nn.Module) -> None:
        super().__init__()
        self.transform, self.backbone, self.head, self.criterion = transform, backbone, head, criterion
        self.evaluated = backbone.vit

    def loss(self, views: list[Tensor]) -> Tensor:
        return self.criterion(self.head(self.backbone(views[0])), self.head(self.backbone(views[1])))


class SimSiam(LightlyMethod):
    def __init__(self, backbone: CLSBackbone, dim: int) -> None:
        super().__init__()
        self.transform = SimSiamTransform(input_size=32, gaussian_blur=0.0)
        self.backbone = backbone
        self.projection = heads.ProjectionHead(
            [(dim, 2048, nn.BatchNorm1d(2048), nn.ReLU(inplace=True)), (2048, 2048, nn.BatchNorm1d(2048), None)]
        )
        self.prediction = heads.SimSiamPredictionHead(2048, 512, 2048)
        self.criterion = NegativeCosineSimilarity()
        self.evaluated = backbone.vit

    def loss(self, views: list[Tensor]) -> Tensor:
        z0, z1 = (self.projection(self.backbone(v)) for v in views[:2])
        p0, p1 = self.prediction(z0), self.prediction(z1)
        return 0.5 * (self.criterion(z0.detach(), p1) + self.criterion(z1.detach(), p0))


class BYOL(LightlyMethod):
    def __init__(self, backbone: CLSBackbone, dim: int, momentum: float = 0.99) -> None:
        super().__init__()
        self.transform = BYOLTransform(
            view_1_transform=BYOLView1Transform(input_size=32, gaussian_blur=0.0),
            view_2_transform=BYOLView2Transform(input_size=32, gaussian_blur=0.0),
        )
        self.backbone = backbone
        self.projection = heads.BYOLProjectionHead(dim, 1024, 256)
        self.prediction = heads.BYOLPredictionHead(256, 1024, 256)
        self.backbone_momentum = _momentum_copy(backbone)
        self.projection_momentum = _momentum_copy(self.projection)
        self.criterion = NegativeCosineSimilarity()
        self.momentum = momentum
        self.evaluated = backbone.vit  # the online network, as dinolite's BYOL evaluates

    def loss(self, views: list[Tensor]) -> Tensor:
        lightly_utils.update_momentum(self.backbone, self.backbone_momentum, m=self.momentum)
        lightly_utils.update_momentum(self.projection, self.projection_momentum, m=self.momentum)
        p0, p1 = (self.prediction(self.projection(self.backbone(v))) for v in views[:2])
        with torch.no_grad():
            z0, z1 = (self.projection_momentum(self.backbone_momentum(v)) for v in views[:2])
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))


class DINO(LightlyMethod):
    def __init__(self, backbone: CLSBackbone, dim: int, momentum: float = 0.99) -> None:
        super().__init__()
        self.transform = DINOTransform(global_crop_size=32, n_local_views=0, cj_strength=0.5, gaussian_blur=(0, 0, 0))
        self.backbone = backbone
        self.head = self._head(dim)
        self.teacher_backbone = _momentum_copy(backbone)
        # a second head, not a copy (its weight-normalised last layer cannot be deep-copied), as lightly's
        # benchmark and example build the teacher's
        self.teacher_head = self._head(dim)
        lightly_utils.deactivate_requires_grad(self.teacher_head)
        self.criterion = DINOLoss(output_dim=2048)
        self.momentum = momentum
        self.evaluated = self.teacher_backbone.vit  # the EMA teacher, as dinolite's DINOv2 evaluates

    @staticmethod
    def _head(dim: int) -> nn.Module:
        head = heads.DINOProjectionHead(dim, 2048, 256, 2048, batch_norm=True)
        # two layers for 32 px images, as lightly's CIFAR-10 benchmark
        head.layers = heads.ProjectionHead(
            [(dim, 2048, nn.BatchNorm1d(2048), nn.GELU()), (2048, 256, None, None)]
        ).layers
        return head

    def loss(self, views: list[Tensor]) -> Tensor:
        lightly_utils.update_momentum(self.backbone, self.teacher_backbone, m=self.momentum)
        lightly_utils.update_momentum(self.head, self.teacher_head, m=self.momentum)
        with torch.no_grad():
            teacher = [self.teacher_head(self.teacher_backbone(v)) for v in views[:2]]
        student = [self.head(self.backbone(v)) for v in views]
        return self.criterion(teacher, student)


class MSN(LightlyMethod):
    def __init__(self, backbone: CLSBackbone, dim: int, momentum: float = 0.996, mask_ratio: float = 0.15) -> None:
        super().__init__()
        self.transform = MSNTransform(random_size=32, focal_size=16, cj_strength=1.0)
        # lightly's naming: `anchor_*` is trained, `backbone` / `projection` follow it by EMA (the target)
        self.anchor_backbone = backbone
        self.anchor_projection = heads.MSNProjectionHead(dim)
        self.backbone = _momentum_copy(backbone)
        self.projection = _momentum_copy(self.anchor_projection)
        self.prototypes = nn.Linear(256, 1024, bias=False).weight
        self.criterion = MSNLoss()
        self.momentum, self.mask_ratio = momentum, mask_ratio
        self.patch_size = backbone.vit.patch_size
        self.evaluated = self.backbone.vit  # the target encoder, as dinolite's MSN evaluates

    def _masked(self, images: Tensor) -> Tensor:
        sequence = (images.shape[-1] // self.patch_size) ** 2  # as lightly's MSN example counts it
        idx_keep, _ = lightly_utils.random_token_mask((images.shape[0], sequence), self.mask_ratio)
        return self.anchor_projection(self.anchor_backbone(images, idx_keep=idx_keep))

    def loss(self, views: list[Tensor]) -> Tensor:
        lightly_utils.update_momentum(self.anchor_backbone, self.backbone, self.momentum)
        lightly_utils.update_momentum(self.anchor_projection, self.projection, self.momentum)
        with torch.no_grad():
            targets = self.projection(self.backbone(views[0]))
        anchors = torch.cat([self._masked(views[1]), self._masked(torch.cat(views[2:]))])
        return self.criterion(anchors, targets, self.prototypes.data)


def _simclr(backbone: CLSBackbone, dim: int) -> LightlyMethod:
    transform = SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)
    return TwoViewMethod(backbone, transform, heads.SimCLRProjectionHead(dim, 512, 128), NTXentLoss())


def _barlow_twins(backbone: CLSBackbone, dim: int) -> LightlyMethod:
    transform = BYOLTransform(
        view_1_transform=BYOLView1Transform(input_size=32, gaussian_blur=0.0),
        view_2_transform=BYOLView2Transform(input_size=32, gaussian_blur=0.0),
    )
    head = heads.ProjectionHead([(dim, 2048, nn.BatchNorm1d(2048), nn.ReLU(inplace=True)), (2048, 2048, None, None)])
    return TwoViewMethod(backbone, transform, head, BarlowTwinsLoss())


def _vicreg(backbone: CLSBackbone, dim: int) -> LightlyMethod:
    transform = VICRegTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)
    return TwoViewMethod(backbone, transform, heads.BarlowTwinsProjectionHead(dim, 2048, 2048), VICRegLoss())


RECIPES: dict[str, Callable[[CLSBackbone, int], LightlyMethod]] = {
    "simclr": _simclr,
    "barlow_twins": _barlow_twins,
    "byol": BYOL,
    "simsiam": SimSiam,
    "msn": MSN,
    "dino": DINO,
    "vicreg": _vicreg,
}


class _Views(Dataset):
    """The decoded training images (uint8, (N, 3, H, W)) through the method's transform."""

    def __init__(self, images: Tensor, transform: Callable[[Image.Image], list[Tensor]]) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> list[Tensor]:
        return self.transform(Image.fromarray(self.images[index].permute(1, 2, 0).numpy()))


def _collate(samples: list[list[Tensor]]) -> list[Tensor]:
    return [torch.stack(view) for view in zip(*samples)]


def train_lightly(
    name: str, vit: DinoVisionTransformer, images: Tensor, iterations: int, batch_size: int, seed: int, workers: int
) -> tuple[nn.Module, float]:
    """Train lightly's ``name`` around ``vit`` for ``iterations`` batches of ``batch_size`` images drawn
    without replacement (a new permutation each pass); returns (the evaluated backbone, seconds)."""
    torch.manual_seed(seed)
    method = RECIPES[name](CLSBackbone(vit), vit.embed_dim).train()
    generator = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(range(len(images)), num_samples=iterations * batch_size, generator=generator)
    loader = DataLoader(
        _Views(images, method.transform),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=_collate,
        drop_last=True,
        generator=generator,
    )
    trainable = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    schedule = CosineWarmupScheduler(optimizer, warmup_epochs=max(1, iterations // 10), max_epochs=iterations)
    start = time.perf_counter()
    for iteration, views in enumerate(loader, start=1):
        loss = method.loss(views)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"lightly {name}: loss {loss.item()} at iteration {iteration}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if iteration % 50 == 0 or iteration == iterations:
            logger.info(
                "lightly %s: it %d/%d loss %.4f (%.0f s)",
                name,
                iteration,
                iterations,
                loss.item(),
                time.perf_counter() - start,
            )
    return method.evaluated.eval(), time.perf_counter() - start
