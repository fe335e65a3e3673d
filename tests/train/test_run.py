"""A Run: built from a config and the process environment, it steps, saves, resumes and closes.

The batches are test_loop.py's deterministic stand-in (``batches=fake_stream``); one process on CPU.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from pathlib import Path

import pytest
import torch

from dinolite.config import ConfigError, load_config
from dinolite.distributed import DistributedEnv
from dinolite.train.batches import StreamRequest
from dinolite.train.build import build_run
from dinolite.train.logging import LOGGER_NAME
from dinolite.train.run import Run, RunHooks
from tests.train.test_loop import TINY, fake_stream, one_thread, records, tiny_config, train  # noqa: F401 (one_thread: autouse)

CPU = DistributedEnv()


def steps(run: Run, n: int) -> list[float]:
    return [float(run.step(run.next_batch()).output.loss.detach()) for _ in range(n)]


def state(run: Run) -> dict[str, torch.Tensor]:
    """Every tensor a checkpoint restores: objective (student, teacher, centres) and AdamW's moments."""
    tensors = {f"model.{k}": v for k, v in run.objective.state_dict().items()}
    for index, moments in run.optimizer.state_dict()["state"].items():
        tensors.update({f"optimizer.{index}.{k}": v for k, v in moments.items() if isinstance(v, torch.Tensor)})
    return tensors


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    differing = [key for key in a if not torch.equal(a[key], b[key])]
    assert not differing, differing[:8]


def test_a_run_without_output_dir_steps_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("demo", TINY)
    with build_run(cfg, CPU, batches=fake_stream) as run:
        before = {k: v.detach().clone() for k, v in run.objective.student.named_parameters()}
        losses = steps(run, 3)
        assert run.iteration == 3 and all(torch.isfinite(torch.tensor(losses)))
        moved = [k for k, v in run.objective.student.named_parameters() if not torch.equal(v, before[k])]
        assert "backbone.blocks.0.attn.qkv.weight" in moved
        assert run.checkpoints is None and run.sharding is None and not run.logger.enabled
        with pytest.raises(RuntimeError, match="no output_dir: there is nowhere to save"):
            run.save()
    assert list(tmp_path.iterdir()) == []


def test_a_run_steps_on_batches_it_is_given(tmp_path):
    cfg = load_config("demo", TINY)
    batch = next(fake_stream(StreamRequest(cfg, 0, 1, 0, transform=None, collate_fn=None)))
    with build_run(cfg, CPU) as run:  # data.source=[digits] is never opened: no batch is drawn
        result = run.step(batch)
    assert run.iteration == 1 and set(result.output.terms) == {"dino_loss", "ibot_loss", "koleo_loss"}
    assert result.values["lr"] == 0.0  # the first warm-up iteration of the schedules


def test_start_at_moves_the_schedules_and_the_stream_not_the_weights():
    cfg = load_config("demo", TINY)
    opened: list[int] = []

    def recording_stream(request: StreamRequest):
        opened.append(request.start_batch)
        return fake_stream(request)

    with build_run(cfg, CPU, batches=recording_stream) as fresh, build_run(cfg, CPU, batches=recording_stream) as later:
        later.start_at(6)
        assert_bitwise_equal(state(fresh), state(later))  # the same initial weights
        first, sixth = fresh.step(fresh.next_batch()), later.step(later.next_batch())
        assert opened == [0, 6] and later.iteration == 7
        assert first.values["lr"] == 0.0 < sixth.values["lr"]  # warm-up's first iteration vs the cosine
        assert sixth.values["lr"] == later.training_step.schedules.at(6)["lr"]  # the step ran iteration 6
        with pytest.raises(RuntimeError, match="only a fresh run"):
            later.start_at(0)
        with pytest.raises(ValueError, match=">= 0"):
            fresh.start_at(-1)


@pytest.mark.numerics
def test_save_and_resume_through_the_run_equal_the_uninterrupted_run_bitwise(tmp_path):
    cfg = load_config("demo", TINY)
    with build_run(cfg, CPU, tmp_path / "straight", batches=fake_stream) as straight:
        assert straight.resume() is None  # an empty folder: a fresh run
        steps(straight, 5)
        straight.save()
    with build_run(cfg, CPU, tmp_path / "split", batches=fake_stream) as first:
        first.resume()
        steps(first, 2)
        saved = first.save()
    assert saved == tmp_path / "split" / "checkpoints" / "iter_00000002"
    with build_run(cfg, CPU, tmp_path / "split", batches=fake_stream) as second:
        assert second.resume() == saved and second.iteration == 2
        steps(second, 3)
        second.save()
    assert_bitwise_equal(state(straight), state(second))
    assert [r["iteration"] for r in records(tmp_path / "split")] == []  # the loop logs, not the Run


def test_the_stream_opens_at_the_resumed_iteration(tmp_path):
    cfg = load_config("demo", TINY)
    opened: list[int] = []

    def recording_stream(request: StreamRequest):
        opened.append(request.start_batch)
        assert request.transform is not None and request.collate_fn is not None  # the method's views
        return fake_stream(request)

    for _ in range(2):
        with build_run(cfg, CPU, tmp_path, batches=recording_stream) as run:
            run.resume()
            steps(run, 3)
            run.save()
    assert opened == [0, 3]
    assert json.loads((tmp_path / "checkpoints" / "iter_00000006" / "state.json").read_text())["batches_consumed"] == 6


def test_a_run_with_an_output_dir_resumes_before_anything_else(tmp_path):
    cfg = load_config("demo", TINY)
    with build_run(cfg, CPU, tmp_path, batches=fake_stream) as run:
        for attempt in (run.next_batch, run.save, lambda: run.logger):
            with pytest.raises(RuntimeError, match=r"before resume\(\)"):
                attempt()
        run.resume()
        with pytest.raises(RuntimeError, match="already called"):
            run.resume()
    assert (tmp_path / "config.yaml").is_file()


def test_added_state_is_checkpointed_and_restored(tmp_path):
    class Counter:
        def __init__(self) -> None:
            self.count = 0

        def state_dict(self) -> dict[str, int]:
            return {"count": self.count}

        def load_state_dict(self, state) -> None:
            self.count = int(state["count"])

    cfg = load_config("demo", TINY)
    with build_run(cfg, CPU, tmp_path, batches=fake_stream) as run:
        counter = Counter()
        run.add_state("counter", counter)
        with pytest.raises(ValueError, match="already holds 'model'"):
            run.add_state("model", counter)
        run.resume()
        counter.count = 7
        run.save()
        with pytest.raises(RuntimeError, match="after resume"):
            run.add_state("late", Counter())
    with build_run(cfg, CPU, tmp_path, batches=fake_stream) as again:
        restored = Counter()
        again.add_state("counter", restored)
        again.resume()
    assert restored.count == 7


def test_close_releases_the_loader_workers_and_the_metric_log(tmp_path):
    """The real data path (digits shards under the run's folder, one loader worker): closing the run shuts
    the worker down at once and closes the metric log with its trackers; a closed run refuses to go on."""
    cfg = load_config("demo", [*TINY, "data.num_workers=1", "train.loggers=[mlflow]"])
    sink = Sink()
    before = set(multiprocessing.active_children())
    run = build_run(cfg, CPU, tmp_path, hooks=RunHooks(metric_sinks=lambda config, output_dir: [sink]))
    with run:
        run.resume()
        steps(run, 1)
        assert set(multiprocessing.active_children()) - before  # the loader's worker process
        assert not sink.closed
    assert set(multiprocessing.active_children()) == before and sink.closed
    for attempt in (run.next_batch, run.save, run.resume, lambda: run.step({})):
        with pytest.raises(RuntimeError, match="closed"):
            attempt()
    run.close()  # idempotent


def test_digits_need_an_output_dir_to_be_built_in(tmp_path):
    with build_run(load_config("demo", TINY), CPU) as run:
        with pytest.raises(ConfigError, match=r"data.source=\[digits\] builds its shards under the run's output_dir"):
            run.next_batch()


def test_stop_requested_comes_from_the_hook():
    calls: list[int] = []
    hooks = RunHooks(stop_requested=lambda: bool(calls.append(1)) or len(calls) >= 2)
    with build_run(load_config("demo", TINY), CPU, hooks=hooks) as run:
        assert [run.stop_requested(), run.stop_requested()] == [False, True]
    with build_run(load_config("demo", TINY), CPU) as run:
        assert run.stop_requested() is False


class Sink:
    def __init__(self) -> None:
        self.logged: list[int] = []
        self.closed = False

    def log(self, metrics, step: int) -> None:
        self.logged.append(step)

    def close(self) -> None:
        self.closed = True


def test_trackers_are_built_on_the_main_process_only(tmp_path):
    cfg = load_config("demo", [*TINY, "train.loggers=[mlflow]"])
    built: list[tuple[object, Path]] = []
    sink = Sink()

    def make(config, output_dir: Path):
        built.append((config, output_dir))
        return [sink]

    worker = build_run(cfg, CPU, tmp_path / "worker", batches=fake_stream, hooks=RunHooks(metric_sinks=make))
    worker.env = DistributedEnv(rank=1, world_size=2)  # as seen on another rank: it writes no records
    with worker:
        worker.resume()
        assert built == [] and not worker.logger.enabled
    with build_run(cfg, CPU, tmp_path / "main", batches=fake_stream, hooks=RunHooks(metric_sinks=make)) as main:
        main.resume()
        assert built == [(cfg, tmp_path / "main")] and main.logger.trackers == [sink]
    assert sink.closed


def test_train_loggers_without_a_sink_factory_are_reported_as_ignored(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        with build_run(
            load_config("demo", [*TINY, "train.loggers=[wandb]"]), CPU, tmp_path / "a", batches=fake_stream
        ) as run:
            run.resume()
        assert "train.loggers=['wandb'] is ignored" in caplog.text
        caplog.clear()
        with build_run(load_config("demo", TINY), CPU, tmp_path / "b", batches=fake_stream) as run:
            run.resume()
        assert "is ignored" not in caplog.text


@pytest.mark.numerics
def test_train_is_the_loop_over_a_run(tmp_path):
    """train() on a folder leaves the checkpoint that stepping a Run on another folder leaves."""
    result = train(tiny_config(tmp_path / "loop"))
    with build_run(tiny_config(tmp_path / "run"), CPU, tmp_path / "run", batches=fake_stream) as run:
        run.resume()
        steps(run, run.stop_at)
        run.save()
    with build_run(tiny_config(tmp_path / "loop"), CPU, tmp_path / "loop", batches=fake_stream) as trained:
        assert trained.resume() == result.checkpoint_path and trained.iteration == result.iteration == 8
    assert_bitwise_equal(state(trained), state(run))
