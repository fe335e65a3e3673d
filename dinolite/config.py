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
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
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
    pretrained_weights: str = ""  # a DINOv2 .pth or dinolite export: initialises student and teacher


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
    decode_errors_max_fraction: float = 0.01  # above this fraction of skipped samples, stop


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
    compute_precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32
    log_every: int = 10
    checkpoint_every: int = 1250
    keep_last_checkpoints: int = 3
    device: str = "auto"  # auto | cpu | cuda
    # torch intra-op CPU threads per process (0: torch's default). Tiny models on a shared CPU run far
    # faster with 1: idle-spinning OpenMP threads starve when cores are oversubscribed.
    num_threads: int = 0


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


CHOICES: dict[str, tuple[str, ...]] = {
    "student.arch": ("vit_tiny", "vit_small", "vit_base", "vit_large", "vit_giant2"),
    "student.ffn_layer": ("mlp", "swiglu", "swiglufused"),
    "student.attention": ("auto", "sdpa", "xformers"),
    "optim.scaling_rule": ("sqrt_wrt_1024", "linear_wrt_1024", "none"),
    "train.centering": ("centering", "sinkhorn_knopp"),
    "train.compute_precision": ("auto", "bf16", "fp32"),
    "train.device": ("auto", "cpu", "cuda"),
    "distributed.sharding_strategy": ("full_shard", "shard_grad_op", "no_shard"),
    "distributed.backend": ("auto", "nccl", "gloo"),
    "monitor.action": ("warn", "stop"),
}


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
            near = difflib.get_close_matches(full, valid, n=1, cutoff=0.5)
            hint = f"; did you mean {near[0]!r}?" if near else f"; valid keys here: {', '.join(sorted(fields))}"
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


def _merge(base: DictConfig, other: DictConfig, source: str) -> DictConfig:
    _check_keys(other, Config, "", source)
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as exc:
        raise ConfigError(_format_omegaconf_error(exc, source)) from exc


def _format_omegaconf_error(exc: OmegaConfBaseException, source: str) -> str:
    path = getattr(exc, "full_key", None) or "?"
    expected = _schema_type(path)
    msg = str(exc).splitlines()[0]
    expected_txt = f", expected {_type_name(expected)}" if expected is not None else ""
    return f"{source}: invalid value for {path!r}{expected_txt}: {msg}"


def _schema_type(dotted: str) -> Any:
    """The declared type of a dotted key in the schema, or None when the path is not a plain field."""
    cls: Any = Config
    tp: Any = None
    for part in dotted.split("."):
        part = part.split("[")[0]
        if not dataclasses.is_dataclass(cls) or part not in _field_types(cls):
            return None
        tp = _field_types(cls)[part]
        cls = _unwrap_optional(tp)
    return tp


def _parse_overrides(overrides: Sequence[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot parse overrides {list(overrides)}: {exc}") from exc


def load_config(name_or_path: str | Path = "demo", overrides: Sequence[str] = ()) -> Config:
    """Load ``default.yaml`` <- preset (name in ``dinolite/configs/`` or a path) <- ``key=value`` overrides.

    Returns a validated :class:`Config`. Raises :class:`ConfigError` naming the key at fault.
    """
    schema = OmegaConf.structured(Config)
    merged = _merge(schema, _read_yaml(_config_dir() / "default.yaml"), "default.yaml")
    preset_path = _resolve_preset(name_or_path)
    if preset_path.name != "default.yaml" or preset_path.parent != _config_dir():
        merged = _merge(merged, _read_yaml(preset_path), str(preset_path))
    if overrides:
        merged = _merge(merged, _parse_overrides(overrides), "overrides")
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
