"""The batches a run trains on: the checks on ``data.source`` and the evaluation data it brings, the
source itself (a built-in set, ``[digits]`` or ``[fashion_mnist]``, built under the run's folder) and the stream of collated batches.

This is where the config's ``data`` and ``train`` keys are turned into the loader's plain
:class:`~dinolite.data.loader.LoaderOptions`, so that ``dinolite.data`` never sees the config tree. A
:class:`~dinolite.train.run.Run` opens its stream through a :data:`BatchStreamFactory`: by default
:func:`build_data_stream` over :func:`resolve_train_source`; tests, benchmarks and the golden step pass
their own (e.g. seeded random batches).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator, Iterator, Sequence

from dinolite.config import Config, ConfigError, dinov2_dataset_hint
from dinolite.data.builtin_sets import builtin_set, builtin_sets_text, misspelt_builtin_set, prepare_builtin_set
from dinolite.data.loader import LoaderOptions, build_train_loader


def check_data_source(cfg: Config) -> None:
    """A run that reads ``data.source`` needs one; DINOv2's data set names are not paths (the error says
    what to pass); a one-entry source that is no file but nearly a built-in set's name is a typo."""
    if not cfg.data.source:
        raise ConfigError(f"data.source is empty: give shard patterns, an image folder, or {builtin_sets_text()}")
    for source in cfg.data.source:
        hint = None if Path(source).exists() else dinov2_dataset_hint(source)
        if hint is not None:
            raise ConfigError(f"invalid value for 'data.source': {hint}")
    meant = misspelt_builtin_set(cfg.data.source)
    if meant is not None:
        raise ConfigError(
            f"invalid value for 'data.source': {list(cfg.data.source)} is no file or folder; did you mean [{meant}]?"
        )


def validate_training_config(cfg: Config) -> None:
    """Checks that need several sections at once (the config module checks single keys; a method's
    builder checks its own sections): the data source, and the evaluation data the loop and the job's
    end-of-run kNN need."""
    check_data_source(cfg)
    knn = cfg.evaluation
    own_eval = builtin_set(cfg.data.source) is not None
    only = f"only a built-in data.source, {builtin_sets_text()}, brings its own"
    if knn.knn_at_end and not (knn.knn_train and knn.knn_val) and not own_eval:
        raise ConfigError(
            f"invalid value for 'evaluation.knn_at_end': true, but evaluation.knn_train={list(knn.knn_train)} / "
            f"evaluation.knn_val={list(knn.knn_val)} are not both set ({only}); "
            "set both to labelled folders or shards, or evaluation.knn_at_end=false"
        )
    if knn.online_every > 0 and not (knn.knn_train and knn.knn_val) and not own_eval:
        raise ConfigError(
            f"invalid value for 'evaluation.online_every': {knn.online_every}, but evaluation.knn_train="
            f"{list(knn.knn_train)} / evaluation.knn_val={list(knn.knn_val)} are not both set ({only}); "
            "set both to labelled folders or shards, or evaluation.online_every=0"
        )


def resolve_train_source(cfg: Config, output_dir: Path, is_main: bool, barrier: Callable[[], None]) -> list[str]:
    """``data.source``, with a built-in set (``[digits]``, ``[fashion_mnist]``) replaced by its training
    shards, built under ``output_dir/data`` (rank 0 builds)."""
    name = builtin_set(cfg.data.source)
    if name is None:
        return list(cfg.data.source)

    root = output_dir / "data"
    if is_main:
        prepare_builtin_set(name, root)
    barrier()
    return list(prepare_builtin_set(name, root)["train"])  # idempotent: reads back what rank 0 wrote


@dataclass(frozen=True)
class StreamRequest:
    """What a run asks of its batch stream: the batches from ``start_batch`` on (= optimizer steps already
    taken), for ``rank`` of ``world_size``, made with the method's views (``transform``, one image ->
    its views) and ``collate_fn`` (``MethodSpec.build_transform`` / ``build_collate``)."""

    cfg: Config
    rank: int
    world_size: int
    start_batch: int
    transform: Callable[..., Any]
    collate_fn: Callable[..., dict[str, Any]]


# Opens a run's stream. Batch ``b`` must depend only on (config, rank, world size, b), whatever
# ``start_batch`` the stream opened at: that is what makes a resumed run equal an uninterrupted one.
BatchStreamFactory = Callable[[StreamRequest], Iterator[dict[str, Any]]]


def loader_options(cfg: Config, rank: int = 0, world_size: int = 1) -> LoaderOptions:
    """The loader's options from the config's ``train`` and ``data`` keys, for ``rank`` of ``world_size``."""
    return LoaderOptions(
        batch_size=cfg.train.batch_size_per_gpu,
        num_workers=cfg.data.num_workers,
        seed=cfg.train.seed,
        rank=rank,
        world_size=world_size,
        shuffle_buffer=cfg.data.shuffle_buffer,
        max_image_pixels=cfg.data.max_image_pixels,
        max_sample_bytes=cfg.data.max_sample_bytes,
        shuffle_buffer_bytes=cfg.data.shuffle_buffer_bytes,
        max_skip_fraction=cfg.data.decode_errors_max_fraction,
        skip_window=cfg.data.decode_errors_window,
    )


def build_data_stream(
    request: StreamRequest, source: Sequence[str], worker_init_fn: Callable[[int], None] | None = None
) -> Iterator[dict[str, Any]]:
    """The infinite, deterministic batch stream of ``source`` (:func:`resolve_train_source`), positioned
    after ``request.start_batch`` consumed batches.

    ``worker_init_fn`` runs in each loader worker (``dinolite-train`` passes
    :func:`dinolite.jobs.stop_signals.ignore_stop_signals`: a group-wide SIGTERM / Ctrl-C must not kill the
    workers before the trainer checkpoints).
    """
    options = loader_options(request.cfg, request.rank, request.world_size)
    loader = build_train_loader(
        list(source), request.transform, request.collate_fn, options, request.start_batch, worker_init_fn
    )
    return _released_on_close(iter(loader))


def _released_on_close(batches: Iterator[dict[str, Any]]) -> Generator[dict[str, Any], None, None]:
    """``batches`` as a generator whose ``close()`` drops the loader's iterator at once: its worker
    processes are shut down then (when the last reference goes), not whenever the run object is collected."""
    try:
        yield from batches
    finally:
        del batches
