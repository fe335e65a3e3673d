"""``student.init_scale``: a small initialisation, the starting point of stepwise learning.

Simon et al. 2023 ("On the Stepwise Nature of Self-Supervised Learning", ICML) train from a small
initialisation: the embedding starts near a point, and Barlow Twins, SimCLR and VICReg then learn its
eigendirections one at a time (a staircase in the loss, eigenvalues rising in sequence). This module scales
the weight matrices and kernels of the named student modules after the seeded build, method-agnostically:
any module of ``objective.student`` (``backbone``, ``projector``, ``predictor``, ``dino_head`` ...), and the
same module of the EMA copy (``objective.teacher``) where there is one, so a target that starts as a copy
of the student still does.

Only parameters named ``weight`` with two or more dimensions are scaled (Linear, Conv): biases, norm
affines, tokens and position tables keep their values, so the output of a scaled projector is its bias
plus a small varying part, i.e. a representation collapsed near a point.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dinolite.config import ConfigError


def _scaled_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in module.named_parameters() if name.rsplit(".", 1)[-1] == "weight" and p.dim() >= 2]


def scaled_parameter_names(module: nn.Module) -> list[str]:
    """The parameters :func:`scale_initial_weights` multiplies: named ``weight`` with 2+ dimensions."""
    return [name for name, _ in _scaled_parameters(module)]


def scale_initial_weights(objective: nn.Module, factor: float, modules: Sequence[str]) -> None:
    """Multiply the weight matrices of ``objective.student[name]`` (and ``objective.teacher[name]``, when the
    objective has that EMA copy) by ``factor`` for every ``name`` in ``modules``.

    ``factor == 1`` returns at once (the build stays bit-identical). A name the student lacks is an error
    naming ``student.init_scale_modules`` and the modules there are.
    """
    if factor == 1.0:
        return
    if factor <= 0:
        raise ConfigError(f"invalid value for 'student.init_scale': {factor}; must be > 0")
    student = getattr(objective, "student", None)
    if not isinstance(student, nn.ModuleDict):
        raise ConfigError(f"student.init_scale={factor}: {type(objective).__name__} has no student modules to scale")
    teacher = getattr(objective, "teacher", None)
    for name in modules:
        if name not in student:
            raise ConfigError(
                f"invalid value in 'student.init_scale_modules': {name!r}; this method's student has "
                f"{', '.join(sorted(student.keys()))}"
            )
        targets = [student[name]]
        if isinstance(teacher, nn.ModuleDict) and name in teacher:
            targets.append(teacher[name])
        with torch.no_grad():
            for module in targets:
                for _, parameter in _scaled_parameters(module):
                    parameter.mul_(factor)
