"""Which dinolite preset benchmarks/methods_vs_lightly.py trains for each method (issue 26).

``--presets demo`` (the default) trains the digits-tuned presets ``demo_<method>``; ``--presets small`` trains
the generic small-image presets ``small_<method>`` (docs/methods.md, "Generic small-image presets"), which are
used unchanged on every data set. Kept apart from the benchmark, which needs lightly, so that the choice is
tested without lightly installed (tests/benchmarks/test_methods_vs_lightly_presets.py).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from dinolite.config import load_config

PRESET_SETS = {
    "demo": "the digits-tuned presets demo_<method>",
    "small": "the generic small-image presets small_<method>, used unchanged on every data set",
}
DEFAULT_PRESETS = "demo"


@dataclass(frozen=True)
class Method:
    label: str  # the table's row; ``{preset}`` is replaced by the preset trained
    presets: dict[str, str]  # dinolite's preset, by preset set (PRESET_SETS)
    network: str  # the network both sides evaluate, when the method trains two


def _both(method: str) -> dict[str, str]:
    return {"demo": f"demo_{method}", "small": f"small_{method}"}


# Adding a method: its row here and its recipe in benchmarks/lightly_recipes.py (same key).
METHODS: dict[str, Method] = {
    "simclr": Method("SimCLR", _both("simclr"), ""),
    "barlow_twins": Method("Barlow Twins", _both("barlow_twins"), ""),
    "byol": Method("BYOL", _both("byol"), "online"),
    "simsiam": Method("SimSiam", _both("simsiam"), ""),
    "msn": Method("MSN", _both("msn"), "EMA target"),
    # lightly's DINO against dinolite's DINOv2 recipe on either side (the demo row has always been `demo`)
    "dino": Method("DINO (dinolite: DINOv2 `{preset}`)", {"demo": "demo", "small": "small_dinov2"}, "EMA teacher"),
    "vicreg": Method("VICReg", _both("vicreg"), ""),
}


def preset_of(name: str, presets: str) -> str:
    """dinolite's preset for method ``name`` in preset set ``presets`` ("demo" or "small")."""
    if presets not in PRESET_SETS:
        raise ValueError(f"unknown preset set {presets!r}; choose from {sorted(PRESET_SETS)}")
    return METHODS[name].presets[presets]


def label_of(name: str, presets: str) -> str:
    """The table's row label of method ``name`` with its evaluated network."""
    method = METHODS[name]
    label = method.label.format(preset=preset_of(name, presets))
    return label + (f", {method.network}" if method.network else "")


def add_preset_arguments(parser: argparse.ArgumentParser) -> None:
    """``--presets``, and ``--output-dir`` whose default depends on it (:func:`output_dir`)."""
    parser.add_argument(
        "--presets",
        choices=sorted(PRESET_SETS),
        default=DEFAULT_PRESETS,
        help="dinolite's side: "
        + "; ".join(f"{k}: {v}" for k, v in PRESET_SETS.items())
        + f" (default {DEFAULT_PRESETS})",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="default: output/methods_vs_lightly (--presets demo), output/methods_vs_lightly_small (small)",
    )


def output_dir(requested: Optional[Path], presets: str) -> Path:
    """The run folder: ``requested``, else one per preset set, so that a resumed run never continues the
    dinolite runs of the other set."""
    if requested is not None:
        return requested
    return Path("output/methods_vs_lightly" + ("" if presets == DEFAULT_PRESETS else f"_{presets}"))


def check_resumed_presets(results: dict, presets: str, path: Path) -> None:
    """A results file holds one preset set: resuming it with the other would mix them in one table."""
    held = results.get("presets", DEFAULT_PRESETS)  # files written before --presets existed: the demos
    if held != presets:
        raise SystemExit(f"--resume: {str(path)!r} holds --presets {held} results; this run asks for {presets}")


def result_markers(presets: str) -> tuple[str, str]:
    """The markers around the preset set's table in RESULTS.md: one table per set, neither replacing the other."""
    name = "methods_vs_lightly" + ("" if presets == DEFAULT_PRESETS else f" {presets}")
    return f"<!-- {name}: begin -->", f"<!-- {name}: end -->"


def lightly_inputs(preset: str) -> dict:
    """What lightly's side of a method reads from dinolite's preset: the ViT it trains (the ``student``
    section, built with ``train.seed``) and how the evaluation prepares an image (global-crop size,
    normalisation). Two presets with equal inputs give lightly's side the same run, and the random-init and
    raw-pixel baselines the same numbers."""
    cfg = load_config(preset)
    return {
        "student": asdict(cfg.student),
        "train.seed": cfg.train.seed,
        "crops.global_crops_size": cfg.crops.global_crops_size,
        "crops.mean": list(cfg.crops.mean),
        "crops.std": list(cfg.crops.std),
    }


def _first_difference(a: dict, b: dict) -> str:
    return next(key for key in a if a[key] != b.get(key))


def reuse_lightly_side(results: dict, donor: dict, donor_path: Path, names: list[str], presets: str) -> list[str]:
    """Copy lightly's entries and the two baselines of ``donor`` (a results file of the other preset set) into
    ``results`` where they are missing: lightly's side does not depend on which dinolite presets run, as long
    as both presets give it the same inputs (:func:`lightly_inputs`) and the budget is the same. Each copied
    entry says where it came from; returns ``"<set>/<method>"`` of each one copied. Refuses (naming the method
    and the first setting that differs) where the inputs differ, and a donor of another budget."""
    donor_presets = donor.get("presets", DEFAULT_PRESETS)
    if donor.get("budget") != results.get("budget"):
        raise SystemExit(
            f"--lightly-from: {str(donor_path)!r} ran budget {donor.get('budget')}, this run {results.get('budget')}"
        )
    for name in names:
        ours, theirs = lightly_inputs(preset_of(name, presets)), lightly_inputs(preset_of(name, donor_presets))
        if ours != theirs:
            key = _first_difference(ours, theirs)
            raise SystemExit(
                f"--lightly-from: {name}: {preset_of(name, presets)} and {preset_of(name, donor_presets)} differ in "
                f"{key} ({ours[key]!r} against {theirs[key]!r}): lightly's side of one is not the other's"
            )
    copied = []
    for dataset, entry in donor.get("datasets", {}).items():
        target = results.setdefault("datasets", {}).setdefault(dataset, {"methods": {}})
        for base in ("random_init", "raw_pixels"):
            if base in entry and base not in target:
                target[base] = {**entry[base], "copied_from": str(donor_path)}
        for name in names:
            lightly = entry.get("methods", {}).get(name, {}).get("lightly")
            sides = target["methods"].setdefault(name, {})
            if lightly is not None and "lightly" not in sides:
                sides["lightly"] = {**lightly, "copied_from": str(donor_path)}
                copied.append(f"{dataset}/{name}")
    return copied
