"""train_in_job: train() with what a job supplies (the stop flag, trackers of train.loggers, data workers
that ignore the stop signals); train() itself never imports jobs, so it takes them as values (RunHooks).
How a Run uses the trackers: tests/train/test_run.py."""

from __future__ import annotations

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
