"""CollapseMonitor: collapse metrics from the objective's diagnostics, gathered over all ranks.

The trainer calls :meth:`CollapseMonitor.measure` on every rank at the same iterations (it holds a
collective when ``torch.distributed`` is initialised) with the objective's detached ``diagnostics``
(docs/interfaces.md). The monitor only reads those tensors; it never touches the model or the loss.

Metric names (all plain floats, logged by the trainer):

- ``collapse/{backbone,student_backbone,head}_{std,std_ratio,rankme,rankme_ratio,alpha_req}`` for the
  teacher CLS feature, the student CLS feature and the teacher head logits. ``std`` is SimSiam's mean std
  of the L2-normalised embeddings, ``std_ratio = std * sqrt(D)`` (~1 healthy, 0 collapsed, width-free),
  ``rankme_ratio = RankMe / min(N, D)``, ``alpha_req`` the power-law decay of the covariance spectrum
  (Agrawal et al. 2022; not logged when the spectrum has too few non-zero eigenvalues to fit one).
- ``collapse/<prefix>_lidar`` (Thilak et al. 2023) when the objective also gives the views of that
  embedding: a diagnostics key ``<key>_views`` of shape ``(B, V, D)``, the embedding of each of the V
  views of each image (:data:`VIEWS_SUFFIX`). The views of one image are LiDAR's surrogate class; DINOv2
  gives its teacher's CLS of the two global crops of each image as ``teacher_cls_views``, the
  joint-embedding family its backbone's CLS of the two views as ``backbone_cls_views``.
- ``collapse/teacher_entropy`` and ``collapse/teacher_mean_entropy`` (nats) with ``_norm`` versions
  divided by ``ln K``; ``collapse/student_teacher_ce`` and ``collapse/student_teacher_kl``.
- ``collapse/<name>`` for each of a method's ``mean_sources`` (diagnostics key -> name): the mean of a
  per-image scalar over the gathered rows (I-JEPA's ``target_prediction_error``: its loss per image,
  which falls to ~0 when the targets become predictable from their positions alone).
- ``collapse/num_samples``: rows the metrics were computed on (all ranks, at most ``max_samples``).
- ``collapse/<prefix>_eig_<k>`` (k = 1..``eigenvalues``, only when ``eigenvalues`` > 0): the k-th largest
  eigenvalue of the covariance of the raw embedding (not L2-normalised: its scale is the point), the trace
  of stepwise learning (Simon et al. 2023, Fig. 1). Not in the watchdog's vocabulary: nothing alarms on it.

The covariance spectra (Jing et al. 2021) of the last measurement are in :attr:`last_spectra` as
``log10`` values for a TensorBoard histogram, and are written to
``output_dir/spectrum/spectrum_<iteration>.json`` once per ``spectrum_every`` iterations (rank 0).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from dinolite.distributed import get_world_size
from dinolite.io import write_json_atomic
from dinolite.monitor import metrics

# diagnostics key -> metric prefix, for the embedding metrics (DINOv2's; a method declares its own in its
# MethodSpec.monitor_embeddings and the trainer passes them to CollapseMonitor)
EMBEDDING_SOURCES: dict[str, str] = {
    "teacher_cls": "backbone",
    "student_cls": "student_backbone",
    "teacher_head_logits": "head",
}
_EMBEDDING_STATS = ("std", "std_ratio", "rankme", "rankme_ratio", "alpha_req", "lidar")
VIEWS_SUFFIX = "_views"  # diagnostics "<key>_views" (B, V, D): the views of embedding <key>, for LiDAR
_HEAD_METRICS = (
    "collapse/teacher_entropy",
    "collapse/teacher_entropy_norm",
    "collapse/teacher_mean_entropy",
    "collapse/teacher_mean_entropy_norm",
    "collapse/teacher_prototypes_used",
    "collapse/teacher_prototypes_used_ratio",
    "collapse/student_teacher_ce",
    "collapse/student_teacher_kl",
)


def metric_names(
    embedding_sources: Mapping[str, str], mean_sources: Mapping[str, str] | None = None
) -> tuple[str, ...]:
    """Every scalar ``measure()`` can return with these embedding (and per-image mean) sources (which
    ones it does return depends on the diagnostics the objective provides)."""
    return (
        "collapse/num_samples",
        *(f"collapse/{prefix}_{stat}" for prefix in embedding_sources.values() for stat in _EMBEDDING_STATS),
        *(f"collapse/{name}" for name in (mean_sources or {}).values()),
        *_HEAD_METRICS,
    )


METRIC_NAMES: tuple[str, ...] = metric_names(EMBEDDING_SOURCES)
# Covariance eigenvalues below this are shown at this floor on the log10 histogram (log10(0) = -inf).
_LOG_SPECTRUM_FLOOR = 1e-12


def _distributed() -> bool:
    return get_world_size() > 1


def gather_rows(x: Tensor, max_rows: int) -> Tensor:
    """Rows of ``x`` from every rank, concatenated in rank order, at most ``max_rows`` in total.

    Each rank contributes at most ``ceil(max_rows / world_size)`` rows so the all-gather itself is
    bounded. Ranks may hold different row counts (the last batch of an epoch): rows are padded to the
    largest count for ``all_gather`` and the padding is dropped. Single process: ``x[:max_rows]``.
    Every rank must call this at the same point (collective).
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    if not _distributed():
        return x[:max_rows]
    world_size = dist.get_world_size()
    local = x[: math.ceil(max_rows / world_size)].contiguous()
    count = torch.tensor([local.shape[0]], device=local.device, dtype=torch.long)
    counts = [torch.zeros_like(count) for _ in range(world_size)]
    dist.all_gather(counts, count)
    largest = int(max(c.item() for c in counts))
    padded = local.new_zeros((largest, *local.shape[1:]))
    padded[: local.shape[0]] = local
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    rows = torch.cat([g[: int(c.item())] for g, c in zip(gathered, counts)])
    return rows[:max_rows]


def _embedding_metrics(prefix: str, x: Tensor) -> dict[str, float]:
    """std, std_ratio, RankMe, its ratio and alpha-ReQ (when its fit is defined) of one ``(N, D)`` embedding."""
    n, d = x.shape
    std = metrics.embedding_std(x)
    rank = metrics.rankme(x)
    out = {
        f"collapse/{prefix}_std": std,
        f"collapse/{prefix}_std_ratio": std * math.sqrt(d),
        f"collapse/{prefix}_rankme": rank,
        f"collapse/{prefix}_rankme_ratio": rank / min(n, d),
    }
    alpha = metrics.alpha_req(x)
    if math.isfinite(alpha):  # inf: too few directions to fit; RankMe already tells that collapse
        out[f"collapse/{prefix}_alpha_req"] = alpha
    return out


def top_eigenvalues(prefix: str, x: Tensor, count: int) -> dict[str, float]:
    """``collapse/<prefix>_eig_<k>``: the ``count`` largest eigenvalues of the covariance of the raw ``(N, D)``
    embedding ``x`` (k = 1 is the largest; fewer when ``min(N, D) < count``)."""
    if count <= 0:
        return {}
    values = metrics.covariance_spectrum(x, normalize=False)[:count]
    return {f"collapse/{prefix}_eig_{k}": float(v) for k, v in enumerate(values.tolist(), 1)}


def _lidar_of_views(key: str, views: Tensor) -> float:
    if views.dim() != 3 or views.shape[1] < 2:
        raise ValueError(f"diagnostics {key!r} must be (images, views >= 2, dims), got shape {tuple(views.shape)}")
    return metrics.lidar(views)


class CollapseMonitor:
    """Collapse metrics every ``every`` iterations on at most ``max_samples`` rows gathered from all ranks.

    Args:
        every: measure when ``iteration % every == 0`` (see :meth:`due`); 0 disables.
        max_samples: rows gathered over all ranks per measurement; bounds the SVD cost
            (``max_samples * D * min(max_samples, D)``) and the memory.
        spectrum_every: save the covariance spectra at the first measurement of every window of this
            many iterations; 0 never saves.
        output_dir: run directory; spectra go to ``output_dir/spectrum/``. None keeps nothing on disk.
        student_temp: the student softmax temperature, for the student-teacher cross-entropy / KL.
        embedding_sources: diagnostics key -> metric prefix of the embeddings to measure (default
            DINOv2's :data:`EMBEDDING_SOURCES`; the trainer passes the method's).
        mean_sources: diagnostics key -> metric name of per-image scalars ``(B,)`` whose
            mean over the gathered rows is reported as ``collapse/<name>`` (the method's ``monitor_means``).
        eigenvalues: log the top this many raw-covariance eigenvalues of each embedding (0: none).
    """

    def __init__(
        self,
        every: int,
        max_samples: int,
        spectrum_every: int = 0,
        output_dir: Optional[str | Path] = None,
        student_temp: float = 0.1,
        embedding_sources: Optional[Mapping[str, str]] = None,
        mean_sources: Optional[Mapping[str, str]] = None,
        eigenvalues: int = 0,
    ) -> None:
        if eigenvalues < 0:
            raise ValueError(f"monitor.eigenvalues must be >= 0, got {eigenvalues}")
        if every < 0:
            raise ValueError(f"monitor.every must be >= 0, got {every}")
        if max_samples < 2:
            raise ValueError(f"monitor.max_samples must be >= 2 (a spread needs two samples), got {max_samples}")
        if spectrum_every < 0:
            raise ValueError(f"monitor.spectrum_every must be >= 0, got {spectrum_every}")
        self.every = every
        self.max_samples = max_samples
        self.spectrum_every = spectrum_every
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.student_temp = student_temp
        self.embedding_sources = dict(EMBEDDING_SOURCES if embedding_sources is None else embedding_sources)
        self.mean_sources = dict(mean_sources or {})
        self.eigenvalues = eigenvalues
        self.metric_names = metric_names(self.embedding_sources, self.mean_sources)
        self.last_spectra: dict[str, np.ndarray] = {}
        self._last_spectrum_window = -1

    @classmethod
    def from_config(
        cls,
        monitor_cfg,
        output_dir: Optional[str | Path],
        student_temp: float,
        embedding_sources: Optional[Mapping[str, str]] = None,
        mean_sources: Optional[Mapping[str, str]] = None,
    ) -> "CollapseMonitor":
        """Build from the ``monitor`` config section (a ``MonitorConfig``), the run's student temperature
        and the method's embedding and per-image mean sources."""
        return cls(
            every=monitor_cfg.every,
            max_samples=monitor_cfg.max_samples,
            spectrum_every=monitor_cfg.spectrum_every,
            output_dir=output_dir,
            student_temp=student_temp,
            embedding_sources=embedding_sources,
            mean_sources=mean_sources,
            eigenvalues=monitor_cfg.eigenvalues,
        )

    def due(self, iteration: int) -> bool:
        """Whether :meth:`measure` should run at this iteration (same answer on every rank)."""
        return self.every > 0 and iteration % self.every == 0

    def measure(self, iteration: int, diagnostics: Mapping[str, Tensor]) -> dict[str, float]:
        """Compute every metric the available diagnostics allow; returns ``{"collapse/<name>": float}``.

        Known keys: those of ``embedding_sources`` (DINOv2: ``teacher_cls``, ``student_cls``,
        ``teacher_head_logits``), ``teacher_head_probs`` (entropies), ``student_head_logits`` (with the
        probs: CE / KL), and ``<key>_views`` ``(B, V, D)`` of an embedding source (LiDAR over the gathered
        images, at most ``max_samples`` of them). Keys that are absent are skipped; none at all is an error.
        Collective across ranks when distributed.
        """
        known = (
            set(self.embedding_sources)
            | {key + VIEWS_SUFFIX for key in self.embedding_sources}
            | set(self.mean_sources)
            | {"teacher_head_probs", "student_head_logits"}
        )
        if not known & set(diagnostics):
            raise ValueError(
                f"diagnostics at iteration {iteration} hold none of the keys the monitor reads "
                f"({', '.join(sorted(known))}); got {', '.join(sorted(diagnostics)) or 'nothing'}"
            )
        # Gather every tensor first, in a fixed order, so all ranks issue the same collectives.
        gathered = {
            key: gather_rows(diagnostics[key].detach().float(), self.max_samples)
            for key in sorted(known)
            if key in diagnostics
        }
        results: dict[str, float] = {}
        spectra: dict[str, np.ndarray] = {}
        num_samples = max(t.shape[0] for t in gathered.values())
        results["collapse/num_samples"] = float(num_samples)
        for key, prefix in self.embedding_sources.items():
            if key in gathered:
                results.update(_embedding_metrics(prefix, gathered[key]))
                spectra[prefix] = metrics.covariance_spectrum(gathered[key]).numpy()
                results.update(top_eigenvalues(prefix, gathered[key], self.eigenvalues))
            views = gathered.get(key + VIEWS_SUFFIX)
            if views is not None and views.shape[0] >= 2:  # one image is one class: nothing to separate
                results[f"collapse/{prefix}_lidar"] = _lidar_of_views(key + VIEWS_SUFFIX, views)
        for key, name in self.mean_sources.items():
            if key in gathered:
                results[f"collapse/{name}"] = float(gathered[key].mean())
        probs = gathered.get("teacher_head_probs")
        if probs is not None:
            k = probs.shape[1]
            h = metrics.entropy(probs)
            h_mean = metrics.batch_mean_entropy(probs)
            results["collapse/teacher_entropy"] = h
            results["collapse/teacher_entropy_norm"] = metrics.normalized_entropy(h, k)
            results["collapse/teacher_mean_entropy"] = h_mean
            results["collapse/teacher_mean_entropy_norm"] = metrics.normalized_entropy(h_mean, k)
            # partial prototype collapse (Govindarajan et al. 2024): the prototypes some image is assigned
            # to, of min(N, K) it could be (a batch of N images cannot use more than N)
            used = metrics.prototypes_used(probs)
            results["collapse/teacher_prototypes_used"] = float(used)
            results["collapse/teacher_prototypes_used_ratio"] = used / min(k, probs.shape[0])
            student_logits = gathered.get("student_head_logits")
            if student_logits is not None:
                ce, kl = metrics.cross_entropy_kl(student_logits, probs, self.student_temp)
                results["collapse/student_teacher_ce"] = ce
                results["collapse/student_teacher_kl"] = kl
        self.last_spectra = {
            f"collapse/{prefix}_log10_spectrum": np.log10(np.maximum(values, _LOG_SPECTRUM_FLOOR))
            for prefix, values in spectra.items()
        }
        self._maybe_save_spectra(iteration, num_samples, spectra)
        return results

    def _maybe_save_spectra(self, iteration: int, num_samples: int, spectra: dict[str, np.ndarray]) -> None:
        if self.output_dir is None or self.spectrum_every <= 0 or not spectra:
            return
        window = iteration // self.spectrum_every
        if window <= self._last_spectrum_window:
            return
        self._last_spectrum_window = window
        if _distributed() and dist.get_rank() != 0:
            return
        payload = {
            "iteration": iteration,
            "num_samples": num_samples,
            "description": "eigenvalues of the covariance of L2-normalised embeddings, descending (Jing et al. 2021)",
            "spectra": {prefix: values.tolist() for prefix, values in spectra.items()},
        }
        write_json_atomic(self.spectrum_path(iteration), payload, indent=None)

    def spectrum_path(self, iteration: int) -> Path:
        """Where the spectra of a measurement at ``iteration`` are saved."""
        if self.output_dir is None:
            raise ValueError("this CollapseMonitor has no output_dir")
        return self.output_dir / "spectrum" / f"spectrum_{iteration:08d}.json"
