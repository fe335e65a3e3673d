"""DINOv2's config files and key names load in dinolite (dinolite/config_aliases.py)."""

from __future__ import annotations

import fnmatch
import warnings
from pathlib import Path

import pytest
import yaml

import dinolite.train.methods  # noqa: F401  (registers the methods' config sections)
from dinolite import config_aliases
from dinolite.config import ConfigError, load_config
from dinolite.config_aliases import DINOv2KeyNotice

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "dinov2"


def _load_quietly(name_or_path, overrides=()):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DINOv2KeyNotice)
        return load_config(name_or_path, overrides)


def test_vitl16_short_loads_as_dinov2_means_it():
    with pytest.warns(DINOv2KeyNotice, match="student.block_chunks has no effect"):
        cfg = load_config(FIXTURES / "vitl16_short.yaml")
    assert cfg.data.source == ["ImageNet:split=TRAIN"]  # no root=: kept, the loader names it if used
    assert cfg.train.batch_size_per_gpu == 64
    assert (cfg.student.arch, cfg.student.patch_size, cfg.optim.base_lr) == ("vit_large", 16, 0.004)


def test_vitl16_short_dry_runs_with_dinov2_flags(tmp_path, capsys):
    from dinolite.commands.train import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DINOv2KeyNotice)
        code = main(
            [
                "--config-file",
                str(FIXTURES / "vitl16_short.yaml"),
                "--no-resume",
                "--dry-run",
                "--output-dir",
                str(tmp_path / "run"),
                "train.OFFICIAL_EPOCH_LENGTH=10",
                "train.dataset_path=ImageNet:split=TRAIN:root=/data/imagenet:extra=/data/imagenet",
            ]
        )
    out = capsys.readouterr().out
    assert code == 0 and "# dry run: nothing trained" in out
    resolved = yaml.safe_load(out.split("\n", 1)[1].split("# dry run")[0])
    assert resolved["train"]["iterations_per_epoch"] == 10 and resolved["student"]["arch"] == "vit_large"


def test_no_resume_refuses_a_directory_with_checkpoints(tmp_path, capsys):
    from dinolite.checkpoint import STATE_FILE, iteration_dirname
    from dinolite.commands.train import main

    checkpoint = tmp_path / "run" / "checkpoints" / iteration_dirname(2)
    checkpoint.mkdir(parents=True)
    (checkpoint / ".metadata").write_bytes(b"")
    (checkpoint / STATE_FILE).write_text("{}")
    assert main(["--no-resume", "--dry-run", "--output-dir", str(tmp_path / "run")]) == 1
    assert "--no-resume" in capsys.readouterr().err and checkpoint.is_dir()


def test_every_key_of_dinov2_default_config_is_read():
    source = FIXTURES / "ssl_default_keys.yaml"
    with pytest.warns(DINOv2KeyNotice) as notices:
        cfg = load_config(source)
    assert cfg.train.iterations_per_epoch == 1250 and cfg.data.num_workers == 10
    assert cfg.distributed.sharding_strategy == "shard_grad_op"
    assert cfg.train.compute_precision == "fp16" and cfg.train.grad_scaler
    assert cfg.data.source == ["ImageNet:split=TRAIN"]
    # the keys accepted without effect each say so, with the reason
    said = " ".join(str(w.message) for w in notices)
    for key in (
        "train.saveckp_freq",
        "train.cache_dataset",
        "student.block_chunks",
        "optim.lr",
        "MODEL.WEIGHTS",
        "evaluation.eval_period_iterations",
        "compute_precision.student.dino_head.mixed_precision.reduce_dtype",
    ):
        assert key in said


@pytest.mark.parametrize(
    ("override", "key", "value"),
    [
        ("train.OFFICIAL_EPOCH_LENGTH=7", "train.iterations_per_epoch", 7),
        ("train.num_workers=3", "data.num_workers", 3),
        ("train.dataset_path=ImageNet:split=VAL:root=/data/in1k:extra=/data/x", "data.source", ["/data/in1k/val"]),
        ("compute_precision.teacher.backbone.sharding_strategy=NO_SHARD", "distributed.sharding_strategy", "no_shard"),
        ("compute_precision.student.backbone.mixed_precision.param_dtype=bf16", "train.compute_precision", "bf16"),
        ("compute_precision.grad_scaler=false", "train.grad_scaler", False),
        ("data.source=/shards/train-{000..009}.tar", "data.source", ["/shards/train-{000..009}.tar"]),
    ],
)
def test_each_renamed_key_lands_on_ours(override, key, value):
    cfg = _load_quietly("demo", [override])
    section, name = key.split(".")
    assert getattr(getattr(cfg, section), name) == value


def test_a_string_data_source_in_a_yaml_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("data:\n  source: /shards/train-{000..009}.tar\n")
    assert load_config(path).data.source == ["/shards/train-{000..009}.tar"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("compute_precision.student.backbone.sharding_strategy=_HYBRID_SHARD_ZERO2", "_HYBRID_SHARD_ZERO2"),
        ("MODEL.WEIGHTS=/ckpt/model_0012499.rank_0.pth", "student.pretrained_weights"),
        ("compute_precision.student.backbone.mixed_precision.param_dtype=int8", "expected one of fp16, bf16, fp32"),
    ],
)
def test_keys_without_an_equivalent_fail_naming_why(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        _load_quietly("demo", [override])
    assert override.split("=")[0] in str(info.value)


def test_dinov2_keys_that_disagree_on_one_of_ours_fail(tmp_path):
    path = tmp_path / "mixed.yaml"
    path.write_text(
        "compute_precision:\n"
        "  student: {backbone: {sharding_strategy: FULL_SHARD}, dino_head: {sharding_strategy: SHARD_GRAD_OP}}\n"
    )
    with pytest.raises(ConfigError, match="distributed.sharding_strategy.*disagree"):
        load_config(path)
    path.write_text("train: {OFFICIAL_EPOCH_LENGTH: 10, iterations_per_epoch: 20}\n")
    with pytest.raises(ConfigError, match="OFFICIAL_EPOCH_LENGTH"):
        load_config(path)


def test_the_former_homes_of_the_ema_momentum_load_into_ema():
    assert _load_quietly("demo", ["teacher.momentum_teacher=0.9"]).ema.momentum == 0.9  # DINOv2's key
    byol = _load_quietly("demo_byol", ["joint_embedding.target_momentum=0.8"])  # dinolite's former key
    assert (byol.ema.momentum, byol.ema.final_momentum) == (0.8, 1.0)


@pytest.mark.parametrize(("method", "expected"), [("byol", 0.95), ("simsiam", 0.95), ("dinov2", 0.98), ("msn", 0.98)])
def test_a_config_saved_with_both_former_ema_homes_takes_its_methods(tmp_path, method, expected):
    """Every run folder written before the ema section holds teacher.* and joint_embedding.* momenta."""
    saved = tmp_path / "config.yaml"
    saved.write_text(
        f"train: {{method: {method}}}\n"
        "teacher: {momentum_teacher: 0.98, final_momentum_teacher: 0.99, student_temp: 0.1}\n"
        "joint_embedding: {target: ema, target_momentum: 0.95, final_target_momentum: 1.0}\n"
    )
    cfg = _load_quietly(saved)
    assert cfg.ema.momentum == expected and cfg.ema.final_momentum == (0.99 if expected == 0.98 else 1.0)
    # a file of the user's that sets both, disagreeing, without naming a method: refused, naming both
    saved.write_text("teacher: {momentum_teacher: 0.98}\njoint_embedding: {target_momentum: 0.95}\n")
    with pytest.raises(ConfigError, match="teacher.momentum_teacher=0.98 and joint_embedding.target_momentum=0.95"):
        _load_quietly(saved)


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("train.num_worker=3", "'data.num_workers' (DINOv2's train.num_workers)"),
        ("train.OFFICIAL_EPOCH_LENGHT=3", "'train.iterations_per_epoch'"),
        ("train.saveckp_frq=3", "train.saveckp_freq"),
        ("train.sed=1", "'train.seed'"),
    ],
)
def test_did_you_mean_tries_dinov2_names_first(override, suggestion):
    with pytest.raises(ConfigError, match="did you mean") as info:
        _load_quietly("demo", [override])
    assert suggestion in str(info.value)


def test_every_alias_states_its_mapping_here_and_in_the_docs():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "interop.md").read_text()
    for key, alias in config_aliases.ALIASES.items():
        assert len(alias.meaning) > 20, key
        assert f"`{key}`" in docs, f"docs/interop.md does not list {key}"


def test_slurm_launcher_takes_dinov2_flags(tmp_path, capsys):
    from dinolite.commands.slurm import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DINOv2KeyNotice)
        code = main(
            [
                "--config-file",
                str(FIXTURES / "vitl16_short.yaml"),
                "--nodes",
                "2",
                "--ngpus",
                "4",
                "--timeout",
                "60",
                "--output-dir",
                str(tmp_path / "run"),
                "--dry-run",
            ]
        )
    out = capsys.readouterr().out
    assert code == 0
    for expected in (
        "#SBATCH --nodes=2",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --time=60",
    ):
        assert expected in out.splitlines(), expected
    assert "dataset_path" not in out and "- ImageNet:split=TRAIN" in out  # the resolved config is ours

    from dinolite.checkpoint import STATE_FILE, iteration_dirname

    checkpoint = tmp_path / "run" / "checkpoints" / iteration_dirname(2)
    checkpoint.mkdir(parents=True)
    (checkpoint / ".metadata").write_bytes(b"")
    (checkpoint / STATE_FILE).write_text("{}")
    assert main(["--config", "demo", "--no-resume", "--output-dir", str(tmp_path / "run"), "--dry-run"]) == 2
    assert "--no-resume" in capsys.readouterr().err


def test_a_precision_given_for_some_modules_only_says_it_sets_every_module():
    override = "compute_precision.student.backbone.mixed_precision.param_dtype=fp32"
    with pytest.warns(DINOv2KeyNotice) as notices:
        cfg = load_config("demo", [override])
    assert cfg.train.compute_precision == "fp32"
    (line,) = [str(w.message) for w in notices if "for every module" in str(w.message)]
    assert "train.compute_precision=fp32 for every module, not only student.backbone" in line
    assert "other 5 of DINOv2's 6 modules" in line


def test_a_policy_given_for_all_six_modules_needs_no_notice():
    modules = [f"{n}.{m}" for n in ("teacher", "student") for m in ("backbone", "dino_head", "ibot_head")]
    overrides = [f"compute_precision.{m}.sharding_strategy=NO_SHARD" for m in modules]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DINOv2KeyNotice)
        assert load_config("demo", overrides).distributed.sharding_strategy == "no_shard"


def test_a_dinov2_file_resolves_to_dinov2s_precision_and_sharding():
    with pytest.warns(DINOv2KeyNotice) as notices:
        cfg = load_config(FIXTURES / "vitl16_short.yaml")
    assert (cfg.train.compute_precision, cfg.distributed.sharding_strategy) == ("fp16", "shard_grad_op")
    said = [str(w.message) for w in notices if "read over DINOv2's defaults" in str(w.message)]
    assert len(said) == 2
    assert "train.compute_precision=fp16" in said[0] and "dinolite's default: auto" in said[0]
    assert "distributed.sharding_strategy=shard_grad_op" in said[1] and "full_shard" in said[1]


def test_what_a_dinov2_file_or_override_sets_wins_over_dinov2s_defaults(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "train:\n  dataset_path: /data/x\ncompute_precision:\n  grad_scaler: true\n"
        + "".join(
            f"  {n}:\n"
            + "".join(f"    {m}:\n      sharding_strategy: NO_SHARD\n" for m in ("backbone", "dino_head", "ibot_head"))
            for n in ("teacher", "student")
        )
    )
    with pytest.warns(DINOv2KeyNotice) as notices:
        cfg = load_config(path, ["train.compute_precision=bf16"])
    assert (cfg.train.compute_precision, cfg.distributed.sharding_strategy) == ("bf16", "no_shard")
    said = [str(w.message) for w in notices if "read over DINOv2's defaults" in str(w.message)]
    assert len(said) == 1 and "train.compute_precision=fp16" in said[0]  # the file left it to DINOv2's


def test_dinolite_files_keep_dinolites_defaults():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DINOv2KeyNotice)
        cfg = load_config("vitl14")
    assert (cfg.train.compute_precision, cfg.distributed.sharding_strategy) == ("auto", "full_shard")


@pytest.mark.parametrize(
    ("dataset", "hint"),
    [("ImageNet22k", "ImageNet-22k data set name"), ("ImageNet:split=TRAIN", "root=/path/to/imagenet")],
)
def test_dinov2_data_set_names_are_refused_with_what_to_pass(dataset, hint, capsys):
    from dinolite.commands.train import main

    assert main(["--dry-run", f"train.dataset_path={dataset}"]) == 1
    err = capsys.readouterr().err
    assert f"{dataset!r} is DINOv2's" in err and hint in err and "data.source=[" in err


def _dinov2_default_keys() -> dict[str, object]:
    """Every key of DINOv2's ssl_default_config.yaml (the fixture holds them all) with DINOv2's value."""

    def leaves(node: dict, prefix: str) -> dict[str, object]:
        out: dict[str, object] = {}
        for name, value in node.items():
            key = f"{prefix}{name}"
            out.update(leaves(value, f"{key}.") if isinstance(value, dict) else {key: value})
        return out

    return leaves(yaml.safe_load((FIXTURES / "ssl_default_keys.yaml").read_text()), "")


def _alias_of(key: str) -> str | None:
    """The ALIASES entry (``compute_precision.*.*.sharding_strategy`` style patterns included) for ``key``."""
    return next((alias for alias in config_aliases.ALIASES if fnmatch.fnmatchcase(key, alias)), None)


def test_every_key_of_dinov2_default_config_is_on_the_interop_page():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "interop.md").read_text()
    missing = [key for key in _dinov2_default_keys() if f"`{_alias_of(key) or key}`" not in docs]
    assert not missing, f"docs/interop.md does not say what dinolite does with DINOv2's {missing}"


def test_dinov2_keys_under_their_own_name_keep_dinov2s_value():
    cfg = _load_quietly(FIXTURES / "ssl_default_keys.yaml")
    same_name = {key: value for key, value in _dinov2_default_keys().items() if _alias_of(key) is None}
    assert len(same_name) == 52  # the other 36 are translated (ALIASES)
    for key, value in same_name.items():
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) == value, key
