"""What a finished (or interrupted) run left on disk, read back as comparable metric traces.

Nothing here instruments training: the lab reads each run's ``metrics.jsonl`` (the loop's training
records and the collapse monitor's records), its ``config.yaml``, and the lab's own
``lab_result.json`` (end-of-run evaluation and checkpoint spectra, :mod:`dinolite.lab.evaluate`).

Comparable across methods: each method's monitor reports the embeddings it has under its own prefix;
:data:`CHANNELS` maps them onto three channels, in order of preference:

- ``backbone``: the CLS embedding of the evaluated network (EMA teacher / target first, else the
  student): ``collapse/backbone_*``, then ``collapse/student_backbone_*``; every method has it;
- ``projector``: the output of the projector / head (``collapse/projector_*``, then DINO's teacher
  head logits ``collapse/head_*``);
- ``predictor``: the predictor's output (SimSiam, BYOL: ``collapse/predictor_*``). Chen & He's Fig. 2
  measures the std on the projector output ``z``; a projector ending in BatchNorm without affine keeps
  that std up, and the std -> 0 of their figure then shows on the predictor, which has no BatchNorm after it.

Each channel has ``std`` (SimSiam's std of the L2-normalised embedding), ``std_ratio`` (std x sqrt(d):
1 for an isotropic embedding, 0 when collapsed, whatever the width), ``rankme`` and ``rankme_ratio``
(RankMe / min(N, D)), and, from runs logged since they exist, ``alpha_req`` (Agrawal et al. 2022) and
``lidar`` (Thilak et al. 2023; for methods whose objective gives the views of an embedding). Teacher entropies and the student-teacher KL exist only for methods with a
teacher distribution (DINO, MSN); the loss exists for every method.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from dinolite.config import Config, ConfigError, load_config
from dinolite.io import write_json_atomic
from dinolite.monitor.collapse import metric_names
from dinolite.monitor.watchdog import Watchdog
from dinolite.train.methods import get_method

METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "lab_result.json"
CHANNELS: dict[str, tuple[str, ...]] = {
    "backbone": ("collapse/backbone", "collapse/student_backbone"),
    "projector": ("collapse/projector", "collapse/head"),
    "predictor": ("collapse/predictor",),
}
CHANNEL_STATS = ("std", "std_ratio", "rankme", "rankme_ratio", "alpha_req", "lidar")
TEACHER_METRICS = {
    "teacher_entropy_norm": "collapse/teacher_entropy_norm",
    "teacher_mean_entropy_norm": "collapse/teacher_mean_entropy_norm",
    "student_teacher_kl": "collapse/student_teacher_kl",
    "teacher_prototypes_used": "collapse/teacher_prototypes_used",  # partial prototype collapse
}
COLLAPSE_RECORD_KEY = "collapse/num_samples"  # present in every collapse-monitor record


@dataclass
class Series:
    iterations: list[int]
    values: list[float]

    def __bool__(self) -> bool:
        return bool(self.iterations)

    @property
    def last(self) -> float:
        return self.values[-1]


@dataclass
class RunTrace:
    """Per-iteration records of one run (later records of an iteration win: a resumed run re-logs the
    iterations after its checkpoint), and which monitor prefix each channel resolved to."""

    records: dict[int, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def from_records(cls, records: list[dict]) -> "RunTrace":
        merged: dict[int, dict[str, float]] = {}
        for record in records:
            it = int(record["iteration"])
            merged.setdefault(it, {}).update({k: v for k, v in record.items() if k != "iteration"})
        return cls(dict(sorted(merged.items())))

    def series(self, key: str) -> Series:
        its, vals = [], []
        for it, record in self.records.items():
            value = record.get(key)
            if isinstance(value, (int, float)):
                its.append(it)
                vals.append(float(value))
        return Series(its, vals)

    def channel_prefix(self, channel: str) -> Optional[str]:
        """The first monitor prefix of ``channel`` this run logged (None: the method has no such output)."""
        for prefix in CHANNELS[channel]:
            if self.series(f"{prefix}_std"):
                return prefix
        return None

    def channel(self, channel: str, stat: str) -> Series:
        prefix = self.channel_prefix(channel)
        return self.series(f"{prefix}_{stat}") if prefix else Series([], [])

    def teacher(self, name: str) -> Series:
        return self.series(TEACHER_METRICS[name])

    def loss(self) -> Series:
        return self.series("loss")

    def collapse_records(self) -> list[tuple[int, dict[str, float]]]:
        """The monitor's measurements, in iteration order (what the watchdog saw)."""
        return [
            (it, {k: v for k, v in r.items() if k.startswith("collapse/")})
            for it, r in self.records.items()
            if COLLAPSE_RECORD_KEY in r
        ]

    @property
    def last_iteration(self) -> int:
        return max(self.records) if self.records else 0


def read_trace(run_dir: Path) -> RunTrace:
    """``run_dir/metrics.jsonl`` as a :class:`RunTrace` (empty when the run has not logged yet).

    A torn last line (the run was killed mid-write) is ignored; any other unreadable line is an error
    naming the file and line.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return RunTrace()
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not a JSON record ({exc})") from None
    return RunTrace.from_records(records)


def read_run_config(run_dir: Path) -> Optional[Config]:
    """The config the run trained with (its ``config.yaml``), or None before the run started."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    try:
        return load_config(path)  # a file like any config: no resolver, no pipe: without the user's grant
    except ConfigError as exc:
        raise ConfigError(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from None


@dataclass(frozen=True)
class WatchdogReplay:
    fired_at: Optional[int]
    message: str


def replay_watchdog(config: Config, trace: RunTrace) -> WatchdogReplay:
    """The run's own watchdog fed the logged measurements in order: built as training builds it (the
    method's default rules when ``monitor.method_thresholds``, then ``monitor.thresholds``).

    The watchdog is a pure function of the measurement sequence, so this is the verdict training gave
    (the lab trains with ``monitor.action=warn``: the first alert is where a ``stop`` run would have
    stopped).
    """
    silent = logging.getLogger("dinolite.lab.watchdog_replay")
    silent.addHandler(logging.NullHandler())
    silent.propagate = False
    method = get_method(config.train.method)
    monitor = dataclasses.replace(config.monitor, action="warn")  # alerts are collected, never raised
    watchdog = Watchdog.from_config(
        monitor, silent, method.watchdog_thresholds, metric_names(method.monitor_embeddings, method.monitor_means)
    )
    for iteration, metrics in trace.collapse_records():
        alerts = watchdog.check(iteration, metrics)
        if alerts:
            return WatchdogReplay(iteration, "; ".join(a.message() for a in alerts))
    if not watchdog.thresholds:
        return WatchdogReplay(None, "no watchdog thresholds configured")
    return WatchdogReplay(None, "never fired")


def read_result(run_dir: Path) -> Optional[dict]:
    path = Path(run_dir) / RESULT_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def write_result(run_dir: Path, result: dict) -> None:
    write_json_atomic(Path(run_dir) / RESULT_FILE, result)


def finite(value: Optional[float]) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)
