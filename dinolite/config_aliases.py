"""DINOv2's config keys, read by dinolite: DINOv2 users bring their YAML files and overrides unchanged.

dinolite's key names are DINOv2's wherever the two agree (``student.*``, ``dino.*``, ``ibot.*``,
``teacher.*``, ``optim.*``, ``crops.*``). The 36 other keys of DINOv2's ``ssl_default_config.yaml`` are
listed in :data:`ALIASES`, each with the mapping stated (with them, two keys dinolite itself used to have,
``origin="dinolite"``: configs and run folders written before the key moved keep loading):

- **renamed**: the value goes to a dinolite key (``train.OFFICIAL_EPOCH_LENGTH`` ->
  ``train.iterations_per_epoch``), converted where the spelling differs (``SHARD_GRAD_OP`` ->
  ``shard_grad_op``; ``ImageNet:split=TRAIN:root=R`` -> the image folder ``R/train``);
- **no effect**: DINOv2 itself does not act on it, or dinolite does the same thing another way (named);
  a notice says so when such a key is read;
- **refused**: the value asks for something dinolite does not do; the error names the key and why.

Several DINOv2 keys may land on one dinolite key (the six ``compute_precision.*.*.sharding_strategy``);
they must agree, and a dinolite key given in the same file must agree with them too. One exception: a
config saved before the shared ``ema`` section (every run folder's ``config.yaml`` holds every section)
names both former homes of the EMA momentum, ``teacher.*`` and ``joint_embedding.*``; there the home that
the file's ``train.method`` read is taken and the other dropped (:func:`_one_ema_home`).

:func:`suggest` is the "did you mean" of unknown keys: it tries this table before dinolite's own keys, so
``train.num_worker`` points at ``data.num_workers`` (DINOv2's ``train.num_workers``), not ``train.num_threads``.
"""

from __future__ import annotations

import difflib
import fnmatch
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from omegaconf import DictConfig, OmegaConf


class AliasError(ValueError):
    """A DINOv2 key that dinolite cannot honour, or DINOv2 keys that disagree; names the key and why."""


class DINOv2KeyNotice(UserWarning):
    """A DINOv2 key was read that has no effect in dinolite (the notice says what dinolite does instead)."""


@dataclass(frozen=True)
class Alias:
    ours: Optional[str]  # the dinolite key it sets; None: no effect (or refused through ``convert``)
    meaning: str  # the mapping, stated (shown in notices, errors and docs/interop.md)
    convert: Optional[Callable[[Any, str], Any]] = None  # (value, DINOv2 key) -> our value; raises AliasError
    origin: str = "DINOv2"  # whose key it is: DINOv2's, or "dinolite" for a key dinolite itself moved


_SHARDING = {
    "FULL_SHARD": "full_shard",
    "SHARD_GRAD_OP": "shard_grad_op",
    "NO_SHARD": "no_shard",
    "HYBRID_SHARD": "hybrid_shard",
}
_PRECISION = {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


def _sharding(value: Any, key: str) -> str:
    if value not in _SHARDING:
        raise AliasError(
            f"{key}={value!r}: dinolite shards with FSDP2 as {' / '.join(_SHARDING)} "
            "(HYBRID_SHARD and the other FSDP1 strategies have no equivalent)"
        )
    return _SHARDING[value]


def _precision(value: Any, key: str) -> str:
    if str(value) not in _PRECISION:
        raise AliasError(f"{key}={value!r}: expected one of fp16, bf16, fp32")
    return _PRECISION[str(value)]


def _dataset_path(value: Any, key: str) -> list[str]:
    """``ImageNet:split=TRAIN:root=R[:extra=E]`` -> ``[R/train]`` (DINOv2 reads ImageNet as an image folder
    with class subfolders, as dinolite does). Other dataset strings are kept: the loader then names them."""
    text = str(value)
    name, *options = text.split(":")
    fields = dict(option.split("=", 1) for option in options if "=" in option)
    if name == "ImageNet" and "root" in fields:
        split = {"TRAIN": "train", "VAL": "val", "TEST": "test"}.get(fields.get("split", "TRAIN").upper())
        if split is None:
            raise AliasError(f"{key}={text!r}: unknown ImageNet split {fields.get('split')!r}")
        return [f"{fields['root'].rstrip('/')}/{split}"]
    return [text]


def _model_weights(value: Any, key: str) -> None:
    if value:
        raise AliasError(
            f"{key}={value!r}: DINOv2 restores a full training checkpoint from this path; dinolite resumes from the "
            "checkpoints in train.output_dir (start from a backbone with student.pretrained_weights instead)"
        )
    return None


_MODULES = "compute_precision.*.*."
ALIASES: dict[str, Alias] = {
    # train
    "train.OFFICIAL_EPOCH_LENGTH": Alias(
        "train.iterations_per_epoch", "iterations per 'epoch' (schedules count in them)"
    ),
    "train.num_workers": Alias("data.num_workers", "data loading processes per GPU"),
    "train.dataset_path": Alias(
        "data.source", "the training images: ImageNet:split=S:root=R becomes the image folder R/<s>", _dataset_path
    ),
    "train.saveckp_freq": Alias(
        None,
        "DINOv2's trainer does not read it (it checkpoints every 3 epochs); dinolite checkpoints every "
        "train.checkpoint_every iterations",
    ),
    "train.cache_dataset": Alias(None, "DINOv2's dataset-metadata cache; dinolite streams shards or folders"),
    # student / optim
    "student.block_chunks": Alias(
        None, "FSDP1 wrapping granularity in DINOv2; dinolite's FSDP2 shards every block (same computation)"
    ),
    "optim.lr": Alias(None, "overwritten at start in DINOv2 too; the lr is optim.base_lr scaled by optim.scaling_rule"),
    # teacher: the EMA momentum is the shared ema section (DINOv2's teacher, MSN, I-JEPA, BYOL)
    "teacher.momentum_teacher": Alias("ema.momentum", "the EMA teacher's momentum at iteration 0 (every method's EMA)"),
    "teacher.final_momentum_teacher": Alias(
        "ema.final_momentum", "the EMA teacher's momentum at the end of the run (every method's EMA)"
    ),
    "joint_embedding.target_momentum": Alias(
        "ema.momentum", "BYOL's EMA target momentum at iteration 0, now the shared ema section", origin="dinolite"
    ),
    "joint_embedding.final_target_momentum": Alias(
        "ema.final_momentum", "BYOL's EMA target momentum at the end of the run, now ema", origin="dinolite"
    ),
    # MODEL / evaluation
    "MODEL.WEIGHTS": Alias(None, "a training checkpoint to restore (empty: none)", _model_weights),
    "evaluation.eval_period_iterations": Alias(
        None,
        "DINOv2 saves a teacher for evaluation every N iterations; dinolite evaluates any checkpoint "
        "(dinolite-knn --backbone RUN_DIR)",
    ),
    # compute_precision: one policy per module in DINOv2, one for the model in dinolite
    "compute_precision.grad_scaler": Alias(
        "train.grad_scaler", "a gradient scaler for fp16 (dinolite uses one whenever the precision is fp16)"
    ),
    _MODULES + "sharding_strategy": Alias(
        "distributed.sharding_strategy",
        "FSDP sharding (FULL_SHARD / SHARD_GRAD_OP / NO_SHARD / HYBRID_SHARD); the same for every module in dinolite",
        _sharding,
    ),
    _MODULES + "mixed_precision.param_dtype": Alias(
        "train.compute_precision",
        "the compute dtype (fp16 / bf16 / fp32); the same for every module in dinolite",
        _precision,
    ),
    _MODULES + "mixed_precision.reduce_dtype": Alias(
        None, "dinolite all-reduces gradients in fp32 (what DINOv2 uses for its student heads)"
    ),
    _MODULES + "mixed_precision.buffer_dtype": Alias(None, "buffers stay fp32 in dinolite (DINOv2's setting)"),
}


def lookup(key: str) -> Optional[tuple[str, Alias]]:
    """``(table key, Alias)`` for a dotted DINOv2 key (exact, or a ``compute_precision.*`` pattern)."""
    if key in ALIASES:
        return key, ALIASES[key]
    for pattern, alias in ALIASES.items():
        if "*" in pattern and fnmatch.fnmatchcase(key, pattern):
            return pattern, alias
    return None


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


# The two former homes of the EMA momentum, and the methods that read the joint-embedding one (with
# joint_embedding.target=ema) before the shared ema section; every other method read teacher.*.
_TEACHER_HOME = ("teacher.momentum_teacher", "teacher.final_momentum_teacher")
_TARGET_HOME = ("joint_embedding.target_momentum", "joint_embedding.final_target_momentum")
_TARGET_HOME_METHODS = ("simclr", "barlow_twins", "simsiam", "byol", "directclr")


def _one_ema_home(flat: dict[str, Any]) -> dict[str, Any]:
    """A saved config (it names ``train.method``) holding both former EMA homes keeps the one its method read."""
    both = any(k in flat for k in _TEACHER_HOME) and any(k in flat for k in _TARGET_HOME)
    if not both or "train.method" not in flat:
        return flat
    unread = _TEACHER_HOME if flat["train.method"] in _TARGET_HOME_METHODS else _TARGET_HOME
    return {key: value for key, value in flat.items() if key not in unread}


# DINOv2's six modules with their own FSDP policy (compute_precision.<network>.<module>.*).
MODULE_POLICIES = tuple(
    f"{net}.{mod}" for net in ("teacher", "student") for mod in ("backbone", "dino_head", "ibot_head")
)
_ONE_FOR_ALL = ("sharding_strategy", "mixed_precision.param_dtype")


def _notice_partial_module_policies(flat: dict[str, Any], source: str) -> None:
    """A ``compute_precision.<net>.<module>.*`` key given for some of DINOv2's six modules but not all sets
    dinolite's one value for the whole model: say so, one line per key given, naming what it becomes."""
    for setting in _ONE_FOR_ALL:
        given = {
            m: flat[f"compute_precision.{m}.{setting}"]
            for m in MODULE_POLICIES
            if f"compute_precision.{m}.{setting}" in flat
        }
        if not given or len(given) == len(MODULE_POLICIES):
            continue
        alias = ALIASES[_MODULES + setting]
        for module, value in given.items():
            ours = alias.convert(value, module) if alias.convert else value
            warnings.warn(
                f"{source}: compute_precision.{module}.{setting}={value} sets {alias.ours}={ours} for every "
                f"module, not only {module}: dinolite has one value for the whole model (the other "
                f"{len(MODULE_POLICIES) - len(given)} of DINOv2's 6 modules were not given)",
                DINOv2KeyNotice,
                stacklevel=5,
            )


def translate(node: DictConfig, source: str) -> DictConfig:
    """``node`` with DINOv2's keys replaced by dinolite's (see the module doc) and a string ``data.source``
    made a one-element list. Raises :class:`AliasError` naming ``source`` and the key."""
    if not isinstance(node, DictConfig):
        return node
    flat = _one_ema_home(_flatten(OmegaConf.to_container(node, resolve=False)))
    string_source = isinstance(flat.get("data.source"), str)
    if not string_source and not any(lookup(key) for key in flat):
        return node
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}  # our key -> the key of this file that set it
    for key, value in flat.items():
        found = lookup(key)
        if found is None:
            target, new = key, ([value] if key == "data.source" and isinstance(value, str) else value)
        else:
            _, alias = found
            try:
                new = alias.convert(value, key) if alias.convert else value
            except AliasError as exc:
                raise AliasError(f"{source}: {exc}") from None
            if alias.ours is None:
                warnings.warn(
                    f"{source}: DINOv2 key {key} has no effect in dinolite: {alias.meaning}",
                    DINOv2KeyNotice,
                    stacklevel=4,
                )
                continue
            target = alias.ours
        if target in out and out[target] != new:
            raise AliasError(
                f"{source}: {origin[target]}={out[target]!r} and {key}={value!r} both set {target} "
                "and disagree (dinolite has one value for it)"
            )
        out[target], origin[target] = new, key
    _notice_partial_module_policies(flat, source)
    rebuilt = OmegaConf.create({})
    for key, value in out.items():
        OmegaConf.update(rebuilt, key, value, force_add=True)
    return rebuilt


def suggest(full: str, valid: Iterable[str]) -> Optional[str]:
    """The nearest key to an unknown ``full`` key: a DINOv2 alias first (answered with the dinolite key it
    maps to, or its stated meaning), then dinolite's own keys."""
    exact_aliases = [k for k in ALIASES if "*" not in k]
    near = difflib.get_close_matches(full, exact_aliases, n=1, cutoff=0.75)
    if near:
        alias = ALIASES[near[0]]
        if alias.ours is not None:
            return f"{alias.ours!r} ({alias.origin}'s {near[0]})"
        return f"{near[0]!r} (a DINOv2 key dinolite accepts without effect: {alias.meaning})"
    near = difflib.get_close_matches(full, list(valid), n=1, cutoff=0.5)
    return repr(near[0]) if near else None


# --------------------------------------------------------------------------------------------------
# DINOv2 merges every config file over its ssl_default_config.yaml; dinolite merges over its own
# default.yaml. The two agree on every key but these (facebookresearch/dinov2 at b8931f7,
# dinov2/configs/ssl_default_config.yaml: every compute_precision.*.*.sharding_strategy is SHARD_GRAD_OP
# and every mixed_precision.param_dtype fp16). A DINOv2 file is read over these values, as DINOv2 would.
# --------------------------------------------------------------------------------------------------
DINOV2_DEFAULTS: dict[str, tuple[Any, str]] = {
    "train.compute_precision": ("fp16", "compute_precision.*.*.mixed_precision.param_dtype: fp16"),
    "distributed.sharding_strategy": ("shard_grad_op", "compute_precision.*.*.sharding_strategy: SHARD_GRAD_OP"),
}


def is_dinov2_file(node: DictConfig) -> bool:
    """A file written for DINOv2: it uses at least one of DINOv2's own key names (``train.dataset_path``,
    ``student.block_chunks``, ``compute_precision.*``, ...) that dinolite spells otherwise."""
    if not isinstance(node, DictConfig):
        return False
    flat = _flatten(OmegaConf.to_container(node, resolve=False))
    return any(found is not None and found[1].origin == "DINOv2" for found in map(lookup, flat))


def dinov2_defaults(given: Iterable[str]) -> dict[str, Any]:
    """DINOv2's default for each key of :data:`DINOV2_DEFAULTS` not in ``given`` (dotted dinolite keys)."""
    return {key: value for key, (value, _) in DINOV2_DEFAULTS.items() if key not in set(given)}


# DINOv2's data set strings (dinov2/data/loaders.py: NAME[:root=R][:extra=E][:split=S], NAME ImageNet or
# ImageNet22k): class-specific loaders over its own metadata files, not paths.
_DINOV2_DATASETS = ("ImageNet", "ImageNet22k")


def dinov2_dataset_hint(source: str) -> Optional[str]:
    """What to pass instead when ``source`` is a DINOv2 data set string rather than a path; None otherwise."""
    name, _, options = str(source).partition(":")
    if name not in _DINOV2_DATASETS or (options and "=" not in options):
        return None
    if name == "ImageNet":
        return (
            f"{source!r} is DINOv2's ImageNet data set name, not a path; dinolite reads ImageNet as the image "
            "folder with one subfolder per class: pass train.dataset_path=ImageNet:split=TRAIN:root=/path/to/imagenet "
            "(read as /path/to/imagenet/train) or data.source=[/path/to/imagenet/train], or webdataset shards "
            "written by dinolite-shards"
        )
    return (
        f"{source!r} is DINOv2's ImageNet-22k data set name (its loader reads a tarball per class with DINOv2's "
        "own metadata files under extra=), not a path; pass data.source=[/path/to/imagenet22k] (an image folder) "
        "or webdataset shards written from it by dinolite-shards (data.source='[/shards/in22k-{000000..NNNNNN}.tar]')"
    )
