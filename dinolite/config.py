"""Typed, validated configuration.

``load_config(name_or_path, overrides)`` merges ``dinolite/configs/default.yaml`` <- preset <- dotted overrides and
validates the result against the dataclasses below. Every mistake is reported at start-up with the full
dotted path of the key at fault: an unknown key names the nearest valid key, a wrong type names the
expected type and the value given, and an unknown preset lists the available ones.

Key names follow DINOv2's ``ssl_default_config.yaml`` where DINOv2 has the key (``student.arch``,
``dino.head_n_prototypes``, ``optim.base_lr``, ...) so that DINOv2 users can carry their overrides over.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dinolite import config_aliases
from dinolite.io import write_text_atomic

# The presets ship inside the package (wheels carry them); a source checkout also has a ``configs``
# link at its root pointing here, so ``configs/demo.yaml`` paths keep working from a clone.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


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
    metric: str = ""  # a monitor metric name, e.g. "collapse/backbone_rankme" (docs/readme/monitor.md)
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


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def available_presets() -> list[str]:
    """Names of the presets shipped in ``dinolite/configs/`` (without ``.yaml``), ``default`` excluded."""
    return sorted(p.stem for p in _config_dir().glob("*.yaml") if p.stem != "default")


def _config_dir() -> Path:
    return CONFIG_DIR


def _resolve_preset(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    candidate = _config_dir() / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise ConfigError(
            f"unknown config preset {str(name_or_path)!r}; available presets: {', '.join(available_presets())}"
            " (or pass a path to a .yaml file)"
        )
    return candidate


def _read_yaml(path: Path) -> DictConfig:
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends: name the file
        raise ConfigError(f"cannot parse {path}: {exc}") from exc
    if loaded is None:
        return OmegaConf.create({})
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(loaded).__name__}")
    return loaded


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _check_keys(node: Any, cls: type, path: str, source: str) -> None:
    """Reject keys that the schema does not know, naming the full path and the nearest valid key."""
    if not isinstance(node, DictConfig):
        return
    fields = _field_types(cls)
    for key in node.keys():
        full = f"{path}.{key}" if path else str(key)
        if key not in fields:
            valid = [f"{path}.{k}" if path else k for k in fields]
            near = config_aliases.suggest(full, valid)  # DINOv2's key names first
            hint = f"; did you mean {near}?" if near else f"; valid keys here: {', '.join(sorted(fields))}"
            raise ConfigError(f"{source}: unknown config key {full!r}{hint}")
        inner = _unwrap_optional(fields[key])
        value = node._get_node(key)
        if dataclasses.is_dataclass(inner):
            _check_keys(value, inner, full, source)
        elif typing.get_origin(inner) is list:
            (item_type,) = typing.get_args(inner) or (Any,)
            if dataclasses.is_dataclass(item_type) and isinstance(value, ListConfig):
                for i, item in enumerate(value):
                    _check_keys(item, item_type, f"{full}[{i}]", source)


def _type_name(tp: Any) -> str:
    tp = _unwrap_optional(tp)
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def load_yaml_as(path: str | Path, schema: type, what: str = "file") -> Any:
    """Read a YAML file into the dataclass ``schema`` with this module's checks and messages.

    For files other than training configs (e.g. the collapse lab's matrix files): unknown keys name the
    full dotted path and the nearest valid key, wrong types name the expected type and the value given,
    a missing required key (a field without a default) is named; every message starts with the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    node = _read_yaml(path)
    _check_keys(node, schema, "", str(path))
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(_format_omegaconf_error(exc, str(path), schema)) from exc


def _merge(base: DictConfig, other: DictConfig, source: str) -> DictConfig:
    try:
        other = config_aliases.translate(other, source)  # DINOv2's key names -> ours
    except config_aliases.AliasError as exc:
        raise ConfigError(str(exc)) from None
    _check_keys(other, Config, "", source)
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as exc:
        raise ConfigError(_format_omegaconf_error(exc, source)) from exc


def _format_omegaconf_error(exc: OmegaConfBaseException, source: str, root: type = Config) -> str:
    path = getattr(exc, "full_key", None) or "?"
    expected = _schema_type(path, root)
    msg = str(exc).splitlines()[0]
    expected_txt = f", expected {_type_name(expected)}" if expected is not None else ""
    return f"{source}: invalid value for {path!r}{expected_txt}: {msg}"


def _schema_type(dotted: str, root: type = Config) -> Any:
    """The declared type of a dotted key in the schema, or None when the path is not a plain field."""
    cls: Any = root
    tp: Any = None
    for part in dotted.split("."):
        name = part.split("[")[0]
        if not dataclasses.is_dataclass(cls) or name not in _field_types(cls):
            return None
        tp = _field_types(cls)[name]
        cls = _unwrap_optional(tp)
        if "[" in part and typing.get_origin(cls) is list:  # runs[2].label: the item's field
            tp = cls = (typing.get_args(cls) or (Any,))[0]
    return tp


def _split_list(body: str) -> list[str]:
    """``a, b{1..2}, 'c'`` -> items, splitting on commas outside braces/brackets/quotes (shard patterns)."""
    items, depth, quote, current = [], 0, "", ""
    for char in body:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(current)
            current = ""
            continue
        current += char
    items.append(current)
    return [item.strip().strip("'\"") for item in items if item.strip()]


def _parse_override(item: str) -> DictConfig:
    """One ``key=value``; a list-typed key takes ``[p1, p2]`` with brace patterns, or one bare value."""
    key, _, value = item.partition("=")
    key = key.strip()
    is_list = typing.get_origin(_unwrap_optional(_schema_type(key))) is list
    try:
        node = OmegaConf.from_dotlist([item])
    except Exception as exc:  # yaml's ParserError/ScannerError are not OmegaConf errors
        text = value.strip()
        if is_list and text.startswith("[") and text.endswith("]"):  # [/d/shard-{000000..001281}.tar]
            return (
                OmegaConf.from_dotlist([]) if not text[1:-1].strip() else _list_override(key, _split_list(text[1:-1]))
            )
        reason = " ".join(str(exc).split())
        raise ConfigError(
            f"cannot parse override {item!r}: {reason}; quote the value if it is meant as a string"
        ) from None
    if is_list and isinstance(OmegaConf.select(node, key), str):  # data.source=/d/shard-{0..9}.tar
        return _list_override(key, [OmegaConf.select(node, key)])
    return node


def _list_override(key: str, values: list[str]) -> DictConfig:
    node = OmegaConf.create({})
    OmegaConf.update(node, key, values, force_add=True)
    return node


def _parse_overrides(overrides: Sequence[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
    merged = OmegaConf.create({})
    for item in overrides:
        try:
            merged = OmegaConf.merge(merged, _parse_override(item))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"cannot parse override {item!r}: {str(exc).splitlines()[0]}") from exc
    return merged


def load_config(name_or_path: str | Path = "demo", overrides: Sequence[str] = ()) -> Config:
    """Load ``default.yaml`` <- preset (name in ``dinolite/configs/`` or a path) <- ``key=value`` overrides.

    Returns a validated :class:`Config`. Raises :class:`ConfigError` naming the key at fault.
    """
    schema = OmegaConf.structured(Config)
    merged = _merge(schema, _read_yaml(_config_dir() / "default.yaml"), "default.yaml")
    preset_path = _resolve_preset(name_or_path)
    if preset_path.name != "default.yaml" or preset_path.parent != _config_dir():
        preset = _read_yaml(preset_path)
        merged = _merge(merged, preset, str(preset_path))
        if preset_path.parent != _config_dir():  # a user's file (shipped presets are consistent)
            _check_shared_head(preset, merged, str(preset_path))
    if overrides:
        layer = _parse_overrides(overrides)
        merged = _merge(merged, layer, "overrides")
        _check_shared_head(layer, merged, "overrides")
    try:
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(_format_omegaconf_error(exc, "config")) from exc
    validate(cfg)
    return cfg


def config_from_dict(data: dict) -> Config:
    """Rebuild a validated :class:`Config` from a plain dict (e.g. the resolved config saved by a run)."""
    schema = OmegaConf.structured(Config)
    cfg: Config = OmegaConf.to_object(_merge(schema, OmegaConf.create(data), "saved config"))  # type: ignore
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Check choices and value ranges that types alone cannot express."""
    for dotted, allowed in CHOICES.items():
        value = get_by_path(cfg, dotted)
        if value not in allowed:
            raise ConfigError(f"invalid value for {dotted!r}: {value!r}; expected one of {', '.join(allowed)}")
    positive = [
        "student.patch_size",
        "dino.head_n_prototypes",
        "ibot.head_n_prototypes",
        "crops.global_crops_size",
        "crops.local_crops_size",
        "train.batch_size_per_gpu",
        "train.iterations_per_epoch",
        "optim.epochs",
        "train.log_every",
        "train.checkpoint_every",
    ]
    for name in cfg.train.loggers:
        if name not in TRACKERS:
            raise ConfigError(f"invalid value in 'train.loggers': {name!r}; expected any of {', '.join(TRACKERS)}")
    for dotted in ("evaluation.online_every", "evaluation.online_max_train_images", "evaluation.online_max_val_images"):
        if get_by_path(cfg, dotted) < 0:
            raise ConfigError(f"invalid value for {dotted!r}: {get_by_path(cfg, dotted)!r}; must be >= 0")
    for dotted in positive:
        if get_by_path(cfg, dotted) <= 0:
            raise ConfigError(f"invalid value for {dotted!r}: {get_by_path(cfg, dotted)!r}; must be > 0")
    for dotted in ("crops.global_crops_size", "crops.local_crops_size"):
        size = get_by_path(cfg, dotted)
        if size % cfg.student.patch_size:
            raise ConfigError(
                f"invalid value for {dotted!r}: {size} is not a multiple of student.patch_size={cfg.student.patch_size}"
            )
    for dotted in ("crops.global_crops_scale", "crops.local_crops_scale", "ibot.mask_ratio_min_max"):
        lo_hi = get_by_path(cfg, dotted)
        if len(lo_hi) != 2 or not 0.0 <= lo_hi[0] <= lo_hi[1] <= 1.0:
            raise ConfigError(f"invalid value for {dotted!r}: {lo_hi}; expected [low, high] with 0 <= low <= high <= 1")
    if cfg.crops.local_crops_number < 0:
        raise ConfigError(f"invalid value for 'crops.local_crops_number': {cfg.crops.local_crops_number}; must be >= 0")
    if cfg.optim.warmup_epochs > cfg.optim.epochs:
        raise ConfigError(
            f"invalid value for 'optim.warmup_epochs': {cfg.optim.warmup_epochs} exceeds optim.epochs={cfg.optim.epochs}"
        )
    for i, threshold in enumerate(cfg.monitor.thresholds):
        if not threshold.metric or (threshold.min is None and threshold.max is None):
            raise ConfigError(f"monitor.thresholds[{i}]: needs a metric and at least one of min/max")
    _validate_ranges(cfg)
    validate_data(cfg.data)


def validate_data(data: DataConfig) -> None:
    """Ranges of the ``data`` section's numeric keys; errors name the key, the value and the range."""
    if not 0.0 <= data.decode_errors_max_fraction <= 1.0:
        raise ConfigError(
            f"invalid value for 'data.decode_errors_max_fraction': {data.decode_errors_max_fraction!r}; must be in "
            "[0, 1] (0 stops at the first unusable sample, 1 never stops)"
        )
    for key in ("decode_errors_window", "max_image_pixels", "shuffle_buffer"):
        value = getattr(data, key)
        if value < (0 if key == "shuffle_buffer" else 1):
            raise ConfigError(
                f"invalid value for 'data.{key}': {value!r}; must be >= {0 if key == 'shuffle_buffer' else 1}"
            )
    if data.num_workers < 0:
        raise ConfigError(f"invalid value for 'data.num_workers': {data.num_workers!r}; must be >= 0")


# (dotted key, low, high, low inclusive, high inclusive): closed/open intervals of single keys.
RANGES: tuple[tuple[str, float, float, bool, bool], ...] = (
    ("optim.base_lr", 0.0, math.inf, False, False),
    ("optim.min_lr", 0.0, math.inf, True, False),
    ("optim.weight_decay", 0.0, math.inf, True, False),
    ("optim.weight_decay_end", 0.0, math.inf, True, False),
    ("optim.clip_grad", 0.0, math.inf, True, False),
    ("optim.patch_embed_lr_mult", 0.0, math.inf, True, False),
    ("optim.layerwise_decay", 0.0, 1.0, False, True),
    ("optim.adamw_beta1", 0.0, 1.0, True, False),
    ("optim.adamw_beta2", 0.0, 1.0, True, False),
    ("optim.warmup_epochs", 0, math.inf, True, False),
    ("optim.freeze_last_layer_epochs", 0, math.inf, True, False),
    ("teacher.momentum_teacher", 0.0, 1.0, True, True),
    ("teacher.final_momentum_teacher", 0.0, 1.0, True, True),
    ("teacher.center_momentum", 0.0, 1.0, True, True),
    ("teacher.warmup_teacher_temp", 0.0, math.inf, False, False),
    ("teacher.teacher_temp", 0.0, math.inf, False, False),
    ("teacher.student_temp", 0.0, math.inf, False, False),
    ("teacher.warmup_teacher_temp_epochs", 0, math.inf, True, False),
    ("ibot.mask_sample_probability", 0.0, 1.0, True, True),
    ("dino.loss_weight", 0.0, math.inf, True, False),
    ("dino.koleo_loss_weight", 0.0, math.inf, True, False),
    ("ibot.loss_weight", 0.0, math.inf, True, False),
    ("student.drop_path_rate", 0.0, 1.0, True, False),
    ("train.keep_last_checkpoints", 0, math.inf, True, False),
    ("train.num_threads", 0, math.inf, True, False),
    ("evaluation.knn_k", 1, math.inf, True, False),
    ("student.num_register_tokens", 0, math.inf, True, False),
    ("dino.head_bottleneck_dim", 1, math.inf, True, False),
    ("dino.head_nlayers", 1, math.inf, True, False),
    ("dino.head_hidden_dim", 1, math.inf, True, False),
    ("ibot.head_bottleneck_dim", 1, math.inf, True, False),
    ("ibot.head_nlayers", 1, math.inf, True, False),
    ("ibot.head_hidden_dim", 1, math.inf, True, False),
    ("teacher.sinkhorn_iterations", 1, math.inf, True, False),
    ("monitor.every", 0, math.inf, True, False),
    ("monitor.spectrum_every", 0, math.inf, True, False),
    ("monitor.max_samples", 1, math.inf, True, False),
    ("crops.horizontal_flip_p", 0.0, 1.0, True, True),
    ("crops.color_jitter_p", 0.0, 1.0, True, True),
    ("crops.grayscale_p", 0.0, 1.0, True, True),
    ("crops.blur_p_global1", 0.0, 1.0, True, True),
    ("crops.blur_p_global2", 0.0, 1.0, True, True),
    ("crops.blur_p_local", 0.0, 1.0, True, True),
    ("crops.solarize_p_global2", 0.0, 1.0, True, True),
)
# Architecture overrides: each must be >= 1 when set (None takes the arch's value).
ARCH_OVERRIDES = ("student.embed_dim", "student.depth", "student.num_heads")


def _interval(low: float, high: float, low_in: bool, high_in: bool) -> str:
    if high == math.inf:
        return f"{'>=' if low_in else '>'} {low:g}"
    return f"in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def _validate_ranges(cfg: Config) -> None:
    """Numeric ranges and cross-key constraints; each message names the key, the value and what is valid."""
    for dotted, low, high, low_in, high_in in RANGES:
        value = get_by_path(cfg, dotted)
        ok_low = value >= low if low_in else value > low
        ok_high = value <= high if high_in else value < high
        if not (ok_low and ok_high and math.isfinite(value)):
            raise ConfigError(
                f"invalid value for {dotted!r}: {value!r}; must be {_interval(low, high, low_in, high_in)}"
            )
    for dotted in ARCH_OVERRIDES:
        value = get_by_path(cfg, dotted)
        if value is not None and value < 1:
            raise ConfigError(f"invalid value for {dotted!r}: {value}; must be >= 1 (or null for the arch's value)")
    student = cfg.student
    if student.embed_dim is not None and student.num_heads is not None and student.embed_dim % student.num_heads:
        raise ConfigError(
            f"invalid value for 'student.embed_dim': {student.embed_dim}; must be a multiple of "
            f"student.num_heads={student.num_heads}"
        )
    for dotted in ("crops.mean", "crops.std"):
        values = get_by_path(cfg, dotted)
        if len(values) != 3 or (dotted == "crops.std" and min(values) <= 0):
            raise ConfigError(
                f"invalid value for {dotted!r}: {values}; expected 3 values (one per RGB channel)"
                + (", each > 0" if dotted == "crops.std" else "")
            )
    jitter = cfg.crops.color_jitter
    if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
        raise ConfigError(
            f"invalid value for 'crops.color_jitter': {jitter}; expected [brightness, contrast, saturation, hue], "
            "each >= 0, hue <= 0.5"
        )
    if cfg.train.max_iterations is not None and cfg.train.max_iterations < 1:
        raise ConfigError(
            f"invalid value for 'train.max_iterations': {cfg.train.max_iterations}; must be >= 1, or null to run "
            f"the whole schedule (optim.epochs x train.iterations_per_epoch = "
            f"{cfg.optim.epochs * cfg.train.iterations_per_epoch})"
        )
    if cfg.optim.freeze_last_layer_epochs and cfg.optim.freeze_last_layer_epochs >= cfg.optim.epochs:
        raise ConfigError(
            f"invalid value for 'optim.freeze_last_layer_epochs': {cfg.optim.freeze_last_layer_epochs}; must be < "
            f"optim.epochs={cfg.optim.epochs} (the prototypes would stay frozen for the whole run)"
        )
    for dotted in ("crops.global_crops_scale", "crops.local_crops_scale"):
        low = get_by_path(cfg, dotted)[0]
        if low <= 0:
            raise ConfigError(f"invalid value for {dotted!r}: {get_by_path(cfg, dotted)}; the low scale must be > 0")
    grid = cfg.crops.global_crops_size // cfg.student.patch_size
    if int(0.5 * grid * grid) < MIN_MASK_PATCHES:
        raise ConfigError(
            f"invalid value for 'crops.global_crops_size': {cfg.crops.global_crops_size} with student.patch_size="
            f"{cfg.student.patch_size} gives {grid}x{grid} patches; iBOT's block masking needs at least "
            f"{2 * MIN_MASK_PATCHES} patches per global crop (crops.global_crops_size >= "
            f"{math.ceil(math.sqrt(2 * MIN_MASK_PATCHES)) * cfg.student.patch_size})"
        )


# iBOT's block masks: at least this many patches per block, at most half the patches (DINOv2's collate).
MIN_MASK_PATCHES = 4
SHARED_HEAD_KEYS = ("head_n_prototypes", "head_bottleneck_dim", "head_nlayers", "head_hidden_dim")


def _check_shared_head(layer: DictConfig, merged: DictConfig, source: str) -> None:
    """With ``ibot.separate_head=false`` iBOT uses the DINO head: an ``ibot.head_*`` that ``layer`` sets to
    another value than ``dino.head_*`` would be silently ignored."""
    ibot = layer.get("ibot") if isinstance(layer, DictConfig) else None
    if not isinstance(ibot, DictConfig) or merged.ibot.separate_head:
        return
    for key in SHARED_HEAD_KEYS:
        if key in ibot and merged.ibot[key] != merged.dino[key]:
            raise ConfigError(
                f"{source}: invalid value for 'ibot.{key}': {merged.ibot[key]}; with ibot.separate_head=false iBOT "
                f"uses the DINO head (dino.{key}={merged.dino[key]}): set ibot.separate_head=true or drop the key"
            )


def get_by_path(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def to_dict(cfg: Config) -> dict:
    """Plain-dict form of a config (JSON/YAML serialisable)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config atomically (every run saves the config it ran with)."""
    write_text_atomic(path, to_yaml(cfg))
