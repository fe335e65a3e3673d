"""Register artifacts (Darcet et al. 2024, "Vision Transformers Need Registers"), read from each run's final
checkpoint for the lab's report when the matrix asks (``measurements.register_artifacts: true``):

- ``token_norms.png`` (the paper's Fig. 3): the histogram of the patch-token norms at the last block's
  output (before the final LayerNorm: :func:`dinolite.eval.feature_maps.patch_token_norms`) over the
  evaluation images, log count against norm, one panel per run, with the high-norm threshold drawn;
- ``attention_maps.png`` (the paper's Fig. 1/7 form): for four evenly spaced evaluation images, each run's
  patch-norm map and the last block's CLS attention of every head
  (:func:`dinolite.eval.feature_maps.cls_attention_maps`), the runs side by side;
- a table: median patch-token norm, 99th percentile and maximum over the median, the share of patch tokens
  above the threshold, and where the CLS token's attention goes (CLS, registers, patches), for each run and
  for its architecture at random init.

The high-norm threshold. Darcet et al. call a token high-norm when its norm is above 150 (DINOv2 ViT-g), a
cut in the gap of their bimodal histogram, several times the norm of the bulk of the tokens. A small ViT
has no comparable absolute scale, so the threshold here is relative: :data:`HIGH_NORM_FACTOR` times the
median patch-token norm of the same network on the same images; the max and 99th-percentile ratios let a
reader apply another cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from dinolite.config import Config
from dinolite.data.eval_dataset import build_eval_dataset
from dinolite.eval.backbone import load_any_backbone
from dinolite.eval.feature_maps import cls_attention_maps, cls_attention_shares, patch_token_norms
from dinolite.lab.evaluate import kept_checkpoints, lab_eval_transform, random_init_backbone
from dinolite.lab.matrix_plan import LabPlan, PlannedRun
from dinolite.lab.report_figures import Figure, save_figure
from dinolite.lab.report_sections import ReportSection
from dinolite.lab.run_reports import RunReport

HIGH_NORM_FACTOR = 3.0  # a patch token is high-norm above this x the median patch-token norm
ATTENTION_IMAGES = 4  # evaluation images shown in the attention figure (evenly spaced: fixed across runs)
MAX_IMAGES = 1024  # evaluation images the norms and attention shares are measured on
_SHARES = ("CLS", "registers", "patches")


@dataclass
class NormOutliers:
    """Statistics of a set of patch-token norms against the high-norm threshold."""

    median: float
    p99: float
    max: float
    threshold: float  # factor x median
    count: int  # tokens above the threshold
    total: int

    @property
    def share(self) -> float:
        return self.count / self.total


def norm_outliers(norms: Tensor, factor: float = HIGH_NORM_FACTOR) -> NormOutliers:
    """Median, 99th percentile and maximum of ``norms`` (any shape) and how many lie above ``factor`` x median."""
    if norms.numel() == 0:
        raise ValueError("norm_outliers needs at least one token norm")
    if factor <= 1:
        raise ValueError(f"the high-norm factor must be above 1 (a multiple of the median), got {factor}")
    flat = norms.detach().flatten().double()
    median = float(flat.median())
    threshold = factor * median
    return NormOutliers(
        median=median,
        p99=float(torch.quantile(flat, 0.99)),
        max=float(flat.max()),
        threshold=threshold,
        count=int((flat > threshold).sum()),
        total=flat.numel(),
    )


@dataclass
class TokenMeasurement:
    """What one network does with its tokens on the evaluation images."""

    label: str
    registers: int
    norms: Tensor  # (N, h, w) patch-token norms
    outliers: NormOutliers
    shares: Tensor  # (heads, 3): mean share of the CLS attention on CLS, registers, patches
    attention: Tensor  # (ATTENTION_IMAGES, heads, h, w) CLS attention maps of the images at shown_indices


def shown_indices(n_images: int, shown: int = ATTENTION_IMAGES) -> Tensor:
    """The images the attention figure shows: ``shown`` evenly spaced from the first to the last (an
    evaluation split sorted by class shows several classes)."""
    return torch.linspace(0, n_images - 1, min(shown, n_images)).round().long()


def evaluation_images(cfg: Config, source: list[str], limit: int = MAX_IMAGES) -> Tensor:
    """The first ``limit`` evaluation images of ``source``, normalised as the lab evaluates them ``(N, 3, H, W)``."""
    images = []
    for image, *_ in build_eval_dataset(source, lab_eval_transform(cfg)):
        images.append(image)
        if len(images) == limit:
            break
    if not images:
        raise ValueError(f"no evaluation images in {source}")
    return torch.stack(images)


def measure_tokens(model: nn.Module, images: Tensor, label: str, batch_size: int = 256) -> TokenMeasurement:
    """Patch-token norms, their outliers, the CLS attention shares and the first images' attention maps."""
    model = model.eval()
    norms, shares = [], []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size]
        norms.append(patch_token_norms(model, batch))
        shares.append(cls_attention_shares(model, batch))
    all_norms = torch.cat(norms)
    return TokenMeasurement(
        label=label,
        registers=int(getattr(model, "num_register_tokens", 0)),
        norms=all_norms,
        outliers=norm_outliers(all_norms),
        shares=torch.cat(shares).mean(dim=0),
        attention=cls_attention_maps(model, images[shown_indices(images.shape[0])]),
    )


def measure_run(
    run: PlannedRun, images: Tensor, load: Optional[Callable[[Path], nn.Module]] = None
) -> Optional[TokenMeasurement]:
    """:func:`measure_tokens` on the evaluated network of the run's last checkpoint (``load``: default
    :func:`load_any_backbone`); None before any checkpoint."""
    checkpoints = kept_checkpoints(run.run_dir)
    if not checkpoints:
        return None
    iteration, path = checkpoints[-1]
    return measure_tokens((load or load_any_backbone)(path), images, f"{run.label} (it {iteration})")


def _image_for_display(image: Tensor, cfg: Config) -> Tensor:
    mean = torch.tensor(cfg.crops.mean).view(3, 1, 1)
    std = torch.tensor(cfg.crops.std).view(3, 1, 1)
    return (image * std + mean).clamp(0, 1).permute(1, 2, 0)


def plot_token_norms(measured: list[TokenMeasurement], path: Path) -> None:
    """The paper's Fig. 3: log-count histogram of the patch-token norms, one panel per network."""
    fig = Figure(figsize=(4.2 * len(measured), 3.4))
    axes = fig.subplots(1, len(measured), squeeze=False)[0]
    for ax, m in zip(axes, measured):
        norms = m.norms.flatten().numpy()
        ax.hist(norms, bins=60, log=True, color="tab:blue")
        ax.axvline(m.outliers.threshold, color="tab:red", ls="--", lw=1)
        ax.set_title(
            f"{m.label}, {m.registers} registers\n{m.outliers.share:.2%} above {HIGH_NORM_FACTOR:g} x median "
            f"(max {m.outliers.max / m.outliers.median:.2f} x median)",
            fontsize=8,
        )
        ax.set_xlabel("patch-token norm (last block, before the final LayerNorm)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("count (log)", fontsize=8)
    save_figure(fig, path)


def plot_attention_maps(measured: list[TokenMeasurement], images: Tensor, cfg: Config, path: Path) -> None:
    """The paper's Fig. 1/7 form: per image, each network's patch-norm map and CLS attention per head."""
    shown = shown_indices(images.shape[0]).tolist()
    n_images = len(shown)
    columns = 1 + sum(1 + m.attention.shape[1] for m in measured)
    fig = Figure(figsize=(1.25 * columns, 1.35 * n_images + 0.6))
    axes = fig.subplots(n_images, columns, squeeze=False)
    for row in range(n_images):
        panels = [(f"image {shown[row]}", _image_for_display(images[shown[row]], cfg), "gray")]
        for m in measured:
            panels.append((f"{m.label}\nnorm", m.norms[shown[row]], "magma"))
            panels += [(f"{m.label}\nhead {h}", m.attention[row, h], "viridis") for h in range(m.attention.shape[1])]
        for ax, (title, picture, cmap) in zip(axes[row], panels):
            ax.imshow(picture.numpy(), cmap=cmap, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0 or title.startswith("image"):
                ax.set_title(title, fontsize=6)
    save_figure(fig, path)


def artifacts_table(measured: list[TokenMeasurement]) -> str:
    head = (
        f"| network | registers | median norm | p99 / median | max / median | share above {HIGH_NORM_FACTOR:g} x median | "
        "CLS attention on CLS / registers / patches |"
    )
    lines = [head, "|" + "---|" * 7]
    for m in measured:
        o = m.outliers
        shares = " / ".join(f"{value:.2f}" for value in m.shares.mean(dim=0).tolist())
        lines.append(
            f"| {m.label} | {m.registers} | {o.median:.2f} | {o.p99 / o.median:.2f} | {o.max / o.median:.2f} | "
            f"{o.share:.2%} ({o.count} of {o.total}) | {shares} |"
        )
    return "\n".join(lines)


def finding_text(measured: list[TokenMeasurement]) -> str:
    """Whether the trained runs show the paper's finding: high-norm patch tokens without registers, and with
    registers at most a tenth of that share (the outliers gone)."""
    without = [m.outliers.share for m in measured if m.registers == 0]
    with_registers = [m.outliers.share for m in measured if m.registers > 0]
    if not without or not with_registers:
        return "The finding needs a trained run with and one without registers."
    appear = min(without) > 0
    gone = appear and max(with_registers) <= 0.1 * min(without)
    verdict = "**reproduced**" if gone else "**not reproduced** at this scale"
    return (
        f"Darcet et al.'s finding (high-norm patch tokens without registers, gone with them): {verdict}. "
        f"Share above the threshold without registers {', '.join(f'{v:.2%}' for v in without)}; with registers "
        f"{', '.join(f'{v:.2%}' for v in with_registers)}. (The summary's 'reproduced' column judges only that "
        "each run trained without collapse.)"
    )


def register_artifacts_section(
    plan: LabPlan,
    reports: list[RunReport],
    out_dir: Path,
    load: Optional[Callable[[Path], nn.Module]] = None,
    images: Optional[Tensor] = None,
) -> Optional[ReportSection]:
    """The report's "Register artifacts" section and its figures, drawn into ``out_dir``, when the matrix asks
    (``measurements.register_artifacts``; ``None`` otherwise). Measured on each run's final checkpoint, not
    on ``reports`` (the traces carry no token norms). ``images``: normalised evaluation images; default:
    :func:`evaluation_images` of the plan's val split."""
    if not plan.matrix.measurements.register_artifacts:
        return None
    if images is None:
        images = evaluation_images(plan.runs[0].config, plan.eval_val)
    trained = [m for m in (measure_run(run, images, load) for run in plan.runs) if m is not None]
    at_init = [
        measure_tokens(random_init_backbone(run.config), images, f"{run.label} (random init)") for run in plan.runs
    ]
    lines = [
        "## Register artifacts (Darcet et al. 2024)",
        "",
        f"Patch-token norms at the last block's output (before the final LayerNorm) of the evaluated network, on "
        f"{images.shape[0]} evaluation images ({images.shape[0] * trained[0].norms[0].numel() if trained else 0} "
        f"patch tokens per network). High-norm: above {HIGH_NORM_FACTOR:g} x the network's median patch-token norm "
        "(the paper's cut, 150 for DINOv2 ViT-g, sits in the gap of a bimodal histogram, several times the bulk's "
        "norm). CLS attention: the last block's CLS row, averaged over heads and images.",
        "",
        artifacts_table(trained + at_init),
        "",
        finding_text(trained),
    ]
    if not trained:
        return ReportSection("\n".join(lines + ["", "No run has a checkpoint yet."]))
    plot_token_norms(trained, out_dir / "token_norms.png")
    plot_attention_maps(trained, images, plan.runs[0].config, out_dir / "attention_maps.png")
    figures = (
        ("token_norms.png", "Patch-token norms of the final checkpoints (Darcet et al. 2024, Fig. 3)"),
        ("attention_maps.png", "Patch-norm maps and last-block CLS attention per head (Darcet et al. 2024, Fig. 1/7)"),
    )
    return ReportSection("\n".join(lines), figures)
