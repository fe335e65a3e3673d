"""The package's layers import one way only (see ARCHITECTURE.md and docs/interfaces.md).

Read from the source with ``ast`` (nothing is imported), so a violation fails with the file and line
that introduced it, whether the import sits at the top of a file or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parent.parent / "dinolite"

# package -> the dinolite packages it may import (besides itself). Anything not listed is forbidden.
FOUNDATION = {"io", "distributed", "config", "cli", "progress", "extras", "compat", "dtypes"}
ALLOWED: dict[str, set[str]] = {
    "io": set(),
    "cli": set(),  # error: one-liners and --help defaults for every entrypoint
    "progress": set(),  # progress bars (TTY-aware) for every long loop
    "extras": set(),  # optional dependencies: the error names the pip extra to install
    "compat": set(),  # which torchvision goes with which torch
    "dtypes": set(),  # compute in at least float32 (keeps a float64 run float64)
    "distributed": set(),
    "config": {"io", "config_aliases"},
    "config_aliases": set(),  # DINOv2's key names -> ours (read by config only)
    "checkpoint": FOUNDATION,
    # Building blocks: they take plain arguments and never import each other.
    "models": FOUNDATION,
    "losses": FOUNDATION,
    "data": FOUNDATION,
    "monitor": FOUNDATION,  # owns the one collapse rule set (collapse_rules.py) that eval and lab read
    # Sharding over processes (FSDP2 / HSDP, activation checkpointing, compile, clipping): below train.
    "fsdp": FOUNDATION | {"models"},
    # Readers of finished runs: never the trainer.
    "export": FOUNDATION | {"checkpoint", "models"},
    "eval": FOUNDATION | {"checkpoint", "models", "data", "monitor", "export"},
    # The trainer composes everything below it. What runs around a run (signals, trackers, the console's
    # handler) comes in as values from jobs: train never imports jobs or commands.
    "train": FOUNDATION | {"checkpoint", "models", "losses", "data", "monitor", "export", "eval", "fsdp"},
    # Plans a run before it is submitted: the trainer's real step on fake tensors (dinolite-plan).
    "plan": FOUNDATION | {"checkpoint", "models", "losses", "data", "monitor", "export", "eval", "fsdp", "train"},
    # Around a training run: Slurm submission and in-job handling, run lock, stop signals, trackers, console.
    "jobs": FOUNDATION | {"checkpoint", "models", "losses", "data", "monitor", "export", "eval", "fsdp", "train"},
    # Above the trainer and jobs: runs matrices of trainings and reads them back.
    "lab": FOUNDATION
    | {"checkpoint", "models", "losses", "data", "monitor", "export", "eval", "fsdp", "train", "jobs"},
    # One module per console command, the top layer: may import anything; nothing imports it.
    "commands": FOUNDATION
    | {"config_aliases", "checkpoint", "models", "losses", "data", "monitor", "export", "eval", "fsdp", "train"}
    | {"jobs", "lab", "plan"},
}
TOP_LEVEL_MODULES = {"__init__"}  # dinolite/__init__.py: the public entry points


def _package_of(module: str) -> str | None:
    """``dinolite.train.loop`` -> ``train``; ``dinolite`` itself -> None."""
    parts = module.split(".")
    if parts[0] != "dinolite" or len(parts) == 1:
        return None
    return parts[1]


def _source_files() -> list[Path]:
    return sorted(p for p in PACKAGE_ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            if name == "dinolite":  # `from dinolite import distributed`
                found.extend((node.lineno, f"dinolite.{alias.name}") for alias in node.names)
    return found


def _edges() -> list[tuple[str, str, str]]:
    """(importing package, imported package, 'file:line') for every cross-package dinolite import."""
    edges = []
    for path in _source_files():
        module = _module_name(path)
        source_package = _package_of(module)
        tree = ast.parse(path.read_text(), filename=str(path))
        for lineno, name in _imported_modules(tree, module, path.name == "__init__.py"):
            target = _package_of(name)
            if target is None or target == source_package:
                continue
            if not (PACKAGE_ROOT / target).is_dir() and not (PACKAGE_ROOT / f"{target}.py").is_file():
                continue  # `from dinolite import __version__`
            edges.append((source_package or "dinolite", target, f"{path.relative_to(PACKAGE_ROOT.parent)}:{lineno}"))
    return edges


def test_every_package_has_a_layer() -> None:
    packages = {p.name for p in PACKAGE_ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE_ROOT.glob("*.py")} - TOP_LEVEL_MODULES
    assert packages | modules <= set(ALLOWED), (
        f"give these a layer in ALLOWED: {sorted((packages | modules) - set(ALLOWED))}"
    )


def test_imports_only_point_down() -> None:
    violations = [
        f"{where}: dinolite.{source} imports dinolite.{target}"
        for source, target, where in _edges()
        if source != "dinolite" and target not in ALLOWED[source]
    ]
    assert not violations, "layer violations:\n" + "\n".join(violations)


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for source, target, _ in _edges():
        if source != "dinolite":
            graph.setdefault(source, set()).add(target)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if reaches(b, a, {b})})
    assert not cycles, f"package cycles: {cycles}"


def test_eval_and_export_never_import_train() -> None:
    offending = [
        where
        for source, target, where in _edges()
        if source in {"eval", "export"} and target in {"train", "jobs", "commands"}
    ]
    assert not offending


def test_train_never_imports_jobs_or_commands() -> None:
    """The loop takes stop_requested, metric sinks and the data workers' init as values (jobs passes them)."""
    offending = [where for source, target, where in _edges() if source == "train" and target in {"jobs", "commands"}]
    assert not offending


def test_nothing_imports_the_commands() -> None:
    offending = [where for source, target, where in _edges() if target == "commands" and source != "commands"]
    assert not offending


def test_no_library_module_runs_as_a_program() -> None:
    """A command is a module of dinolite/commands; no library module has a ``__main__`` block or file."""
    programs = []
    for path in _source_files():
        if path.relative_to(PACKAGE_ROOT).parts[0] == "commands":
            continue
        if path.name == "__main__.py" or 'if __name__ == "__main__"' in path.read_text():
            programs.append(str(path.relative_to(PACKAGE_ROOT.parent)))
    assert not programs, f"move the command line to dinolite/commands/: {programs}"


def _is_nested_import(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside a function or class (module-level ``try``/``if`` blocks still count as the top)."""
    parent = parents.get(node)
    while parent is not None:
        if isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return True
        parent = parents.get(parent)
    return False


def test_imports_inside_functions_say_why() -> None:
    """Imports belong at the top of a file; the exceptions (optional dependencies, a heavy import kept
    off a light path) carry a comment on the line or the line above that says why."""
    unexplained = []
    for path in _source_files():
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines), filename=str(path))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and _is_nested_import(node, parents):
                line = lines[node.lineno - 1]
                above = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
                if "#" not in line and not above.startswith("#"):
                    unexplained.append(f"{path.relative_to(PACKAGE_ROOT.parent)}:{node.lineno}: {line.strip()}")
    assert not unexplained, "imports inside functions without a reason:\n" + "\n".join(unexplained)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_table_names_real_packages(layer: str) -> None:
    assert (PACKAGE_ROOT / layer).is_dir() or (PACKAGE_ROOT / f"{layer}.py").is_file()
