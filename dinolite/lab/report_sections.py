"""The lab report's optional sections: one way in for every part of the page a matrix may or may not ask for.

A section is Markdown (with its own heading, or a paragraph of the summary) and the figures it drew. Each
is made by a :data:`SectionBuilder` from the plan and the runs read back; a builder returns ``None`` when
its data is not there (the matrix did not ask for the measurement), so the page carries only the sections
its matrix measured. :mod:`dinolite.lab.report` lists the builders, in page order, and places every
section the same way: its text before the runs, its figures after the report's own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from dinolite.lab.matrix_plan import LabPlan
from dinolite.lab.run_reports import RunReport


@dataclass(frozen=True)
class ReportSection:
    """Markdown for the page and the figures ``(filename, caption)`` drawn for it into the report folder."""

    text: str
    figures: tuple[tuple[str, str], ...] = ()


# (plan, the runs read back, the report folder to draw into) -> the section, or None: nothing to show.
SectionBuilder = Callable[[LabPlan, list[RunReport], Path], Optional[ReportSection]]


def build_sections(
    builders: Sequence[SectionBuilder], plan: LabPlan, reports: list[RunReport], out_dir: Path
) -> list[ReportSection]:
    """Every builder's section, in the builders' order, without those that have nothing to show."""
    sections = (build(plan, reports, out_dir) for build in builders)
    return [section for section in sections if section is not None]
