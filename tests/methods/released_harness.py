"""The harness that compares one method's step with its authors' released step (docs/faithfulness.md).

:class:`ReleasedStep` says how dinolite reproduces one fixture of ``tests/fixtures/released/``; the functions
build the method's objective from its demo preset and the fixture's settings, run its forward and backward (and
optionally one optimizer step) on the fixture's inputs, and list what lies outside the case's tolerances. The cases
are in ``released_cases.py``, the tests that read as the specification in ``test_released_steps.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from dinolite.config import Config, load_config
from dinolite.train.methods import get_method
from dinolite.train.objective import SSLObjective
from dinolite.train.optim import optimizer_for
from dinolite.train.schedules import TrainingSchedules
from dinolite.train.step import TrainingStep

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "released"
# The optimizer options that turn dinolite's per-layer learning rates off (the releases have none).
NO_LR_LAYERS = {"layerwise_decay": "1.0", "patch_embed_lr_mult": "1.0"}
TINY_VIT = re.compile(r"img (\d+), patch (\d+), width (\d+), depth (\d+), heads (\d+)")


@dataclass(frozen=True)
class Fixture:
    """A released step: its tensors by key and its settings (the metadata's ``settings`` JSON)."""

    name: str
    tensors: dict[str, torch.Tensor]
    settings: dict[str, Any]

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    def scalar(self, key: str) -> float:
        if key not in self.tensors:
            raise KeyError(f"{self.name}.safetensors has no {key!r}; it has {sorted(self.section('released/'))[:8]}")
        return float(self.tensors[key])


def read_fixture(name: str) -> Fixture:
    path = FIXTURES / f"{name}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"released golden step {path} is missing (docs/faithfulness.md says how it is made)")
    with safe_open(str(path), "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = handle.metadata()
    return Fixture(name, tensors, json.loads(metadata["settings"]))


def backbone_overrides(settings: Mapping[str, Any]) -> list[str]:
    """The ViT the release ran: its own keys (SimMIM, I-JEPA, MSN) or, for the ResNet releases that ran a
    tiny timm ViT instead, the ``backbone`` description the recording wrote."""
    if "embed_dim" in settings:
        size = settings.get("img_size", settings.get("crop_size"))
        values = (size, settings["patch_size"], settings["embed_dim"], settings["depth"], settings["num_heads"])
    else:
        match = TINY_VIT.search(settings["backbone"])
        if match is None:
            raise ValueError(f"the fixture's settings.backbone {settings['backbone']!r} names no ViT shape")
        values = tuple(int(v) for v in match.groups())
    size, patch, width, depth, heads = values
    return [
        f"crops.global_crops_size={size}",
        f"student.patch_size={patch}",
        f"student.embed_dim={width}",
        f"student.depth={depth}",
        f"student.num_heads={heads}",
    ]


@dataclass(frozen=True)
class ReleasedOptimizer:
    """How dinolite's optimizer step reproduces the release's (``released/after/*``).

    Attributes:
        options: ``settings -> {optim key: value}``, the release's optimizer recipe as ``optim.*`` options.
        values: ``fixture -> (lr, weight decay)`` the release's step used (dinolite's schedules are tested on
            their own; the step runs at these constant values, which the groups then multiply).
        needed: option -> another value (dinolite's): with it instead, the comparison fails (each is checked).
        rtol, atol: ``max |ours - released| <= rtol * max |released - before| + atol + 2 eps max |released|``
            per tensor: the step's movement sets the scale (a gradient difference moves a parameter by lr times
            it), ``atol`` covers gradients that are rounding noise, the last term two float32 roundings of the
            parameter itself (``eps`` = 1.2e-7).
        noise_floor: AdamW's first step moves each element by about lr x sign(gradient); elements whose
            released gradient is below this floor are rounding noise whose sign may differ, and are held to
            ``2 lr`` (their step's size) instead.
    """

    options: Callable[[Mapping[str, Any]], dict[str, str]]
    values: Callable[[Fixture], tuple[float, float]]
    needed: Mapping[str, str]
    rtol: float
    atol: float
    noise_floor: float = 0.0


@dataclass(frozen=True)
class ReleasedStep:
    """How dinolite reproduces one fixture.

    Attributes:
        fixture: the fixture's name (``tests/fixtures/released/<fixture>.safetensors``).
        preset: the demo preset the objective starts from.
        overrides: ``settings -> overrides``: the release's head widths and loss constants, and the options
            that select the release's behaviour (the point of the test).
        inputs: batch key -> fixture key.
        collate: ``(cfg, fixture, inputs) -> batch`` where the method's own collate makes part of the batch
            from the views (the part an option changes), the fixture's ``inputs`` the rest.
        loss: the fixture key of the loss dinolite's objective computes.
        terms: dinolite's term name -> fixture key.
        zero: dinolite parameters the release does not have, loaded as zeros where that is the release's
            forward (a reason each).
        dinolite_only: parameters with a gradient here and none in the release (a reason each).
        release_only: gradients the fixture stores of parameters dinolite's objective does not have (keys
            outside ``student.``, a reason each).
        computed: release weights that dinolite computes instead of storing (a reason each): not loaded; a test
            checks dinolite's value against them.
        renamed: dinolite parameter -> the release's key of a tensor the fixture stores under ``*_released_only/``
            (its weight, gradient and value after the step), compared as dinolite's parameter.
        loss_atol, grad_rtol, grad_atol: the tolerances (loss absolute; gradients relative to each tensor's max
            plus an absolute floor).
        optimizer: the release's optimizer step (``None``: the parameters after the step are not compared).
    """

    fixture: str
    preset: str
    overrides: Callable[[Mapping[str, Any]], list[str]]
    inputs: Mapping[str, str]
    collate: Callable[[Config, Fixture, dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    loss: str = "released/loss"
    terms: Mapping[str, str] = field(default_factory=dict)
    zero: Mapping[str, str] = field(default_factory=dict)
    dinolite_only: Mapping[str, str] = field(default_factory=dict)
    release_only: Mapping[str, str] = field(default_factory=dict)
    computed: Mapping[str, str] = field(default_factory=dict)
    renamed: Mapping[str, str] = field(default_factory=dict)
    loss_atol: float = 1e-6
    grad_rtol: float = 2e-5
    grad_atol: float = 1e-7
    optimizer: ReleasedOptimizer | None = None


def build(case: ReleasedStep, fixture: Fixture, extra: Sequence[str] = ()) -> tuple[SSLObjective, Config]:
    """The method's objective from its preset and the fixture's settings (plus ``extra`` overrides), with the
    release's weights loaded into the student (and into a target network's matching modules, as the releases
    start both alike)."""
    overrides = [*backbone_overrides(fixture.settings), *case.overrides(fixture.settings), *extra]
    cfg = load_config(case.preset, overrides)
    objective = get_method(cfg.train.method).build_objective(cfg)
    state = objective.state_dict()
    weights = {
        k: v
        for k, v in released_tensors(case, fixture, "weights").items()
        if k.startswith("student.") and k not in case.computed
    }
    unknown = sorted(set(weights) - set(state))
    if unknown:
        raise KeyError(f"{case.fixture}.safetensors weights {unknown[:5]} are not parameters of dinolite's objective")
    weights.update({key: torch.zeros_like(state[key]) for key in case.zero})
    for key, value in weights.items():
        for target in (key, "teacher." + key[len("student.") :]):
            if target in state:
                state[target] = value.clone()
    objective.load_state_dict(state)
    return objective.train(), cfg


def released_tensors(case: ReleasedStep, fixture: Fixture, section: str) -> dict[str, torch.Tensor]:
    """``fixture.section(section + "/")`` plus the ``section + "_released_only/"`` tensors the case renames."""
    tensors = fixture.section(f"{section}/")
    tensors.update({ours: fixture.tensors[f"{section}_released_only/{key}"] for ours, key in case.renamed.items()})
    return tensors


def fixture_batch(case: ReleasedStep, fixture: Fixture, cfg: Config) -> dict[str, torch.Tensor]:
    batch = {key: fixture.tensors[source] for key, source in case.inputs.items()}
    return case.collate(cfg, fixture, batch) if case.collate is not None else batch


def run_step(
    case: ReleasedStep, fixture: Fixture, extra: Sequence[str] = ()
) -> tuple[float, dict[str, float], dict[str, torch.Tensor]]:
    """Loss, terms and every student gradient of one forward and backward on the fixture's inputs (with
    ``extra`` overrides)."""
    torch.manual_seed(0)  # a method that draws numbers in its step draws them alike on every run
    objective, cfg = build(case, fixture, extra)
    batch = fixture_batch(case, fixture, cfg)
    output = objective(batch, 0)
    output.loss.backward()
    grads = {key: p.grad.detach() for key, p in objective.named_parameters() if p.grad is not None}
    return float(output.loss.detach()), {k: float(v.detach()) for k, v in output.terms.items()}, grads


def gradient_mismatches(case: ReleasedStep, released: Mapping[str, torch.Tensor], ours: Mapping[str, torch.Tensor]):
    """``(key, max abs difference, allowed)`` for every released gradient outside the tolerance."""
    bad = []
    for key, reference in sorted(released.items()):
        difference = float((ours[key].double() - reference.double()).abs().max())
        allowed = case.grad_rtol * float(reference.abs().max()) + case.grad_atol
        if difference > allowed:
            bad.append((key, difference, allowed))
    return bad


def run_optimizer_step(
    case: ReleasedStep, fixture: Fixture, instead: Mapping[str, str] | None = None
) -> dict[str, torch.Tensor]:
    """Every student parameter after one :class:`TrainingStep` (objective, backward, clipping, the optimizer
    the ``optim`` section builds) on the fixture's inputs at the release's lr and weight decay; ``instead``
    replaces some of the release's optimizer options."""
    assert case.optimizer is not None
    torch.manual_seed(0)
    options = {**case.optimizer.options(fixture.settings), **(instead or {})}
    objective, cfg = build(case, fixture, [f"optim.{key}={value}" for key, value in options.items()])
    lr, weight_decay = case.optimizer.values(fixture)
    schedules = TrainingSchedules(lr=lambda _: lr, weight_decay=lambda _: weight_decay, peak_lr=lr)
    step = TrainingStep(
        objective,
        optimizer_for(objective.student, cfg.optim),
        schedules,
        cfg.optim.clip_grad,
        clip_scope=cfg.optim.clip_grad_scope,
        unclipped=tuple(cfg.optim.unclipped_modules),
    )
    step(fixture_batch(case, fixture, cfg), 0)
    return {key: p.detach() for key, p in objective.named_parameters() if key.startswith("student.")}


def largest(values: torch.Tensor) -> float:
    return float(values.max()) if values.numel() else 0.0


def after_step_mismatches(case: ReleasedStep, fixture: Fixture, ours: Mapping[str, torch.Tensor]) -> list[tuple]:
    """``(key, max abs difference, allowed)`` for every released parameter after the step outside the tolerance
    (:class:`ReleasedOptimizer`)."""
    assert case.optimizer is not None
    lr, _ = case.optimizer.values(fixture)
    before, grads = released_tensors(case, fixture, "weights"), released_tensors(case, fixture, "released/grad")
    bad = []
    for key, released in sorted(released_tensors(case, fixture, "released/after").items()):
        if not key.startswith("student.") or key in case.dinolite_only:
            continue
        released, mine = released.double(), ours[key].double()
        movement = float((released - before[key].double()).abs().max())
        rounding = 2 * torch.finfo(torch.float32).eps * float(released.abs().max())
        allowed = case.optimizer.rtol * movement + case.optimizer.atol + rounding
        noise = grads[key].abs() < case.optimizer.noise_floor
        difference, noise_difference = (largest((mine - released).abs()[where]) for where in (~noise, noise))
        if difference > allowed or noise_difference > 2 * lr * (1 + 1e-3):
            bad.append((key, difference, allowed, noise_difference))
    return bad
