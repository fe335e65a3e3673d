"""Start-up validation (issue 16, item 9): every bad value is refused before anything runs, naming the
key, the value and the valid range; override parse errors are one-line ``error:`` messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import dinolite.train.methods  # noqa: F401  (registers the methods' config sections)
from dinolite.commands.train import main as train_main
from dinolite.config import ConfigError, load_config
from dinolite.train.batches import validate_training_config
from dinolite.train.schedules import build_schedules

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.max_iterations=0", "'train.max_iterations': 0; must be >= 1, or null"),
        ("train.max_iterations=-5", "'train.max_iterations': -5; must be >= 1"),
        ("optim.base_lr=0", "'optim.base_lr': 0.0; must be > 0"),
        ("optim.base_lr=-0.1", "'optim.base_lr': -0.1; must be > 0"),
        ("optim.base_lr=nan", "'optim.base_lr': nan; must be > 0"),
        ("optim.min_lr=-1e-6", "'optim.min_lr': -1e-06; must be >= 0"),
        ("optim.weight_decay=-0.04", "'optim.weight_decay': -0.04; must be >= 0"),
        ("optim.weight_decay_end=-1", "'optim.weight_decay_end': -1.0; must be >= 0"),
        ("ema.momentum=1.2", "'ema.momentum': 1.2; must be in [0, 1]"),
        # DINOv2's name of it lands on the shared ema section, and is checked there
        ("teacher.final_momentum_teacher=-0.5", "'ema.final_momentum': -0.5; must be in [0, 1]"),
        ("ema.schedule=step", "'ema.schedule': 'step'; expected one of cosine, linear"),
        ("optim.adamw_beta2=1.0", "'optim.adamw_beta2': 1.0; must be in [0, 1)"),
        ("teacher.teacher_temp=0", "'teacher.teacher_temp': 0.0; must be > 0"),
        ("crops.global_crops_scale=[0.0,1.0]", "'crops.global_crops_scale': [0.0, 1.0]; the low scale must be > 0"),
        ("crops.local_crops_scale=[0.5,0.2]", "'crops.local_crops_scale': [0.5, 0.2]; expected [low, high]"),
        ("crops.global_crops_scale=[0.3,1.5]", "expected [low, high] with 0 <= low <= high <= 1"),
        ("optim.freeze_last_layer_epochs=10", "'optim.freeze_last_layer_epochs': 10; must be < optim.epochs=10"),
        (
            "ibot.head_n_prototypes=64",
            "'ibot.head_n_prototypes': 64; with ibot.separate_head=false iBOT uses the DINO head",
        ),
        ("crops.global_crops_size=8", "'crops.global_crops_size': 8 with student.patch_size=4 gives 2x2 patches"),
        # errors that used to come from deep code without the key
        ("student.num_heads=5", "'student.embed_dim': 96; must be a multiple of student.num_heads=5"),
        ("student.depth=0", "'student.depth': 0; must be >= 1 (or null for the arch's value)"),
        ("student.num_register_tokens=-1", "'student.num_register_tokens': -1; must be >= 0"),
        ("dino.head_nlayers=0", "'dino.head_nlayers': 0; must be >= 1"),
        ("dino.head_bottleneck_dim=0", "'dino.head_bottleneck_dim': 0; must be >= 1"),
        ("crops.color_jitter_p=2", "'crops.color_jitter_p': 2.0; must be in [0, 1]"),
        ("crops.mean=[0.5]", "'crops.mean': [0.5]; expected 3 values"),
        ("crops.std=[0,0,0]", "'crops.std': [0.0, 0.0, 0.0]; expected 3 values (one per RGB channel), each > 0"),
        ("crops.color_jitter=[0.4,0.4,0.2,0.9]", "'crops.color_jitter': [0.4, 0.4, 0.2, 0.9]; expected [brightness"),
        ("teacher.sinkhorn_iterations=0", "'teacher.sinkhorn_iterations': 0; must be >= 1"),
        ("monitor.every=-1", "'monitor.every': -1; must be >= 0"),
        ("train.num_threads=-2", "'train.num_threads': -2; must be >= 0"),
        # the released recipes' optimizer options (issue 31); closed choices suggest the nearest value
        ("optim.optimizer=lasr", "'optim.optimizer': 'lasr'; expected one of adamw, sgd, lars; did you mean 'lars'?"),
        ("optim.optimizer=adam", "expected one of adamw, sgd, lars; did you mean 'adamw'?"),
        ("optim.decay_rule=non1d", "'optim.decay_rule': 'non1d'; expected one of dinolite, all, non_1d; did you mean"),
        ("optim.clip_grad_scope=global", "'optim.clip_grad_scope': 'global'; expected one of per_module, joint"),
        ("optim.momentum=1.0", "'optim.momentum': 1.0; must be in [0, 1)"),
        ("optim.lars_eta=0", "'optim.lars_eta': 0.0; must be > 0"),
        ("optim.lr_1d_mult=-0.1", "'optim.lr_1d_mult': -0.1; must be >= 0"),
        ("optim.warmup_start_lr=-1e-4", "'optim.warmup_start_lr': -0.0001; must be >= 0"),
        ("optim.schedule_horizon=0.5", "'optim.schedule_horizon': 0.5; must be >= 1"),
        ("optim.nesterov=true", "'optim.nesterov': true needs optim.optimizer=sgd and optim.momentum > 0"),
        ("optim.schedule_unit=step", "'optim.schedule_unit': 'step'; expected one of iteration, epoch"),
        ("optim.schedule=multistep", "'optim.lr_milestones': []; optim.schedule=multistep needs at least one"),
        ("optim.lr_milestones=[5,3]", "'optim.lr_milestones': [5, 3]; epochs must increase"),
        ("optim.lr_gamma=0", "'optim.lr_gamma': 0.0; must be > 0"),
        # DINOv3's Gram teacher crops: read only by a Gram teacher
        ("crops.gram_teacher_crops_size=48", "crops.gram_teacher_crops_size=48 is read only by Gram anchoring's"),
        ("crops.gram_teacher_no_distortions=true", "needs crops.gram_teacher_crops_size"),
    ],
)
def test_bad_values_name_key_value_and_range(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config("demo", [override])
    assert expected in str(info.value)


def test_ibot_prototypes_with_a_separate_head_are_fine():
    cfg = load_config("demo", ["ibot.separate_head=true", "ibot.head_n_prototypes=64"])
    assert cfg.ibot.head_n_prototypes == 64 and cfg.dino.head_n_prototypes == 32


def test_min_lr_above_the_scaled_peak_names_both():
    cfg = load_config("demo", ["optim.min_lr=0.003"])  # base 0.004, sqrt(64/1024) -> peak 0.001
    with pytest.raises(ConfigError, match=r"'optim.min_lr': 0.003; must be <= the peak lr 0.001 "):
        build_schedules(cfg.optim, cfg.train.iterations_per_epoch, 64)


def test_knn_at_end_without_sources_fails_at_start_up():
    cfg = load_config("demo", ["data.source=[/data/shard-{0..9}.tar]", "evaluation.knn_at_end=true"])
    with pytest.raises(ConfigError, match="'evaluation.knn_at_end': true, but evaluation.knn_train"):
        validate_training_config(cfg)
    validate_training_config(load_config("demo", ["evaluation.knn_at_end=true"]))  # digits bring their own


@pytest.mark.parametrize(
    "value",
    [
        "[/data/in1k/shard-{000000..001281}.tar]",
        "/data/in1k/shard-{000000..001281}.tar",
        "['/data/in1k/shard-{000000..001281}.tar']",
    ],
)
def test_readme_shard_pattern_override_parses(value):
    cfg = load_config("demo", [f"data.source={value}"])
    assert cfg.data.source == ["/data/in1k/shard-{000000..001281}.tar"]


def test_several_patterns_in_one_list():
    cfg = load_config("demo", ["data.source=[/a/s-{0..3}.tar, /b/t-{00..10}.tar]"])
    assert cfg.data.source == ["/a/s-{0..3}.tar", "/b/t-{00..10}.tar"]


def test_unparsable_override_is_one_error_line(capsys, tmp_path):
    assert train_main(["--output-dir", str(tmp_path), "optim.base_lr=[0.1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot parse override 'optim.base_lr=[0.1'") and err.count("\n") == 1
    assert not list(tmp_path.iterdir())  # nothing written


def test_launcher_refuses_zero_iterations_before_writing_anything(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "launch" / "local.py"),
            "--output-dir",
            str(tmp_path / "run"),
            "train.max_iterations=0",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": ""},
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: invalid value for 'train.max_iterations': 0; must be >= 1, or null to run the whole schedule "
        "(optim.epochs x train.iterations_per_epoch = 300)"
    ]
    assert not (tmp_path / "run").exists()


def test_gram_teacher_crops_need_a_patch_size_multiple_and_a_gram_teacher():
    gram = ["gram.use_loss=true", "gram.it_load_ema_teacher=0"]
    cfg = load_config("demo", [*gram, "crops.gram_teacher_crops_size=48", "crops.gram_teacher_no_distortions=true"])
    assert (cfg.crops.gram_teacher_crops_size, cfg.crops.gram_teacher_no_distortions) == (48, True)
    with pytest.raises(ConfigError, match="'crops.gram_teacher_crops_size': 50; must be a positive multiple of"):
        load_config("demo", [*gram, "crops.gram_teacher_crops_size=50"])
    with pytest.raises(ConfigError, match="gram.ema_teacher=false"):
        load_config(
            "demo",
            [
                "gram.use_loss=true",
                "gram.ema_teacher=true",
                "gram.rep_update=false",
                "crops.gram_teacher_crops_size=48",
            ],
        )


def test_crop_packing_is_accepted_with_rope_and_its_coordinate_augmentation():
    """Packed attention rotates each crop by its own RoPE angles (tests/models/test_crop_packing.py)."""
    overrides = ["student.crop_packing=true", "student.pos_embed_rope_shift_coords=0.1"]
    student = load_config("demo_rope", overrides).student
    assert student.crop_packing and student.pos_embed == "rope" and student.pos_embed_rope_rescale_coords == 2.0
    assert load_config("demo", ["student.crop_packing=true"]).student.crop_packing
