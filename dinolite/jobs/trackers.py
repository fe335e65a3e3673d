"""Experiment trackers (``train.loggers``): every ``metrics.jsonl`` record also goes to wandb / MLflow.

Each tracker is a :class:`~dinolite.train.logging.MetricSink`; :func:`build_trackers` is what
``dinolite.jobs.training.train_in_job`` hands the trainer as ``make_metric_sinks``.

Both are optional dependencies (``pip install dinolite[wandb]`` / ``dinolite[mlflow]``), imported only
when a run asks for them. Only the main process builds trackers (the metric logger is disabled on the
others). A run directory keeps its tracker run ids in ``trackers.json``, so a resumed run (the same
``output_dir``) continues the same tracker run instead of starting a new one.

- wandb: ``wandb.init(project=train.wandb_project, dir=output_dir, config=<resolved config>)``; its
  own environment variables apply (``WANDB_MODE=offline`` writes under ``output_dir/wandb`` without an
  account; ``wandb sync`` uploads later).
- MLflow: tracking URI ``train.mlflow_tracking_uri`` (empty: ``sqlite:///<output_dir>/mlflow.db``, a
  local file; MLflow's ``./mlruns`` file store is deprecated), experiment named ``train.wandb_project``,
  the flattened config as parameters, metrics with ``step=iteration``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dinolite.config import Config, to_dict
from dinolite.extras import optional_import
from dinolite.io import write_json_atomic
from dinolite.train.logging import MetricSink

RUN_IDS_FILE = "trackers.json"
MLFLOW_PARAM_MAX_CHARS = 500  # MLflow's limit on a parameter value in older servers; longer ones are cut


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}`` (lists kept as values)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _run_ids(output_dir: Path) -> dict[str, str]:
    path = output_dir / RUN_IDS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _remember_run_id(output_dir: Path, name: str, run_id: str) -> None:
    ids = _run_ids(output_dir)
    if ids.get(name) != run_id:
        write_json_atomic(output_dir / RUN_IDS_FILE, {**ids, name: run_id})


class WandbTracker:
    def __init__(self, cfg: Config, output_dir: Path) -> None:
        # wandb is an optional dependency (the `wandb` extra): imported only when train.loggers asks for it.
        wandb = optional_import("wandb", extra="wandb", purpose="train.loggers=[wandb]")

        self._wandb = wandb
        run_id = _run_ids(output_dir).get("wandb") or secrets.token_hex(4)  # wandb ids: [a-z0-9]
        self.run = wandb.init(
            project=cfg.train.wandb_project,
            dir=str(output_dir),
            config=to_dict(cfg),
            id=run_id,
            name=output_dir.name,
            resume="allow",
            reinit="finish_previous",
        )
        _remember_run_id(output_dir, "wandb", run_id)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    def __init__(self, cfg: Config, output_dir: Path) -> None:
        # mlflow is an optional dependency (the `mlflow` extra): imported only when train.loggers asks for it.
        entities = optional_import("mlflow.entities", extra="mlflow", purpose="train.loggers=[mlflow]")
        tracking = optional_import("mlflow.tracking", extra="mlflow", purpose="train.loggers=[mlflow]")
        MlflowClient = tracking.MlflowClient

        self._metric = entities.Metric
        uri = cfg.train.mlflow_tracking_uri or f"sqlite:///{(output_dir / 'mlflow.db').absolute()}"
        self.client = MlflowClient(tracking_uri=uri)
        run_id = _run_ids(output_dir).get("mlflow")
        if run_id is None:
            experiment = self.client.get_experiment_by_name(cfg.train.wandb_project)
            experiment_id = (
                experiment.experiment_id
                if experiment
                else self.client.create_experiment(
                    cfg.train.wandb_project, artifact_location=(output_dir / "mlartifacts").absolute().as_uri()
                )
            )
            run_id = self.client.create_run(experiment_id, run_name=output_dir.name).info.run_id
            for key, value in flatten(to_dict(cfg)).items():
                self.client.log_param(run_id, key, str(value)[:MLFLOW_PARAM_MAX_CHARS])
            _remember_run_id(output_dir, "mlflow", run_id)
        self.run_id = run_id
        self.tracking_uri = uri

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        timestamp = int(time.time() * 1000)
        batch = [self._metric(key, float(value), timestamp, step) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


TRACKER_TYPES = {"wandb": WandbTracker, "mlflow": MlflowTracker}


def build_trackers(cfg: Config, output_dir: str | Path) -> list[MetricSink]:
    """One tracker per name in ``train.loggers`` (validated by the config: wandb, mlflow)."""
    output_dir = Path(output_dir)
    return [TRACKER_TYPES[name](cfg, output_dir) for name in cfg.train.loggers]
