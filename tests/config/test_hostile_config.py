"""Hostile config and lab-matrix files (issue 24, items 1 and 7): a file is data. Each case is one row.

A config, preset, override, lab matrix or a run folder's saved ``config.yaml`` that asks for a shell
command (a ``pipe:`` source) or reaches outside itself through an OmegaConf resolver (``${oc.env:...}``,
``${oc.decode:...}``, any registered one) is refused without the user's grant, with the file and the key
named; nothing runs and no secret is read. To add a case: add a row to ``CASES``.

Placeholders in a row's text: ``TMP`` (the test's folder), ``MARKER`` (a file that must never appear),
``SECRET`` (the name of an environment variable holding a value that must never be read).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dinolite.config import (
    ConfigError,
    OptIns,
    config_from_dict,
    load_config,
    save_config,
    to_dict,
    to_yaml,
)
from dinolite.config.opt_ins import ENV_INTERPOLATION_VARIABLE, PIPE_SOURCES_VARIABLE
from dinolite.lab.matrix_plan import plan_matrix
from dinolite.lab.traces import read_run_config

SECRET = "DINOLITE_TEST_SECRET"
SECRET_VALUE = "hunter2-do-not-leak"
MATRIX = """\
name: hostile
output_dir: TMP/lab
iterations: 10
measurements: {every: 5, spectra: 1}
runs:
  - {label: a, preset: demo, expect: healthy}
"""


def _matrix(**replace: str) -> str:
    text = MATRIX
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


# (kind, file text or overrides, what the error must match). kind: "config" = load_config(TMP/c.yaml),
# "overrides" = load_config("demo", the row's overrides), "matrix" = plan_matrix(TMP/m.yaml),
# "run folder" = read_run_config(TMP/run) (a saved config.yaml read back, as resume, eval, export and
# the lab do).
CASES = [
    pytest.param(
        "config",
        'data:\n  source: ["pipe:touch MARKER; cat /dev/null"]\n',
        r"c\.yaml: data\.source\[0\] = 'pipe:touch .*--allow-pipe-sources",
        id="pipe source in a config",
    ),
    pytest.param(
        "config",
        'data:\n  source: "pipe:touch MARKER"\n',
        r"c\.yaml: data\.source\[0\] = 'pipe:",
        id="pipe source as one string",
    ),
    pytest.param(
        "config",
        'data:\n  source: ["{pipe:touch MARKER,x}.tar"]\n',
        r"c\.yaml: data\.source\[0\] = '\{pipe:",
        id="pipe source behind brace expansion",
    ),
    pytest.param(
        "config",
        'train:\n  output_dir: "pipe:touch MARKER"\ndata:\n  source: ["${train.output_dir}"]\n',
        r"c\.yaml with its overrides \(resolved\): data\.source\[0\] = 'pipe:",
        id="pipe source assembled by an interpolation",
    ),
    pytest.param(
        "config",
        'train:\n  dataset_path: "pipe:touch MARKER"\n',
        r"c\.yaml: data\.source\[0\] = 'pipe:",
        id="pipe source under DINOv2's key name",
    ),
    pytest.param(
        "overrides",
        ["data.source=[pipe:touch MARKER]"],
        r"overrides: data\.source\[0\] = 'pipe:",
        id="pipe source typed as an override",
    ),
    pytest.param(
        "config",
        'train:\n  mlflow_tracking_uri: "http://host/${oc.env:SECRET}"\n',
        r"c\.yaml: train\.mlflow_tracking_uri = .*'oc\.env'.*--allow-env-interpolation",
        id="environment variable sent to a tracking server",
    ),
    pytest.param(
        "config",
        'train:\n  output_dir: "${oc.env:SECRET,/tmp/x}"\n',
        r"c\.yaml: train\.output_dir = .*'oc\.env'",
        id="environment variable with a default",
    ),
    pytest.param(
        "config",
        'train:\n  output_dir: "${oc.decode:${oc.env:SECRET}}"\n',
        r"c\.yaml: train\.output_dir = .*'oc\.(decode|env)'",
        id="decode resolver around an environment variable",
    ),
    pytest.param(
        "config",
        'train:\n  output_dir: "/runs/${dinolite_test_leak:}"\n',
        r"c\.yaml: train\.output_dir = .*'dinolite_test_leak'",
        id="a resolver another import registered",
    ),
    pytest.param(
        "config",
        'data:\n  source: ["${oc.env:SECRET}"]\n',
        r"c\.yaml: data\.source\[0\] = .*'oc\.env'",
        id="environment variable in a list item",
    ),
    pytest.param(
        "overrides",
        ["train.output_dir=/runs/${oc.env:SECRET}"],
        r"overrides: train\.output_dir = .*'oc\.env'",
        id="environment variable typed as an override",
    ),
    pytest.param(
        "matrix",
        _matrix(
            **{"iterations: 10\n": 'iterations: 10\ndata: ["pipe:touch MARKER"]\neval_train: [TMP]\neval_val: [TMP]\n'}
        ),
        r"m\.yaml: data\[0\] = 'pipe:",
        id="pipe source as a lab matrix's data",
    ),
    pytest.param(
        "matrix",
        _matrix(**{"iterations: 10\n": 'iterations: 10\neval_train: ["pipe:touch MARKER"]\neval_val: [TMP]\n'}),
        r"m\.yaml: eval_train\[0\] = 'pipe:",
        id="pipe source as a lab matrix's evaluation data",
    ),
    pytest.param(
        "matrix",
        _matrix(**{"output_dir: TMP/lab": "output_dir: TMP/${oc.env:SECRET}"}),
        r"m\.yaml: output_dir = .*'oc\.env'",
        id="environment variable in a lab matrix",
    ),
    pytest.param(
        "matrix",
        _matrix(
            **{
                "iterations: 10\n": 'iterations: 10\noverrides: ["train.mlflow_tracking_uri=http://h/${oc.env:SECRET}"]\n'
            }
        ),
        r"m\.yaml: overrides\[0\] = .*'oc\.env'",
        id="environment variable in a lab matrix's overrides",
    ),
    pytest.param(
        "matrix",
        _matrix(**{"preset: demo": "preset: TMP/c.yaml"}),
        r"c\.yaml: data\.source\[0\] = 'pipe:",
        id="lab run whose preset file is hostile",
    ),
    *[
        pytest.param(
            "matrix",
            _matrix(**{"label: a": f"label: {label}"}),
            rf"m\.yaml: runs\[0\]\.label '{label}': <output_dir>/{label} would be the lab's own folder",
            id=f"lab run labelled {label}",
        )
        for label in ("data", "report", "baselines", "slurm_logs", "Report")
    ],
    pytest.param(
        "run folder",
        'data:\n  source: ["pipe:touch MARKER"]\n',
        r"run/config\.yaml: data\.source\[0\] = 'pipe:",
        id="saved run config with a pipe source",
    ),
    pytest.param(
        "run folder",
        'train:\n  mlflow_tracking_uri: "http://host/${oc.env:SECRET}"\n',
        r"run/config\.yaml: train\.mlflow_tracking_uri = .*'oc\.env'",
        id="saved run config reading the environment",
    ),
]
# The preset the "lab run whose preset file is hostile" row points at.
HOSTILE_PRESET = 'data:\n  source: ["pipe:touch MARKER"]\n'


@pytest.fixture
def hostile_env(monkeypatch):
    """A secret in the environment, no grant, and a third-party resolver that would read it."""
    monkeypatch.setenv(SECRET, SECRET_VALUE)
    monkeypatch.delenv(PIPE_SOURCES_VARIABLE, raising=False)
    monkeypatch.delenv(ENV_INTERPOLATION_VARIABLE, raising=False)
    with warnings.catch_warnings():  # omegaconf 2.4 renames it register_resolver; 2.1-2.3 have this one only
        warnings.simplefilter("ignore", UserWarning)
        OmegaConf.register_new_resolver("dinolite_test_leak", lambda: os.environ[SECRET], replace=True)
    yield
    OmegaConf.clear_resolver("dinolite_test_leak")


def _fill(text: str, tmp_path: Path) -> str:
    return text.replace("TMP", str(tmp_path)).replace("MARKER", str(tmp_path / "MARKER")).replace("SECRET", SECRET)


def _load(kind: str, content: str | list[str], tmp_path: Path) -> object:
    if kind == "overrides":
        return load_config("demo", [_fill(item, tmp_path) for item in content])
    if kind == "config":
        path = tmp_path / "c.yaml"
        path.write_text(_fill(content, tmp_path))
        return load_config(path)
    if kind == "matrix":
        (tmp_path / "c.yaml").write_text(_fill(HOSTILE_PRESET, tmp_path))
        path = tmp_path / "m.yaml"
        path.write_text(_fill(content, tmp_path))
        return plan_matrix(path, prepare=False)
    assert kind == "run folder"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(_fill(content, tmp_path))
    return read_run_config(tmp_path / "run")


@pytest.mark.parametrize(("kind", "content", "match"), CASES)
def test_a_file_that_asks_for_a_shell_or_the_environment_is_refused(hostile_env, tmp_path, kind, content, match):
    with pytest.raises(ConfigError, match=match) as info:
        _load(kind, content, tmp_path)
    assert SECRET_VALUE not in str(info.value)
    assert not (tmp_path / "MARKER").exists()


@pytest.mark.parametrize(
    "grant",
    [
        pytest.param({PIPE_SOURCES_VARIABLE: "1"}, id="environment"),
        pytest.param(None, id="OptIns.applied (what --allow-pipe-sources does)"),
    ],
)
def test_the_users_grant_lets_the_same_file_through(hostile_env, tmp_path, monkeypatch, grant):
    path = tmp_path / "c.yaml"
    path.write_text(f'data:\n  source: ["pipe:cat shard.tar"]\ntrain:\n  output_dir: "/runs/${{oc.env:{SECRET}}}"\n')
    for name, value in (grant or {}).items():
        monkeypatch.setenv(name, value)
    with OptIns(pipe_sources=grant is None, env_interpolation=True).applied():
        cfg = load_config(path)
    assert cfg.data.source == ["pipe:cat shard.tar"] and cfg.train.output_dir == f"/runs/{SECRET_VALUE}"
    assert PIPE_SOURCES_VARIABLE not in os.environ or grant  # the grant ends with the block
    assert ENV_INTERPOLATION_VARIABLE not in os.environ


def test_references_to_other_keys_need_no_grant(hostile_env, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text('train:\n  output_dir: "/runs/x"\n  mlflow_tracking_uri: "sqlite:///${train.output_dir}/m.db"\n')
    assert load_config(path).train.mlflow_tracking_uri == "sqlite:////runs/x/m.db"


# A value that, once resolved (with the grant), holds an interpolation: written out and read back
# elsewhere it must stay text, not read OTHER there. (kind of round trip, how the value is read back)
ROUND_TRIPS = [
    pytest.param("save_config", id="run folder config.yaml (resume, eval, export read it back)"),
    pytest.param("to_yaml", id="printed resolved config (--dry-run)"),
    pytest.param("to_dict", id="plain dict handed to a Slurm job (config_from_dict)"),
]


@pytest.mark.parametrize("trip", ROUND_TRIPS)
def test_a_resolved_config_never_carries_an_interpolation_to_be_resolved_later(
    hostile_env, tmp_path, monkeypatch, trip
):
    monkeypatch.setenv("DINOLITE_TEST_OUTER", "${oc.env:DINOLITE_TEST_OTHER}")
    monkeypatch.setenv("DINOLITE_TEST_OTHER", SECRET_VALUE)
    with OptIns(env_interpolation=True).applied():
        cfg = load_config("demo", ["train.mlflow_tracking_uri=http://h/${oc.env:DINOLITE_TEST_OUTER}"])
    literal = "http://h/${oc.env:DINOLITE_TEST_OTHER}"
    assert cfg.train.mlflow_tracking_uri == literal  # what the environment held: text
    if trip == "save_config":
        save_config(cfg, tmp_path / "config.yaml")
        again = load_config(tmp_path / "config.yaml")
    elif trip == "to_yaml":
        (tmp_path / "printed.yaml").write_text(to_yaml(cfg))
        again = load_config(tmp_path / "printed.yaml")
    else:
        assert to_dict(cfg)["train"]["mlflow_tracking_uri"] == literal
        again = config_from_dict(to_dict(cfg))
    assert again.train.mlflow_tracking_uri == literal


# The same files through the programs that read them: one error: line naming the file and the key, and
# the user's flag lets the same command through. (program, its arguments; C = the hostile config,
# M = a matrix whose data is a pipe: source.)
PROGRAMS = [
    pytest.param("dinolite.commands.train", ["--config", "C", "--dry-run"], 1, id="dinolite-train"),
    pytest.param(
        "dinolite.commands.slurm",
        ["--config", "C", "--gpus-per-node", "0", "--output-dir", "TMP/slurm", "--dry-run"],
        2,
        id="dinolite-slurm",
    ),
    pytest.param("dinolite.commands.info", ["--config", "C"], 2, id="dinolite-info"),
    pytest.param("dinolite.commands.summary", ["--config", "C"], 2, id="dinolite.commands.summary"),
    pytest.param("dinolite.commands.lab", ["--matrix", "M", "--report"], 2, id="dinolite-lab"),
]


@pytest.mark.parametrize(("module", "argv", "code"), PROGRAMS)
def test_every_program_refuses_the_file_and_takes_the_users_flag(hostile_env, tmp_path, capsys, module, argv, code):
    main = __import__(module, fromlist=["main"]).main
    config, matrix = tmp_path / "c.yaml", tmp_path / "m.yaml"
    config.write_text(_fill('data:\n  source: ["pipe:touch MARKER; cat /dev/null"]\n', tmp_path))
    lab = MATRIX.replace("iterations: 10\n", 'iterations: 10\ndata: ["pipe:x"]\neval_train: [TMP]\neval_val: [TMP]\n')
    matrix.write_text(_fill(lab, tmp_path))
    argv = [str(config) if a == "C" else str(matrix) if a == "M" else _fill(a, tmp_path) for a in argv]
    assert main(argv) == code
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and "'pipe:" in error[0], error
    assert str(matrix if module == "dinolite.commands.lab" else config) in error[0], error
    assert main([*argv, "--allow-pipe-sources"]) == 0, capsys.readouterr().err
    assert not (tmp_path / "MARKER").exists()
