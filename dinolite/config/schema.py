"""The configuration schema: one dataclass per section, the closed choices, and the error type.

Defaults here are DINOv2's short recipe (``dinolite/configs/default.yaml`` repeats them with a comment per
key); :mod:`dinolite.config.loading` merges presets and overrides onto this schema and
:mod:`dinolite.config.validation` checks what types alone cannot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

# The presets ship inside the package (wheels carry them); a source checkout also has a ``configs``
# link at its root pointing here, so ``configs/demo.yaml`` paths keep working from a clone.
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A configuration problem, with the dotted path of the key at fault in the message."""


# --------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------


@dataclass
class StudentConfig:
    """Backbone architecture (DINOv2 calls this section ``student``; the teacher is a copy of it)."""

    arch: str = "vit_large"  # vit_small | vit_base | vit_large | vit_giant2 (or vit_tiny)
    patch_size: int = 16
    embed_dim: Optional[int] = None  # overrides the arch's width (demo / ablations)
    depth: Optional[int] = None  # overrides the arch's depth
    num_heads: Optional[int] = None  # overrides the arch's head count
    drop_path_rate: float = 0.3
    drop_path_uniform: bool = True
    layerscale: float = 1.0e-5  # LayerScale init value; 0 disables LayerScale
    ffn_layer: str = "mlp"  # mlp | swiglu (DINOv2's "swiglufused" is accepted as swiglu)
    qkv_bias: bool = True
    proj_bias: bool = True
    ffn_bias: bool = True
    num_register_tokens: int = 0
    interpolate_antialias: bool = False
    interpolate_offset: float = 0.1
    attention: str = "auto"  # auto (xformers on CUDA when installed, else SDPA) | sdpa | xformers
    # learned (DINOv2) | sincos (fixed 2-D sine-cosine table, frozen: MAE, I-JEPA)
    pos_embed: str = "learned"
    # dinov2 | ijepa (the released I-JEPA encoder's: truncated-normal patch projection, residual output
    # projections divided by sqrt(2 * layer))
    weight_init: str = "dinov2"
    # a dinolite export, DINOv2 .pth, timm/transformers DINOv2 weights (file or hub folder) or hf-hub:ORG/NAME:
    # initialises student and teacher (docs/interop.md)
    pretrained_weights: str = ""


@dataclass
class DinoConfig:
    loss_weight: float = 1.0
    head_n_prototypes: int = 65536
    head_bottleneck_dim: int = 256
    head_nlayers: int = 3
    head_hidden_dim: int = 2048
    koleo_loss_weight: float = 0.1


@dataclass
class IbotConfig:
    loss_weight: float = 1.0
    mask_sample_probability: float = 0.5
    mask_ratio_min_max: list[float] = field(default_factory=lambda: [0.1, 0.5])
    separate_head: bool = False
    head_n_prototypes: int = 65536
    head_bottleneck_dim: int = 256
    head_nlayers: int = 3
    head_hidden_dim: int = 2048


@dataclass
class TeacherConfig:
    momentum_teacher: float = 0.992
    final_momentum_teacher: float = 1.0
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.07
    warmup_teacher_temp_epochs: int = 30
    student_temp: float = 0.1
    center_momentum: float = 0.9  # EMA centering
    sinkhorn_iterations: int = 3  # Sinkhorn-Knopp centering


@dataclass
class OptimConfig:
    epochs: int = 100
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    base_lr: float = 0.004  # for a global batch of 1024, scaled by `scaling_rule`
    warmup_epochs: int = 10
    min_lr: float = 1.0e-6
    clip_grad: float = 3.0  # 0 disables clipping
    freeze_last_layer_epochs: int = 1
    scaling_rule: str = "sqrt_wrt_1024"  # sqrt_wrt_1024 | linear_wrt_1024 | none
    patch_embed_lr_mult: float = 0.2
    layerwise_decay: float = 0.9
    adamw_beta1: float = 0.9
    adamw_beta2: float = 0.999


@dataclass
class CropsConfig:
    global_crops_scale: list[float] = field(default_factory=lambda: [0.32, 1.0])
    local_crops_number: int = 8
    local_crops_scale: list[float] = field(default_factory=lambda: [0.05, 0.32])
    global_crops_size: int = 224
    local_crops_size: int = 96
    horizontal_flip_p: float = 0.5
    color_jitter: list[float] = field(default_factory=lambda: [0.4, 0.4, 0.2, 0.1])  # b, c, s, h
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p_global1: float = 1.0
    blur_p_global2: float = 0.1
    blur_p_local: float = 0.5
    solarize_p_global2: float = 0.2
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class DataConfig:
    # Shard patterns (brace expansion, several patterns, ``pipe:`` commands), or one image folder.
    # The special value "digits" builds scikit-learn's digits as shards under `train.output_dir`/data.
    source: list[str] = field(default_factory=list)
    num_workers: int = 10
    shuffle_buffer: int = 5000
    # Stop when more than this fraction of the last `decode_errors_window` samples of one data worker
    # could not be used (undecodable, over max_image_pixels, failing augmentation); in [0, 1]:
    # 0 stops at the first bad sample, 1 never stops. See docs/data.md.
    decode_errors_max_fraction: float = 0.01
    # How many recent samples (per data worker) that fraction is measured over; >= 1.
    decode_errors_window: int = 10000
    # Images whose header gives width * height above this are skipped before any pixel is decoded
    # (decompression bombs); >= 1. Default: Pillow's own limit (268 MB as 8-bit RGB).
    max_image_pixels: int = 89478485
    # Samples whose tar members together (decompressed, judged from the tar headers), or whose image
    # file, exceed this many bytes are skipped unread; >= 1. Default 64 MiB. See docs/data.md.
    max_sample_bytes: int = 67108864
    # The encoded samples one data worker's shuffle buffer holds, in bytes; >= 1. Default 1 GiB (large
    # samples make it hold fewer than `shuffle_buffer`; a warning says so).
    shuffle_buffer_bytes: int = 1073741824


@dataclass
class TrainConfig:
    # the self-supervised method (a name registered in dinolite/train/methods, docs/methods.md)
    method: str = "dinov2"
    batch_size_per_gpu: int = 64
    output_dir: str = "./output"
    seed: int = 0
    # DINOv2 calls this OFFICIAL_EPOCH_LENGTH: an "epoch" here is a fixed number of iterations, not a
    # pass over the data. Schedules are expressed in epochs of this length.
    iterations_per_epoch: int = 1250
    max_iterations: Optional[int] = None  # stop early (smoke runs); schedules still span `optim.epochs`
    centering: str = "centering"  # centering (EMA, momentum teacher.center_momentum) | sinkhorn_knopp
    compute_precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp16 (+ loss scaling) | fp32
    grad_scaler: bool = (
        True  # with fp16 compute: loss scaling against underflow (DINOv2's compute_precision.grad_scaler)
    )
    log_every: int = 10
    checkpoint_every: int = 1250
    keep_last_checkpoints: int = 3
    device: str = "auto"  # auto | cpu | cuda
    # torch intra-op CPU threads per process (0: torch's default). Tiny models on a shared CPU run far
    # faster with 1: idle-spinning OpenMP threads starve when cores are oversubscribed.
    num_threads: int = 0
    # A progress bar over the iterations when stderr is a terminal (never in log files); --no-progress.
    progress: bool = True
    # Experiment trackers that receive every metrics.jsonl record: wandb and/or mlflow (extras
    # `pip install dinolite[wandb]` / `[mlflow]`). WANDB_MODE=offline works without an account.
    loggers: list[str] = field(default_factory=list)
    wandb_project: str = "dinolite"
    mlflow_tracking_uri: str = ""  # empty: sqlite:///<output_dir>/mlflow.db


@dataclass
class DistributedConfig:
    sharding_strategy: str = "full_shard"  # full_shard | shard_grad_op | no_shard
    activation_checkpointing: bool = False
    compile: bool = False  # torch.compile each transformer block
    backend: str = "auto"  # auto (nccl on CUDA, gloo on CPU) | nccl | gloo


@dataclass
class WatchdogThreshold:
    metric: str = ""  # a monitor metric name, e.g. "collapse/backbone_rankme" (docs/monitor.md)
    min: Optional[float] = None  # flag when the value drops below
    max: Optional[float] = None  # flag when the value rises above
    after_iteration: int = 0  # ignore before this iteration (warm-up is noisy)
    patience: int = 1  # consecutive flagged measurements before acting


@dataclass
class MonitorConfig:
    every: int = 100  # compute collapse metrics every N iterations (0 disables)
    max_samples: int = 4096  # embeddings gathered across ranks per measurement, bounds the cost
    spectrum_every: int = 1000  # save the singular value spectrum every N iterations
    action: str = "warn"  # warn | stop
    # apply the method's default collapse rules (MethodSpec.watchdog_thresholds, docs/methods.md)
    method_thresholds: bool = True
    thresholds: list[WatchdogThreshold] = field(default_factory=list)  # extra rules, after the method's


@dataclass
class EvaluationConfig:
    # After training: kNN of the teacher against raw pixels and a random-init network (the demo).
    knn_at_end: bool = False
    knn_train: list[str] = field(default_factory=list)
    knn_val: list[str] = field(default_factory=list)
    knn_k: int = 20
    # During training: kNN top-1 (k = knn_k) of the evaluated network on the knn_train/knn_val images
    # (the digits for the demo) every N iterations, logged as eval/knn_top1 (0: off).
    online_every: int = 0
    online_linear: bool = False  # also a cheap linear probe on the same features (eval/linear_top1)
    online_max_train_images: int = 2000  # bounds the cost of one online evaluation
    online_max_val_images: int = 1000


@dataclass
class IJEPAConfig:
    """I-JEPA (train.method=ijepa; Assran et al. 2023). The EMA target follows teacher.momentum_teacher ->
    teacher.final_momentum_teacher; the view is one crop of crops.global_crops_size / global_crops_scale."""

    num_targets: int = 4  # target blocks per image
    target_scale: list[float] = field(default_factory=lambda: [0.15, 0.2])  # fraction of the patch grid
    target_aspect: list[float] = field(default_factory=lambda: [0.75, 1.5])  # height / width
    context_scale: list[float] = field(default_factory=lambda: [0.85, 1.0])  # context block, before removing targets
    min_keep: int = 10  # fewest context patches an image may keep
    predictor_depth: int = 12
    predictor_embed_dim: int = 384
    predictor_num_heads: int = 12
    loss: str = "smooth_l1"  # smooth_l1 (released code) | mse (the paper's L2) | l1


@dataclass
class MSNConfig:
    """MSN (train.method=msn; Assran et al. 2022). Views: crops.global_crops_* for the target and the
    anchor, crops.local_crops_* for the focal anchors; the EMA target follows teacher.momentum_teacher."""

    mask_ratio: float = 0.15  # fraction of each anchor's patches dropped (released config: patch_drop)
    num_prototypes: int = 1024
    hidden_dim: int = 2048  # projection head
    output_dim: int = 256
    use_bn: bool = True  # BatchNorm in the projection head
    temperature: float = 0.1  # anchor softmax temperature tau
    sharpen_temperature: float = 0.25  # target sharpening T (targets use tau * T)
    sharpen: bool = True  # false: T = 1 (the uniform-collapse ablation)
    me_max: bool = True  # false: no mean-entropy maximisation (the one-prototype-collapse ablation)
    me_max_weight: float = 1.0
    use_sinkhorn: bool = False  # Sinkhorn-balanced targets


@dataclass
class SimMIMConfig:
    """SimMIM (train.method=simmim; Xie et al. 2022). The view is one crop of crops.global_crops_size."""

    mask_patch_size: int = 32  # pixels per mask unit, a multiple of student.patch_size
    mask_ratio: float = 0.6
    norm_target: bool = False  # per-patch normalised pixel targets


@dataclass
class ViewConfig:
    """Photometric recipe of one view of the joint-embedding methods (SimCLR, Barlow Twins, SimSiam, BYOL,
    DirectCLR; dinolite/data/views.py). Sizes, scales and the number of small views come from ``crops``."""

    horizontal_flip_p: float = 0.5
    color_jitter: list[float] = field(default_factory=lambda: [0.4, 0.4, 0.2, 0.1])  # b, c, s, h
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 1.0
    blur_kernel_size: int = 0  # odd; 0 = 10% of the crop side (SimCLR's rule)
    solarize_p: float = 0.0


@dataclass
class JointEmbeddingConfig:
    """SimCLR, Barlow Twins, SimSiam / BYOL and DirectCLR (docs/methods_joint_embedding.md). Defaults: BYOL's."""

    view1: ViewConfig = field(default_factory=ViewConfig)
    view2: ViewConfig = field(default_factory=lambda: ViewConfig(blur_p=0.1, solarize_p=0.2))
    local_view: ViewConfig = field(default_factory=lambda: ViewConfig(blur_p=0.5))  # crops.local_crops_number of them
    projector_layers: int = 2  # 0 = no projector
    projector_hidden_dim: int = 4096
    projector_out_dim: int = 256
    projector_last_bn: bool = False  # BatchNorm (no affine) on the projector output (SimSiam, MoCo v3)
    predictor_layers: int = 0  # SimSiam / BYOL: 2; 0 = no predictor
    predictor_hidden_dim: int = 4096
    predictor_last_bn: bool = False
    temperature: float = 0.1  # InfoNCE (SimCLR, DirectCLR)
    directclr_d0: int = 360  # DirectCLR: the contrastive loss sees the first d0 dims of the CLS feature
    lambda_offdiag: float = 0.005  # Barlow Twins' off-diagonal weight
    stop_gradient: bool = True  # SimSiam / BYOL: no gradient through the target branch
    # SimSiam / BYOL: false = the asymmetric loss of Wang et al. 2022: view 0 (view1) is the source, view 1
    # (view2) the target, local crops are sources only (docs/methods_joint_embedding.md)
    symmetric_loss: bool = True
    target: str = "stopgrad"  # stopgrad (SimSiam: the target is the online network) | ema (BYOL)
    target_momentum: float = 0.996  # EMA target: cosine from this to final_target_momentum
    final_target_momentum: float = 1.0


@dataclass
class Config:
    student: StudentConfig = field(default_factory=StudentConfig)
    dino: DinoConfig = field(default_factory=DinoConfig)
    ibot: IbotConfig = field(default_factory=IbotConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    crops: CropsConfig = field(default_factory=CropsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    joint_embedding: JointEmbeddingConfig = field(default_factory=JointEmbeddingConfig)
    ijepa: IJEPAConfig = field(default_factory=IJEPAConfig)
    msn: MSNConfig = field(default_factory=MSNConfig)
    simmim: SimMIMConfig = field(default_factory=SimMIMConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "student.arch": ("vit_tiny", "vit_small", "vit_base", "vit_large", "vit_giant2"),
    "student.ffn_layer": ("mlp", "swiglu", "swiglufused"),
    "student.pos_embed": ("learned", "sincos"),
    "student.weight_init": ("dinov2", "ijepa"),
    "student.attention": ("auto", "sdpa", "xformers"),
    "optim.scaling_rule": ("sqrt_wrt_1024", "linear_wrt_1024", "none"),
    "train.centering": ("centering", "sinkhorn_knopp"),
    "train.compute_precision": ("auto", "bf16", "fp16", "fp32"),
    "train.device": ("auto", "cpu", "cuda"),
    "distributed.sharding_strategy": ("full_shard", "shard_grad_op", "no_shard"),
    "distributed.backend": ("auto", "nccl", "gloo"),
    "monitor.action": ("warn", "stop"),
    "joint_embedding.target": ("stopgrad", "ema"),
    "ijepa.loss": ("smooth_l1", "mse", "l1"),
}
TRACKERS = ("wandb", "mlflow")  # train.loggers
