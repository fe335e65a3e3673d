"""train_in_job: train() with what a job supplies (the stop flag, trackers of train.loggers, data workers
that ignore the stop signals); train() itself never imports jobs, so it takes them as values (RunHooks).
How a Run uses the trackers: tests/train/test_run.py."""

from __future__ import annotations

from pathlib import Path

from dinolite.config import load_config
from dinolite.jobs import training
from dinolite.jobs.stop_signals import ignore_stop_signals
from dinolite.jobs.trackers import build_trackers
from dinolite.train.run import RunHooks


def test_train_in_job_passes_the_trackers_and_the_data_workers_init(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(training, "train", lambda *args, **kwargs: calls.append((args, kwargs)) or "result")
    stop = lambda: False  # noqa: E731
    assert training.train_in_job("cfg", tmp_path, "env", stop) == "result"
    ((args, kwargs),) = calls
    assert args == ("cfg", tmp_path, "env")
    assert kwargs == {
        "objective": None,
        "hooks": RunHooks(stop, metric_sinks=build_trackers, data_worker_init=ignore_stop_signals),
    }


def _failing_start(output_dir: Path):
    # the data source is checked after the run folder and its config.yaml are written
    return load_config(
        "demo",
        [
            f"train.output_dir={output_dir}",
            f"data.source=[{output_dir.parent / 'no_such_images'}]",
            "evaluation.knn_at_end=false",
            "evaluation.online_every=0",
        ],
    )


def test_a_failed_start_leaves_no_run_folder(tmp_path):
    output_dir = tmp_path / "run"
    try:
        training.run_training_job(_failing_start(output_dir))
    except ValueError as exc:
        assert "matches no file" in str(exc)
    assert not output_dir.exists()


def test_a_failed_start_keeps_a_folder_that_existed_before(tmp_path):
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    (output_dir / "notes.txt").write_text("mine")
    try:
        training.run_training_job(_failing_start(output_dir))
    except ValueError:
        pass
    assert (output_dir / "notes.txt").read_text() == "mine"


def test_a_folder_with_logged_metrics_or_a_checkpoint_is_never_removed(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"iteration": 1}\n')
    assert not training.remove_failed_start(tmp_path)
    assert (tmp_path / "metrics.jsonl").exists()
    (tmp_path / "metrics.jsonl").unlink()
    (tmp_path / "config.yaml").write_text("train: {}\n")
    assert training.remove_failed_start(tmp_path) and not tmp_path.exists()
