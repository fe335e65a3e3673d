"""Every numeric option of every command line is range-checked when it is parsed (dinolite.cli's helpers).

A value that cannot make sense (0 epochs, a NaN temperature, a negative worker count) is one argparse
error naming the option and the value, before a model is loaded or an image read. Each row of
``REFUSED`` is one case: the command line, the option and the value; the next case is one more line.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Callable

import pytest

from dinolite.cli import bounded, check_output_path, positive_int, refuse_option

# Command line -> its module (each has build_parser) and the arguments it requires.
CLIS: dict[str, tuple[str, list[str]]] = {
    "knn": ("dinolite.commands.knn", ["--backbone", "b", "--train", "t", "--val", "v"]),
    "linear": ("dinolite.commands.linear", ["--backbone", "b", "--train", "t", "--val", "v"]),
    "segmentation": ("dinolite.commands.segmentation", ["--backbone", "b", "--data", "d", "--num-classes", "3"]),
    "visualize": ("dinolite.commands.visualize", ["--backbone", "b", "--images", "i", "--output", "o"]),
    "attention_segmentation": (
        "dinolite.commands.attention_segmentation",
        ["--backbone", "b", "--data", "d", "--output", "o"],
    ),
    "train": ("dinolite.commands.train", []),
    "slurm": ("dinolite.commands.slurm", ["--config", "demo"]),
    "lab": ("dinolite.commands.lab", ["--matrix", "seeds"]),
    "export": ("dinolite.commands.export", ["--checkpoint", "c"]),
    "shards": ("dinolite.commands.shards", ["src", "out"]),
    "info": ("dinolite.commands.info", []),
    "summary": ("dinolite.commands.summary", []),
    "plan": ("dinolite.commands.plan", []),
}

# (command line, option, value): each must be refused at parse time, naming the option and the value.
REFUSED: list[tuple[str, str, str]] = [
    # kNN (issue 24 items 5 and 7)
    ("knn", "--temperature", "0"),
    ("knn", "--temperature", "-1"),
    ("knn", "--temperature", "nan"),
    ("knn", "--temperature", "inf"),
    ("knn", "--chunk-size", "0"),
    ("knn", "--ks", "0"),
    ("knn", "--headline-k", "-3"),
    ("knn", "--num-classes", "0"),
    ("knn", "--shots", "0"),
    ("knn", "--train-fraction", "0"),
    ("knn", "--train-fraction", "1.5"),
    ("knn", "--train-fraction", "nan"),
    ("knn", "--few-shot-seed", "-1"),
    # options every eval CLI shares
    ("knn", "--mean", "nan"),
    ("knn", "--std", "0"),
    ("knn", "--crop-size", "0"),
    ("knn", "--resize-size", "-5"),
    ("knn", "--batch-size", "0"),
    ("knn", "--num-workers", "-1"),
    ("knn", "--seed", "99999999999999999999999"),
    # linear probe
    ("linear", "--learning-rates", "nan"),
    ("linear", "--learning-rates", "-0.1"),
    ("linear", "--epochs", "-1"),
    ("linear", "--epochs", "0"),
    ("linear", "--probe-batch-size", "0"),
    ("linear", "--n-blocks", "0"),
    ("linear", "--epoch-length", "0"),
    ("linear", "--heldout-fraction", "1"),
    ("linear", "--heldout-fraction", "-0.1"),
    # segmentation
    ("segmentation", "--iterations", "0"),
    ("segmentation", "--iterations", "-2"),
    ("segmentation", "--crop-size", "0"),
    ("segmentation", "--stride", "0"),
    ("segmentation", "--lr", "nan"),
    ("segmentation", "--num-classes", "0"),
    ("segmentation", "--num-classes", "256"),
    ("segmentation", "--std", "-1"),
    # visualize
    ("visualize", "--size", "0"),
    ("visualize", "--max-grid-images", "-1"),
    ("visualize", "--foreground-threshold", "nan"),
    ("visualize", "--batch-size", "0"),
    ("visualize", "--mean", "inf"),
    # attention segmentation
    ("attention_segmentation", "--mass", "0"),
    ("attention_segmentation", "--mass", "1.5"),
    ("attention_segmentation", "--ink-threshold", "nan"),
    ("attention_segmentation", "--min-object-fraction", "0"),
    ("attention_segmentation", "--max-images", "0"),
    ("attention_segmentation", "--grid-images", "-1"),
    ("attention_segmentation", "--random-init-seed", "-1"),
    # training launchers and tools
    ("slurm", "--nodes", "0"),
    ("slurm", "--gpus-per-node", "-1"),
    ("slurm", "--tasks-per-node", "0"),
    ("slurm", "--cpus-per-task", "0"),
    ("slurm", "--mem-gb", "nan"),
    ("slurm", "--time", "0"),
    ("slurm", "--signal-delay-s", "-5"),
    ("slurm", "--max-requeues", "-1"),
    ("lab", "--array-parallelism", "0"),
    ("lab", "--nodes", "0"),
    ("shards", "--shard-size", "0"),
    ("shards", "--workers", "0"),
    ("shards", "--max-side", "0"),
]

# Values at the edge of each range that must still be accepted.
ACCEPTED: list[tuple[str, str, str]] = [
    ("visualize", "--max-grid-images", "0"),  # 0: every image
    ("slurm", "--gpus-per-node", "0"),  # a CPU job
    ("slurm", "--max-requeues", "0"),
    ("linear", "--heldout-fraction", "0"),
    ("knn", "--train-fraction", "1"),
    ("knn", "--num-workers", "0"),
    ("knn", "--temperature", "1e-4"),
    ("knn", "--mean", "-2.5"),
    ("visualize", "--foreground-threshold", "1"),
    ("attention_segmentation", "--mass", "1"),
    ("attention_segmentation", "--ink-threshold", "0"),
    ("attention_segmentation", "--grid-images", "0"),
]


def _parser(cli: str) -> argparse.ArgumentParser:
    return importlib.import_module(CLIS[cli][0]).build_parser()


def _argv(cli: str, option: str, value: str, parser: argparse.ArgumentParser) -> list[str]:
    nargs = next(a.nargs for a in parser._actions if option in a.option_strings)
    values = [value] * nargs if isinstance(nargs, int) else [value]
    return CLIS[cli][1] + [f"{option}={value}"] if nargs is None else CLIS[cli][1] + [option, *values]


@pytest.mark.parametrize(("cli", "option", "value"), REFUSED, ids=[f"{c} {o} {v}" for c, o, v in REFUSED])
def test_refused_at_parse_time(cli: str, option: str, value: str, capsys) -> None:
    parser = _parser(cli)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(_argv(cli, option, value, parser))
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"error: argument {option}" in last and repr(value) in last, last


@pytest.mark.parametrize(("cli", "option", "value"), ACCEPTED, ids=[f"{c} {o} {v}" for c, o, v in ACCEPTED])
def test_range_edges_accepted(cli: str, option: str, value: str) -> None:
    parser = _parser(cli)
    args = parser.parse_args(_argv(cli, option, value, parser))
    dest = next(a.dest for a in parser._actions if option in a.option_strings)
    parsed = getattr(args, dest)
    assert (parsed[0] if isinstance(parsed, list) else parsed) == float(value)


@pytest.mark.parametrize("cli", sorted(CLIS))
def test_every_numeric_option_is_range_checked(cli: str) -> None:
    """No option parses with a bare int/float: each goes through a dinolite.cli helper (or choices)."""
    bare = [
        a.option_strings[0]
        for a in _parser(cli)._actions
        if a.type in (int, float) and not a.choices  # `choices` bounds a value as well
    ]
    assert not bare, f"{cli}: {bare} parse with a bare int/float; use dinolite.cli.positive_int & co."


@pytest.mark.parametrize(
    ("make", "text", "message"),
    [
        (lambda: positive_int, "1e3", "expected an integer >= 1, got '1e3'"),
        (lambda: bounded(float, 0, 1, exclusive_maximum=True), "1", "in [0, 1), got '1'"),
        (lambda: bounded(float, 0, exclusive_minimum=True), "-inf", "> 0, got '-inf'"),
        (lambda: bounded(int, maximum=3), "4", "an integer <= 3, got '4'"),
    ],
)
def test_bounded_messages(make: Callable, text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as error:
        make()(text)
    assert message in str(error.value)


# --output / --cache-dir: (what exists at the path, is a directory expected, error fragment)
OUTPUT_CASES = [
    ("dir", False, "is a directory; give a file name"),
    ("file", True, "exists and is not a directory"),
    ("file/inside.json", False, "is not a directory"),
    ("file/sub/inside.json", False, "is not a directory"),
]


@pytest.mark.parametrize(("relative", "directory", "fragment"), OUTPUT_CASES)
def test_unusable_output_path(tmp_path, relative: str, directory: bool, fragment: str) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match=fragment):
        check_output_path(tmp_path / relative, "--output", directory=directory)


def test_usable_output_paths_leave_nothing_behind(tmp_path) -> None:
    check_output_path(tmp_path / "new" / "deeper" / "r.json", "--output")
    check_output_path(tmp_path / "figures", "--output", directory=True)
    check_output_path(tmp_path / "r.json", "--output")
    assert list(tmp_path.iterdir()) == []  # the probe file is removed, no folder created


@pytest.mark.parametrize(("argv", "takes_value"), [(["--eval-only"], False), (["--eval", "linear"], True)])
def test_a_refused_option_says_what_to_do_instead_and_is_hidden(argv, takes_value, capsys) -> None:
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--kept", action="store_true")
    refuse_option(parser, argv[0], reason="run dinolite-knn instead", takes_value=takes_value)
    assert vars(parser.parse_args(["--kept"])) == {"kept": True}  # nothing added when the option is absent
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--kept", *argv])
    assert exit_info.value.code == 2
    assert f"tool: error: {argv[0]}: run dinolite-knn instead" in capsys.readouterr().err
    assert argv[0] not in parser.format_help()
