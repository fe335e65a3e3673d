"""Choose a recipe from one matrix run on several data sets (``dinolite-lab --matrix M --choose DIR DIR``).

The rule (docs/recipes.md): a grid point's gain on a set is its kNN top-1 minus the random-init network's
on that set; its *worst* gain is the smallest over the sets; the chosen point has the largest worst gain,
so a recipe has to hold on every set, and a point that is best on one set and loses on another is not
chosen. Points whose worst gain is within ``tie_margin`` kNN points of the best are tied, and a tie goes
to the point listed first in the matrix (recipe matrices list the paper's values first). A point not
finished on every set is shown and not chosen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

from dinolite.config import ConfigError
from dinolite.lab.evaluate import random_init_baseline_path
from dinolite.lab.matrix import BASELINES_FOLDER
from dinolite.lab.matrix_plan import LabPlan
from dinolite.lab.traces import read_result

TIE_MARGIN = 1.0  # kNN points: about 3 of the digits' 297 validation images


@dataclass(frozen=True)
class SetResult:
    """One data set's run of the matrix: each finished point's kNN top-1 and its random init's."""

    name: str
    knn: dict[str, float]
    random_init: dict[str, float]

    def gain(self, label: str) -> Optional[float]:
        if label not in self.knn or label not in self.random_init:
            return None
        return self.knn[label] - self.random_init[label]


@dataclass(frozen=True)
class Choice:
    labels: list[str]  # the matrix's points, in its order
    sets: list[SetResult]
    chosen: str
    tie_margin: float

    def worst_gain(self, label: str) -> Optional[float]:
        gains = [s.gain(label) for s in self.sets]
        return None if any(g is None for g in gains) else min(gains)  # type: ignore[type-var]


def read_set(plan: LabPlan, name: Optional[str] = None) -> SetResult:
    """The finished runs' kNN top-1 and each one's random-init kNN, read from ``plan.output_dir``."""
    knn, random_init = {}, {}
    for run in plan.runs:
        top1 = ((read_result(run.run_dir) or {}).get("knn") or {}).get("top1")
        if top1 is not None:
            knn[run.label] = float(top1)
        path = random_init_baseline_path(run.config, plan.output_dir / BASELINES_FOLDER, run.spec.features)
        if path.is_file():
            base = (json.loads(path.read_text()).get("knn") or {}).get("top1")
            if base is not None:
                random_init[run.label] = float(base)
    return SetResult(name or plan.output_dir.name, knn, random_init)


def choose(labels: list[str], sets: list[SetResult], tie_margin: float = TIE_MARGIN) -> Choice:
    """The point with the largest worst gain over ``sets``; ties (within ``tie_margin``) to the earliest."""
    if len(sets) < 2:
        raise ConfigError(f"--choose needs the matrix's runs on two or more data sets, got {len(sets)}")
    if tie_margin < 0:
        raise ConfigError(f"tie margin {tie_margin}: must be >= 0")
    draft = Choice(labels, sets, "", tie_margin)
    worst = {label: draft.worst_gain(label) for label in labels}
    complete = {label: w for label, w in worst.items() if w is not None}
    if not complete:
        raise ConfigError(
            "no grid point has a kNN and a random-init kNN on every set: "
            + "; ".join(f"{s.name}: {len(s.knn)} of {len(labels)} finished" for s in sets)
        )
    best = max(complete.values())
    chosen = next(label for label in labels if label in complete and complete[label] >= best - tie_margin)
    return Choice(labels, sets, chosen, tie_margin)


def _num(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return "not run"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def render_choice(choice: Choice) -> str:
    """A markdown table: each point's kNN and gain on every set, its worst gain, and the chosen point."""
    head = ["point"]
    for s in choice.sets:
        head += [f"{s.name} kNN", f"{s.name} gain"]
    head.append("worst gain")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in choice.labels:
        cells = [f"**{label}** (chosen)" if label == choice.chosen else label]
        for s in choice.sets:
            cells += [_num(s.knn.get(label)), _num(s.gain(label), signed=True)]
        cells.append(_num(choice.worst_gain(label), signed=True))
        lines.append("| " + " | ".join(cells) + " |")
    random_init = "; ".join(
        f"{s.name} {', '.join(sorted({f'{v:.1f}' for v in s.random_init.values()})) or 'not measured'}"
        for s in choice.sets
    )
    lines += [
        "",
        f"Random init kNN: {random_init}. Rule: the largest worst gain (the smallest gain over random init "
        f"across the sets); worst gains within {choice.tie_margin:g} kNN point{'' if choice.tie_margin == 1 else 's'} "
        "of the best are tied and go to the "
        f"point listed first in the matrix.",
        f"Chosen: {choice.chosen} (worst gain {_num(choice.worst_gain(choice.chosen), signed=True)}).",
    ]
    return "\n".join(lines)
