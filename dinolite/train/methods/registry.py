"""The method registry: one :class:`MethodSpec` per self-supervised method, selected by ``train.method``.

A spec declares, in one place, everything the trainer, the benchmarks, the monitor, evaluation and
export need to know about a method (docs/methods.md). The loop, checkpointing, eval and export never
branch on a method's name: they read the spec (train) or what train recorded from it in the checkpoint
(eval/export, through ``state.json``'s ``method`` record, so that they need not import train).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from dinolite.config import Config, ConfigError, ConfigSection, register_section
from dinolite.config.sections import register_cls_token_use
from dinolite.eval.online import FEATURES as EVAL_FEATURES
from dinolite.monitor.collapse_rules import CollapseRule

if TYPE_CHECKING:
    from dinolite.train.objective import SSLObjective

NETWORKS = ("teacher", "student")


@dataclass(frozen=True)
class MethodSpec:
    """What a method is, for every part of dinolite.

    Attributes:
        name: the ``train.method`` value.
        paper: one line naming the paper(s) the method follows.
        build_objective: ``cfg -> SSLObjective`` (student, optional teacher/target, heads, losses, and
            the method's schedules, which are pure functions of the iteration).
        build_transform: ``cfg -> transform``; ``transform(image, generator=None) -> sample dict`` (the
            views of one image).
        build_collate: ``cfg -> collate``; ``collate(samples, generator=None) -> batch dict`` (what
            ``objective(batch, iteration)`` reads).
        training_flops: ``cfg -> dict`` with at least ``flops_per_image`` (student forward + backward
            and teacher forward, nominal FLOPs = 2 x multiply-adds) and ``flops_per_batch``
            (``train.batch_size_per_gpu`` images); the benchmark's MFU uses it.
        eval_network: the network evaluated and exported by default: ``"teacher"`` (an EMA
            teacher/target encoder) or ``"student"`` (methods without one).
        head_names: ``cfg -> tuple`` of the student modules besides ``backbone`` that ``--with-heads``
            exports and continued pretraining loads (e.g. ``("dino_head",)``).
        demo_preset: the CPU demo preset (``demo`` for dinov2, ``demo_<method>`` for the others) the
            registry-wide tests train on.
        recipe_presets: further CPU presets of the method that follow another paper's recipe (dinov2:
            ``demo_dino``, ``demo_ibot``); the registry-wide tests train each of them as they train
            ``demo_preset``.
        monitor_embeddings: objective ``diagnostics`` key -> collapse-metric prefix
            (``collapse/<prefix>_{std,std_ratio,rankme,rankme_ratio}``).
        watchdog_thresholds: the method's default collapse rules for the watchdog (``CollapseRule`` values of
            dinolite.monitor.collapse_rules; used when ``monitor.method_thresholds``).
        monitor_means: objective ``diagnostics`` key -> metric name ``collapse/<name>``: the mean of a
            per-image scalar over the measured images (I-JEPA's per-image prediction error).
        eval_features: the global image feature the method trains, which the online evaluation reads:
            ``"cls"`` (the final-norm CLS token) or ``"avgpool"`` (the mean of the final-norm patch
            tokens: no I-JEPA loss reads the CLS token and its paper evaluates the average-pooled output).
        config_sections: the config sections the method reads besides the shared ones (its own, and a
            family's), each with the method's rules for it; registering the method registers them
            (:mod:`dinolite.config.sections`), and their rules run only when ``train.method`` is this method.
        reads_cls_token: whether the objective reads the backbone's CLS token (its loss or a head does);
            ``student.cls_token=false`` (a CLS-free encoder, the released I-JEPA's) is refused for such a method
            at config validation.
        student_temp: ``cfg -> float``, the temperature of the student softmax whose logits the objective's
            ``diagnostics`` hold as ``student_head_logits`` (the monitor's student-teacher cross-entropy);
            None for a method without one.
        extra_record: ``cfg -> dict``, more of what eval and export must know from ``state.json``'s method
            record (multi-student distillation: each student's architecture, ``students``); None: nothing more.
    """

    name: str
    paper: str
    build_objective: Callable[[Config], "SSLObjective"]
    build_transform: Callable[[Config], Callable[..., dict[str, Any]]]
    build_collate: Callable[[Config], Callable[..., dict[str, Any]]]
    training_flops: Callable[[Config], dict[str, Any]]
    eval_network: str
    head_names: Callable[[Config], tuple[str, ...]]
    demo_preset: str
    monitor_embeddings: Mapping[str, str]
    watchdog_thresholds: tuple[CollapseRule, ...] = field(default_factory=tuple)
    eval_features: str = "cls"
    monitor_means: Mapping[str, str] = field(default_factory=dict)
    config_sections: tuple[ConfigSection, ...] = ()
    student_temp: Callable[[Config], float] | None = None
    reads_cls_token: bool = True
    recipe_presets: tuple[str, ...] = ()
    extra_record: Callable[[Config], dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if self.eval_network not in NETWORKS:
            raise ValueError(f"method {self.name!r}: eval_network={self.eval_network!r}; expected one of {NETWORKS}")
        if self.eval_features not in EVAL_FEATURES:
            raise ValueError(
                f"method {self.name!r}: eval_features={self.eval_features!r}; expected one of {EVAL_FEATURES}"
            )

    def monitor_student_temp(self, cfg: Config) -> float:
        """What the collapse monitor divides ``student_head_logits`` by: the method's ``student_temp``; 1.0
        for a method without a student softmax (it emits no such logits, so the value is never used)."""
        return self.student_temp(cfg) if self.student_temp is not None else 1.0

    def record(self, cfg: Config) -> dict[str, Any]:
        """What a checkpoint stores about the method (``state.json``'s ``method``), for eval and export."""
        record = {"name": self.name, "eval_network": self.eval_network, "heads": list(self.head_names(cfg))}
        return {**record, **self.extra_record(cfg)} if self.extra_record is not None else record


_METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` and its config sections to the registry (at import of its module); a name is
    registered once."""
    if spec.name in _METHODS and _METHODS[spec.name] is not spec:
        raise ValueError(f"method {spec.name!r} is already registered")
    for section in spec.config_sections:
        register_section(section, spec.name)
    register_cls_token_use(spec.name, spec.reads_cls_token)
    _METHODS[spec.name] = spec
    return spec


def list_methods() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_METHODS)


def get_method(name: str) -> MethodSpec:
    """The spec registered as ``name``; a :class:`ConfigError` naming ``train.method`` otherwise."""
    try:
        return _METHODS[name]
    except KeyError:
        near = difflib.get_close_matches(str(name), list(_METHODS), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(
            f"invalid value for 'train.method': {name!r} is not a registered method{hint} "
            f"(registered: {', '.join(list_methods())})"
        ) from None
