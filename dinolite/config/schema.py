"""The shared configuration schema: one dataclass per section every method reads, the closed choices, and
the error type.

Defaults here are DINOv2's short recipe (``dinolite/configs/default.yaml`` repeats them with a comment per
key). A method's own sections live with the method (:mod:`dinolite.config.sections`);
:mod:`dinolite.config.loading` merges presets and overrides onto shared + registered sections and
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
    # learned (DINOv2) | sincos (fixed 2-D sine-cosine table, frozen: MAE, I-JEPA) | shared_rel_pos_bias (no
    # absolute position; one relative position bias on the attention logits shared by all blocks: SimMIM's ViT,
    # microsoft/SimMIM d3e29bc models/vision_transformer.py:179-213; needs the CLS token and no registers)
    pos_embed: str = "learned"
    # pos_embed=rope (DINOv3's axial RoPE, dinolite/models/rope.py; DINOv3's key names and ssl_default_config
    # defaults): periods base ** (4k / head_dim), or geometric from min_period to max_period (both, and base null);
    # coordinates in [-1, 1] per axis (separate) or by the grid's longer (max) / shorter (min) side; training-time
    # shift (uniform +-s), jitter (log-uniform per axis in [1/j, j]) and rescale (one log-uniform in [1/r, r]; the
    # released backbones were trained with 2); null turns each off. CLS and registers are not rotated.
    # layernorm (eps 1e-6, DINOv2's) | layernormbf16 (eps 1e-5: DINOv3's released ViTs; DINOv3's names)
    norm_layer: str = "layernorm"
    # DINOv3's mask_k_bias: the keys' third of the qkv bias is not applied (it stays zero); DINOv3's released
    # recipes set it with RoPE (a rotated key bias no longer cancels in the softmax); timm / transformers' DINOv3
    # models have no key bias
    mask_k_bias: bool = False
    pos_embed_rope_base: Optional[float] = 100.0
    pos_embed_rope_min_period: Optional[float] = None
    pos_embed_rope_max_period: Optional[float] = None
    pos_embed_rope_normalize_coords: str = "separate"
    pos_embed_rope_shift_coords: Optional[float] = None
    pos_embed_rope_jitter_coords: Optional[float] = None
    pos_embed_rope_rescale_coords: Optional[float] = None
    # pos_embed=sincos: which half of the channels encodes the row: row_first (dinolite's) | column_first (the
    # released I-JEPA / MAE code's, ijepa 52c1ae9 src/models/vision_transformer.py:21-48; released weights fit it)
    sincos_order: str = "row_first"
    # dinov2 | ijepa (the released I-JEPA encoder constructor's: truncated-normal patch projection, residual output
    # projections divided by sqrt(2 * layer); released training then redraws every Linear at std 0.02)
    # | ijepa_released (what released training starts from: the same without the rescaling) | mae (the released
    # MAE encoder's: Xavier-uniform Linear and patch weights, CLS token normal std 0.02)
    weight_init: str = "dinov2"
    # false: no CLS token (the released I-JEPA encoder's layout: a (1, N, D) position table; the pooled feature is
    # the mean patch token); only for methods that read no CLS token (ijepa, simmim: the method's registry entry)
    cls_token: bool = True
    # zeros (DINOv2 / iBOT) | trunc_normal (SimMIM's: std 0.02 truncated at +-1 std, models/simmim.py:63-67)
    mask_token_init: str = "zeros"
    # a dinolite export, DINOv2 .pth, timm/transformers DINOv2 weights (file or hub folder) or hf-hub:ORG/NAME:
    # initialises student and teacher (docs/interop.md)
    pretrained_weights: str = ""
    # pack the tokens of all crop sizes through each block's norms / projections / MLP in one call, attention per
    # crop size (DINOv3's layout; docs/models.md "Crop packing"); equal to the per-crop forward up to fp32 rounding
    crop_packing: bool = False
    # small initialisation (Simon et al. 2023, stepwise learning): every weight matrix / kernel (parameters named
    # "weight" with 2+ dims: Linear, Conv; not biases, norms, tokens) of these modules of the objective's student
    # (and of its EMA copy) is multiplied by init_scale after the seeded build; 1.0 leaves the build untouched
    init_scale: float = 1.0
    init_scale_modules: list[str] = field(default_factory=lambda: ["projector"])


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
    # auto (PyTorch's choice: foreach on CUDA, a per-tensor loop on CPU) | for_loop | foreach | fused (one kernel
    # per parameter group, CPU and CUDA); the same update up to float rounding (dinolite/train/optim.py)
    adamw_kernel: str = "auto"
    # Released recipes (docs/faithfulness.md; dinolite/train/optim.py); the defaults are dinolite's recipe.
    optimizer: str = "adamw"  # adamw | sgd (SimSiam) | lars (Barlow Twins, DirectCLR; You et al. 2017)
    momentum: float = 0.9  # sgd and lars
    nesterov: bool = False  # sgd
    lars_eta: float = 0.001  # lars trust coefficient
    lars_exclude_1d: bool = True  # lars: 1-D parameters (biases, norm weights) skip the trust ratio
    decay_rule: str = "dinolite"  # dinolite | all (every parameter) | non_1d (2+ dims, no .bias)
    no_decay: list[str] = field(default_factory=list)  # more exempt names (dotted components): [prototypes]
    lr_1d_mult: float = 1.0  # lr multiplier of 1-D parameters (Barlow Twins: 0.024)
    fixed_lr_modules: list[str] = field(default_factory=list)  # student modules kept at the peak lr (SimSiam)
    clip_grad_scope: str = "per_module"  # per_module (DINOv2) | joint (one norm over the clipped modules)
    unclipped_modules: list[str] = field(default_factory=list)  # student modules never clipped (MSN: prototypes)
    warmup_start_lr: float = 0.0  # lr at iteration 0 of the warm-up, not batch-scaled (I-JEPA, MSN: 2e-4)
    schedule_horizon: float = 1.0  # lr and wd cosines laid out over this many times the run (MSN: 1.25)
    # iteration: lr and wd set every iteration | epoch: held over each epoch at the value of its first
    # iteration (SimSiam's release sets its cosine lr once per epoch, main_simsiam.py:257, 359-366)
    schedule_unit: str = "iteration"
    # cosine: lr warmup then cosine to min_lr, weight decay cosine weight_decay -> weight_decay_end (DINOv2)
    # | constant: lr warmup then held at the peak, weight decay held at weight_decay (DINOv3's recipes)
    schedule: str = "cosine"
    # multistep (SimMIM's release): lr warm-up, then x lr_gamma at each of these epochs; weight decay held
    lr_milestones: list[int] = field(default_factory=list)
    lr_gamma: float = 0.1


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
    # DINOv3's Gram teacher crops (docs/gram_anchoring.md): the two global crops cut again at this size for
    # the Gram teacher (null: it sees the student's global crops); needs gram.use_loss with a Gram teacher
    gram_teacher_crops_size: Optional[int] = None
    # true: the Gram teacher's crops skip the colour distortions (DINOv3's high-resolution adaptation)
    gram_teacher_no_distortions: bool = False


@dataclass
class DataConfig:
    # Shard patterns (brace expansion, several patterns, ``pipe:`` commands), or one image folder.
    # The special values [digits] and [fashion_mnist] build that data set as shards under
    # `train.output_dir`/data (dinolite/data/builtin_sets.py), with its own kNN/evaluation split.
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
    # DINOv2's teacher centering (its key stays where DINOv2 has it; checked by DINOv2's sections):
    # centering (EMA, momentum teacher.center_momentum) | sinkhorn_knopp
    centering: str = "centering"
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
    # full_shard | shard_grad_op | no_shard | hybrid_shard (HSDP: shard within a node, replicate across nodes)
    sharding_strategy: str = "full_shard"
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
    # log the top N eigenvalues of the raw (not L2-normalised) covariance of each monitored embedding at every
    # measurement, as collapse/<prefix>_eig_<k> (k = 1..N): the stepwise-learning trace (Simon et al. 2023); 0: off
    eigenvalues: int = 0
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
class EMAConfig:
    """The EMA teacher / target network of every method that has one (DINOv2's teacher, MSN's and I-JEPA's
    target encoder, BYOL's target): after every optimizer step ``theta_T <- m theta_T + (1 - m) theta_S``,
    with ``m`` going from ``momentum`` to ``final_momentum`` over the run (``optim.epochs`` x
    ``train.iterations_per_epoch`` iterations). DINOv2's names for it, ``teacher.momentum_teacher`` and
    ``teacher.final_momentum_teacher``, load as these keys (dinolite/config_aliases.py). Methods without an
    EMA network ignore the section."""

    momentum: float = 0.992  # DINOv2's teacher.momentum_teacher (ViT-L recipe)
    final_momentum: float = 1.0
    # cosine: half-cosine from momentum to final_momentum (DINO/DINOv2, BYOL, MSN) | linear: a straight ramp
    # (I-JEPA's released momentum_scheduler) | constant: momentum throughout (DINOv3's recipes)
    schedule: str = "cosine"
    # the schedule is laid out over schedule_horizon x the run, so a horizon > 1 ends the run short of
    # final_momentum (MSN's release: 1.25, a linear 0.996 -> 1 that reaches 0.9992 at the last step)
    schedule_horizon: float = 1.0


@dataclass
class Config:
    """What every method reads. A method's own sections (DINOv2's ``dino`` / ``ibot`` / ``teacher``, MSN's
    ``msn``, ...) are dataclasses of its module, added by :func:`dinolite.config.sections.config_class` to
    the class that :func:`dinolite.config.load_config` returns (a subclass of this one)."""

    student: StudentConfig = field(default_factory=StudentConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    crops: CropsConfig = field(default_factory=CropsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)


# Closed choices of the shared keys; a method's own choices are checked by its section (config/sections.py).
CHOICES: dict[str, tuple[str, ...]] = {
    "student.arch": ("vit_tiny", "vit_small", "vit_base", "vit_large", "vit_giant2"),
    "student.ffn_layer": ("mlp", "swiglu", "swiglufused"),
    "student.pos_embed": ("learned", "sincos", "shared_rel_pos_bias", "rope"),
    "student.pos_embed_rope_normalize_coords": ("separate", "max", "min"),
    "student.norm_layer": ("layernorm", "layernormbf16"),
    "student.mask_token_init": ("zeros", "trunc_normal"),
    "student.sincos_order": ("row_first", "column_first"),
    "student.weight_init": ("dinov2", "ijepa", "ijepa_released", "mae"),
    "student.attention": ("auto", "sdpa", "xformers"),
    "optim.scaling_rule": ("sqrt_wrt_1024", "linear_wrt_1024", "none"),
    "optim.optimizer": ("adamw", "sgd", "lars"),
    "optim.adamw_kernel": ("auto", "for_loop", "foreach", "fused"),
    "optim.decay_rule": ("dinolite", "all", "non_1d"),
    "optim.clip_grad_scope": ("per_module", "joint"),
    "train.compute_precision": ("auto", "bf16", "fp16", "fp32"),
    "train.device": ("auto", "cpu", "cuda"),
    "distributed.sharding_strategy": ("full_shard", "shard_grad_op", "no_shard", "hybrid_shard"),
    "distributed.backend": ("auto", "nccl", "gloo"),
    "monitor.action": ("warn", "stop"),
    "ema.schedule": ("cosine", "linear", "constant"),
    "optim.schedule": ("cosine", "constant", "multistep"),
    "optim.schedule_unit": ("iteration", "epoch"),
}
TRACKERS = ("wandb", "mlflow")  # train.loggers
