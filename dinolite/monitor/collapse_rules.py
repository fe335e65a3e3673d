"""One vocabulary of collapse rules, read by every judge of collapse in dinolite.

Three judges read the same rules, each on its own input:

- the watchdog during training (:mod:`dinolite.monitor.watchdog`): a live metrics dict per measurement,
  ``after_iteration`` and ``patience``;
- the visualiser's verdict on a backbone's features (:mod:`dinolite.eval.collapse_verdict`): the
  statistics of one feature matrix, one measurement;
- the collapse lab's verdict on a run (:mod:`dinolite.lab.verdict`): the logged series, a condition
  counting only when it holds over the last ``settle_fraction`` of the run (:func:`settled_since`).

A :class:`CollapseRule` is a statistic (``stat``: ``std_ratio``, ``rankme``, ``teacher_entropy_norm``, ...)
read on a channel (the embedding a monitor metric prefix names: ``backbone``, ``student_backbone``,
``projector``, ``head``, ``predictor``; none for a statistic of the method's output distribution such as
the teacher entropies), the range it must stay in (``min`` / ``max``: a value below ``min`` or above
``max`` crosses the rule), the collapse *mode* a crossing indicates (which fixes the *kind*: complete or
dimensional collapse), and for a live watch ``after_iteration`` and ``patience``. Its monitor metric is
``collapse/<channel>_<stat>`` (``collapse/<stat>`` without a channel).

The default threshold of every mode is defined here and nowhere else; a method's watchdog rules
(``MethodSpec.watchdog_thresholds``) and a lab matrix's ``verdict:`` section replace one as data. Why
each default is where it is, and the runs that place it: docs/monitor.md#collapse-rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Mapping, Optional, Sequence

# The kinds of verdict.
HEALTHY, COMPLETE, DIMENSIONAL = "healthy", "complete collapse", "dimensional collapse"

# The collapse modes a rule can indicate, and the kind each one is.
CONSTANT_OUTPUT = "constant output"  # every image gets the same embedding (SimSiam Fig. 2: std -> 0)
ONE_DIRECTION = "one direction"  # embeddings on one line (RankMe -> 1), e.g. behind a BatchNorm
ONE_PROTOTYPE = "one prototype"  # the whole batch on one prototype (DINO without centering)
UNIFORM_OUTPUT = "uniform output"  # every output flat over the prototypes (DINO without sharpening)
PREDICTABLE_TARGET = "predictable target"  # the target is predicted from positions alone (I-JEPA)
LOW_RANK = "low rank"  # embeddings that differ but span few directions (Jing et al. 2021)
FEWER_DIMENSIONS = "fewer dimensions than reference"  # RankMe well below a reference run's
MODE_KINDS: dict[str, str] = {
    CONSTANT_OUTPUT: COMPLETE,
    ONE_DIRECTION: COMPLETE,
    ONE_PROTOTYPE: COMPLETE,
    UNIFORM_OUTPUT: COMPLETE,
    PREDICTABLE_TARGET: COMPLETE,
    LOW_RANK: DIMENSIONAL,
    FEWER_DIMENSIONS: DIMENSIONAL,
}

# Statistics (dinolite.monitor.collapse logs them; the visualiser computes the first three itself).
STD_RATIO, RANKME, RANKME_RATIO = "std_ratio", "rankme", "rankme_ratio"
TEACHER_ENTROPY_NORM = "teacher_entropy_norm"
TEACHER_MEAN_ENTROPY, TEACHER_MEAN_ENTROPY_NORM = "teacher_mean_entropy", "teacher_mean_entropy_norm"
RANKME_OF_REFERENCE = "rankme_of_reference"  # RankMe / the reference run's at the same iterations (lab)
ALPHA_REQ = "alpha_req"  # power-law decay of the covariance spectrum (Agrawal et al. 2022)
LIDAR = "lidar"  # smooth rank of the LDA matrix over the views of each image (Thilak et al. 2023)
# the statistics of a channel (LiDAR only where the objective gives the views of the embedding)
EMBEDDING_STATS = ("std", STD_RATIO, RANKME, RANKME_RATIO, ALPHA_REQ, LIDAR)
STAT_LABELS: dict[str, str] = {
    STD_RATIO: "std x sqrt(d)",
    RANKME: "RankMe",
    RANKME_RATIO: "RankMe/min(N,D)",
    TEACHER_ENTROPY_NORM: "H(teacher)/ln K",
    TEACHER_MEAN_ENTROPY: "H(mean teacher)",
    TEACHER_MEAN_ENTROPY_NORM: "H(mean teacher)/ln K",
    RANKME_OF_REFERENCE: "RankMe / the reference's",
    ALPHA_REQ: "alpha-ReQ",
    LIDAR: "LiDAR",
}

# The default thresholds: one per mode, read by the watchdog's method rules, the visualiser and the lab.
CONSTANT_OUTPUT_STD_RATIO = 0.1  # std x sqrt(d) of the L2-normalised embedding below
ONE_DIRECTION_RANKME = 1.5  # RankMe below: one direction (RankMe is >= 1, and 2 for two directions)
ONE_PROTOTYPE_ENTROPY_NORM = 0.1  # batch-mean teacher entropy / ln K below
UNIFORM_ENTROPY_NORM = 0.98  # per-image teacher entropy / ln K above
LOW_RANK_RANKME_RATIO = 0.05  # RankMe / min(N, D) below (and not complete)
FEWER_DIMENSIONS_FRACTION = 0.5  # RankMe below this fraction of the reference run's
SETTLE_FRACTION = 0.25  # a trace's condition must hold over this last fraction of the run

# Where a crossing was: below min, above max, or not a number at all.
BELOW, ABOVE, NOT_FINITE = "min", "max", "finite"


@dataclass(frozen=True)
class CollapseRule:
    """A statistic of one channel, the range it must stay in, and the collapse mode a crossing shows.

    With ``family=""`` the ``stat`` is a whole metric name of another family (``loss/total``): a user's
    watchdog rule on a metric the collapse monitor does not make.
    """

    stat: str
    min: Optional[float] = None  # crossed below
    max: Optional[float] = None  # crossed above
    channel: str = ""  # the embedding the statistic is read on; "" for the method's output distribution
    mode: str = ""  # the collapse mode a crossing indicates ("" for a rule that names none)
    after_iteration: int = 0  # live watch: measurements before this iteration are not judged
    patience: int = 1  # live watch: crossings in a row before acting
    family: str = "collapse"  # the metric family: collapse/<channel>_<stat>; "" for a foreign metric

    @classmethod
    def from_metric(
        cls,
        metric: str,
        min: Optional[float] = None,
        max: Optional[float] = None,
        after_iteration: int = 0,
        patience: int = 1,
    ) -> "CollapseRule":
        """A rule on a logged metric name (a config's ``monitor.thresholds`` entry): ``collapse/<channel>_
        <stat>`` is split into channel and statistic, and the mode is the one the statistic and bound show."""
        if not metric.startswith("collapse/"):
            return cls(metric, min, max, "", "", after_iteration, patience, family="")
        channel, stat = split_metric(metric)
        return cls(stat, min, max, channel, infer_mode(stat, min, max), after_iteration, patience)

    @property
    def metric(self) -> str:
        """The monitor metric the rule reads (``collapse/backbone_rankme``)."""
        if not self.family:
            return self.stat
        name = f"{self.channel}_{self.stat}" if self.channel else self.stat
        return f"{self.family}/{name}"

    @property
    def kind(self) -> str:
        """complete or dimensional collapse (empty for a rule without a mode)."""
        return MODE_KINDS.get(self.mode, "")

    def crossing(self, value: float) -> Optional[tuple[str, float]]:
        """``(bound, threshold)`` when the value crosses the rule: below ``min``, above ``max``, or not
        finite (``(NOT_FINITE, nan)``: divergence, never health); None inside the range."""
        if not math.isfinite(value):
            return NOT_FINITE, math.nan
        if self.min is not None and value < self.min:
            return BELOW, self.min
        if self.max is not None and value > self.max:
            return ABOVE, self.max
        return None

    def holds(self, value: float) -> bool:
        """The collapse condition: a finite value below ``min`` or above ``max``. A non-finite value is
        divergence, which the judges report apart from collapse."""
        crossed = self.crossing(value)
        return crossed is not None and crossed[0] != NOT_FINITE

    def condition(self, subject: str = "") -> str:
        """The condition in words, e.g. ``std x sqrt(d) < 0.1`` (``subject`` replaces the statistic's name)."""
        name = subject or STAT_LABELS.get(self.stat, self.stat)
        parts = [f"{name} < {self.min:g}"] if self.min is not None else []
        parts += [f"{name} > {self.max:g}"] if self.max is not None else []
        return " or ".join(parts)

    def label(self, channel: str = "") -> str:
        """The mode on a channel, as a finding reads: ``constant predictor output``, ``one-direction
        projector``, ``low-rank backbone``, ``one prototype`` (``channel`` defaults to the rule's)."""
        channel = channel or self.channel
        if not channel or self.mode not in _CHANNEL_LABELS:
            return self.mode or self.metric
        return _CHANNEL_LABELS[self.mode].format(channel=channel)

    def on(self, channel: str) -> "CollapseRule":
        """The same rule read on another channel."""
        return replace(self, channel=channel)


_CHANNEL_LABELS = {
    CONSTANT_OUTPUT: "constant {channel} output",
    ONE_DIRECTION: "one-direction {channel}",
    LOW_RANK: "low-rank {channel}",
}


def split_metric(metric: str) -> tuple[str, str]:
    """``collapse/student_backbone_rankme_ratio`` -> ``("student_backbone", "rankme_ratio")``; a collapse
    metric of no channel (``collapse/teacher_entropy_norm``) -> ``("", "teacher_entropy_norm")``."""
    name = metric.split("/", 1)[-1]
    for stat in sorted(EMBEDDING_STATS, key=len, reverse=True):
        if name.endswith(f"_{stat}"):
            return name[: -len(stat) - 1], stat
    return "", name


def infer_mode(stat: str, min: Optional[float], max: Optional[float]) -> str:
    """The mode a rule on ``stat`` with these bounds shows (a config rule names none)."""
    if min is not None and max is None:
        if stat in ("std", STD_RATIO):
            return CONSTANT_OUTPUT
        if stat in (RANKME, LIDAR):
            # both smooth ranks are 1 for one direction and 2 for two: a floor under 2 asks for one direction
            return ONE_DIRECTION if min <= 2 else LOW_RANK
        if stat == RANKME_RATIO:
            return LOW_RANK
        if stat in (TEACHER_MEAN_ENTROPY, TEACHER_MEAN_ENTROPY_NORM):
            return ONE_PROTOTYPE
    if max is not None and min is None and stat in ("teacher_entropy", TEACHER_ENTROPY_NORM):
        return UNIFORM_OUTPUT
    if max is not None and min is None and stat == ALPHA_REQ:
        return LOW_RANK  # a steep spectrum: the variance sits in few directions
    return ""


# ------------------------------------------------------------------------------------ the rules, by mode


def constant_output(
    channel: str, min: float = CONSTANT_OUTPUT_STD_RATIO, after_iteration: int = 0, patience: int = 1
) -> CollapseRule:
    """Every image gets the same embedding: the std of the L2-normalised embedding falls to 0 (SimSiam,
    Chen & He 2021, Fig. 2; an isotropic embedding has ``std x sqrt(d)`` = 1)."""
    return CollapseRule(STD_RATIO, min, None, channel, CONSTANT_OUTPUT, after_iteration, patience)


def one_direction(
    channel: str, min: float = ONE_DIRECTION_RANKME, after_iteration: int = 0, patience: int = 1
) -> CollapseRule:
    """Every embedding on one line: RankMe (Garrido et al. 2023) falls to 1. A projector ending in
    BatchNorm without affine (SimSiam's) cannot output a constant; this is how it collapses."""
    return CollapseRule(RANKME, min, None, channel, ONE_DIRECTION, after_iteration, patience)


def low_rank(
    channel: str, min: float = LOW_RANK_RANKME_RATIO, after_iteration: int = 0, patience: int = 1
) -> CollapseRule:
    """Dimensional collapse (Jing et al. 2021): embeddings differ but span few directions,
    ``RankMe / min(N, D)`` small. Low on purpose: a small healthy network on 10 classes has a low rank."""
    return CollapseRule(RANKME_RATIO, min, None, channel, LOW_RANK, after_iteration, patience)


def few_discriminative_directions(
    channel: str, min: float, after_iteration: int = 0, patience: int = 1
) -> CollapseRule:
    """LiDAR (Thilak et al. 2023) below ``min``: few directions tell images apart once the spread of each
    image's own views is whitened away. No default: LiDAR scales with the views per image, the images
    and the width, and no run here has placed a threshold yet (docs/monitor.md#lidar-and-alpha-req)."""
    mode = ONE_DIRECTION if min <= 2 else LOW_RANK
    return CollapseRule(LIDAR, min, None, channel, mode, after_iteration, patience)


def steep_spectrum(channel: str, max: float, after_iteration: int = 0, patience: int = 1) -> CollapseRule:
    """alpha-ReQ (Agrawal et al. 2022) above ``max``: the covariance spectrum decays so fast that the
    variance sits in few directions (dimensional collapse). No default, for the reason LiDAR has none."""
    return CollapseRule(ALPHA_REQ, None, max, channel, LOW_RANK, after_iteration, patience)


def one_prototype(
    min: float = ONE_PROTOTYPE_ENTROPY_NORM,
    stat: str = TEACHER_MEAN_ENTROPY_NORM,
    after_iteration: int = 0,
    patience: int = 1,
) -> CollapseRule:
    """The batch-mean teacher distribution on one prototype (DINO without centering, Caron et al. 2021;
    MSN without ME-MAX). ``stat`` may be the entropy in nats (``exp`` of it = prototypes in use)."""
    return CollapseRule(stat, min, None, "", ONE_PROTOTYPE, after_iteration, patience)


def uniform_output(max: float = UNIFORM_ENTROPY_NORM, after_iteration: int = 0, patience: int = 1) -> CollapseRule:
    """Every teacher distribution flat over the K prototypes (DINO without sharpening; MSN without
    target sharpening): per-image entropy / ln K near 1."""
    return CollapseRule(TEACHER_ENTROPY_NORM, None, max, "", UNIFORM_OUTPUT, after_iteration, patience)


def predictable_target(stat: str, min: float, after_iteration: int = 0, patience: int = 1) -> CollapseRule:
    """A latent-prediction loss per image falling to 0: the targets became predictable from their
    positions alone (I-JEPA's trivial solution). No default: the floor depends on the method's loss."""
    return CollapseRule(stat, min, None, "", PREDICTABLE_TARGET, after_iteration, patience)


def fewer_dimensions(channel: str, min: float = FEWER_DIMENSIONS_FRACTION) -> CollapseRule:
    """RankMe below ``min`` x a reference run's at the same iterations (Jing et al. compare SimCLR with
    and without its projector): read on the ratio series, which only the lab has."""
    return CollapseRule(RANKME_OF_REFERENCE, min, None, channel, FEWER_DIMENSIONS)


def embedding_rules(
    channel: str,
    constant: float = CONSTANT_OUTPUT_STD_RATIO,
    direction: float = ONE_DIRECTION_RANKME,
    rank_ratio: float = LOW_RANK_RANKME_RATIO,
) -> tuple[CollapseRule, ...]:
    """The rules on one embedding: constant output and one direction (complete), low rank (dimensional)."""
    return constant_output(channel, constant), one_direction(channel, direction), low_rank(channel, rank_ratio)


# --------------------------------------------------------------------------------------------- judging


def verdict_kind(rules: Iterable[CollapseRule]) -> str:
    """The verdict of the rules that hold: complete collapse wins over dimensional, none is healthy."""
    kinds = {rule.kind for rule in rules}
    return COMPLETE if COMPLETE in kinds else DIMENSIONAL if DIMENSIONAL in kinds else HEALTHY


def holding_rules(stats: Mapping[str, float], rules: Sequence[CollapseRule]) -> list[CollapseRule]:
    """The rules whose condition holds on one measurement of one embedding (``stats`` keyed by statistic,
    e.g. ``{"std_ratio": 0.8, "rankme": 12.0, "rankme_ratio": 0.3}``); a statistic absent is not judged."""
    return [rule for rule in rules if rule.stat in stats and rule.holds(float(stats[rule.stat]))]


def settled_since(
    iterations: Sequence[int],
    values: Sequence[float],
    holds: Callable[[float], bool],
    settle_fraction: float = SETTLE_FRACTION,
) -> Optional[int]:
    """The first iteration from which ``holds`` is true at every later point of a series, provided it
    holds over the last ``settle_fraction`` of the run (at least the last point); None otherwise.

    Early training can look collapsed (LayerScale or a random head make every output alike at first) and
    a transient dip can recover: neither is a collapse. A non-finite value never holds.
    """
    if not iterations:
        return None
    settle_from = iterations[-1] * (1.0 - settle_fraction)
    first_in_window = min(it for it in iterations if it >= settle_from)
    since = None
    for it, value in zip(reversed(iterations), reversed(values)):
        if not (math.isfinite(value) and holds(value)):
            break
        since = it
    return since if since is not None and since <= first_in_window else None
