"""dinolite/train/methods/distillation.py: the registered method, its config section, views and FLOPs.

2 processes (gloo, FSDP2 full_shard) equal 1 process on the same global batch; the exported network is
the student's EMA at the student's size; iBOT on every patch; a dry run refuses a missing teacher; the
presets for ViT-g/14 into S/B/L load with DINOv2's values. The step itself: test_distillation_objective.py;
the teacher: test_distillation_teacher.py; train / bitwise resume / export / kNN: the registry suite."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinolite.checkpoint import load_consolidated_state_dict
from dinolite.config import ConfigError, load_config
from dinolite.distributed import DistributedEnv
from dinolite.eval.backbone import load_any_backbone
from dinolite.train.build import build_run
from dinolite.train.loop import train
from dinolite.train.methods import distillation, get_method
from dinolite.train.methods.distillation_objective import FINGERPRINT_KEY
from dinolite.train.preflight import check_startup
from tests.gloo_ranks import run_on_ranks
from tests.methods.test_every_method import random_image_stream
from tests.train.methods.distillation_helpers import distil_config, kill_at_iteration_4_and_resume, write_teacher
from tests.train.scale_worker import full_state, global_batch_slice

STEPS, GLOBAL_BATCH = 3, 8
REPO = Path(__file__).resolve().parents[3]
# KoLeo is computed per process (DINOv2's and DINOv3's distillation alike), so it is off for 2 = 1.
TWO_EQUALS_ONE = ["dino.koleo_loss_weight=0", "distributed.sharding_strategy=full_shard"]


def _train_on_slices(cfg, rank: int, world: int, env: DistributedEnv | None = None) -> dict:
    torch.manual_seed(cfg.train.seed)
    run = build_run(cfg, env or DistributedEnv())
    losses = [
        run.step(global_batch_slice(step, GLOBAL_BATCH, rank, world)).output.loss.detach().clone()
        for step in range(STEPS)
    ]
    return {
        "losses": torch.stack(losses),
        "student": full_state(run.objective.student),
        "ema": full_state(run.objective.teacher),
        "frozen": full_state(run.objective.distillation_teacher),
    }


def _on_rank(rank: int, world: int, teacher: str) -> dict:
    torch.set_num_threads(1)
    cfg = distil_config(teacher, *TWO_EQUALS_ONE, f"train.batch_size_per_gpu={GLOBAL_BATCH // world}")
    return _train_on_slices(cfg, rank, world, DistributedEnv(rank=rank, world_size=world, backend="gloo"))


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path: Path):
    teacher = tmp_path / "teacher.safetensors"
    write_teacher(teacher, width=48, depth=3)
    ranks = run_on_ranks(_on_rank, 2, tmp_path / "ranks", str(teacher))
    one = _train_on_slices(distil_config(teacher, *TWO_EQUALS_ONE, f"train.batch_size_per_gpu={GLOBAL_BATCH}"), 0, 1)
    for rank in ranks:
        # each rank's loss is its half's; their mean is the loss of the whole batch (every term is a mean)
        torch.testing.assert_close((ranks[0]["losses"] + ranks[1]["losses"]) / 2, one["losses"], rtol=1e-5, atol=1e-6)
        for network in ("student", "ema", "frozen"):
            for key, value in one[network].items():
                torch.testing.assert_close(rank[network][key], value, rtol=1e-5, atol=1e-6, msg=f"{network} {key}")
    assert one["losses"][-1] != one["losses"][0]  # it trained: the comparison is not of untouched weights


def test_the_run_exports_the_students_ema_at_the_students_size(tmp_path: Path):
    teacher = tmp_path / "teacher.safetensors"
    write_teacher(teacher, width=48, depth=3)
    out = tmp_path / "run"
    cfg = distil_config(teacher, f"train.output_dir={out}", "optim.epochs=1")
    result = train(cfg, batches=random_image_stream)
    backbone = load_any_backbone(out)  # the method's evaluated network: the EMA of the student
    assert backbone.embed_dim == 32 and len(backbone.blocks) == 2  # the student's, not the 48-wide teacher's
    assert backbone.spec.source == "teacher"  # dinolite's name for the EMA network
    ema = load_consolidated_state_dict(result.checkpoint_path, "teacher", "backbone")
    assert all(torch.equal(backbone.state_dict()[k], ema[k]) for k in ema)
    assert not any("distillation_teacher" in p.name for p in result.checkpoint_path.rglob("*"))


def test_every_patch_of_the_global_crops_can_carry_the_ibot_loss():
    cfg = distil_config("random", "distillation.ibot_positions=all")
    method = get_method("distillation")
    collate = method.build_collate(cfg)
    transform = method.build_transform(cfg)
    images = [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8) for _ in range(3)]
    batch = collate([transform(image) for image in images])
    n_patches = (16 // 4) ** 2
    assert batch["collated_masks"].all() and batch["mask_indices_list"].tolist() == list(range(6 * n_patches))
    torch.testing.assert_close(batch["masks_weight"], torch.full((6 * n_patches,), 1.0 / n_patches))
    objective = distillation.build_objective(cfg)
    assert torch.isfinite(objective(batch, 0).terms["ibot_loss"])


def test_the_section_refuses_unknown_choices_naming_the_key():
    for key, value in (("teacher_network", "ema"), ("missing_heads", "zeros"), ("ibot_positions", "some")):
        with pytest.raises(ConfigError, match=rf"'distillation.{key}': '{value}'"):
            distil_config("random", f"distillation.{key}={value}")


def test_a_dry_run_refuses_a_missing_teacher(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"distillation.teacher_weights='.*absent'"):
        check_startup(distil_config(tmp_path / "absent"))
    check_startup(distil_config("random"))


def test_the_flops_count_the_frozen_teachers_forward_not_the_students_ema(tmp_path: Path):
    teacher = tmp_path / "teacher.safetensors"
    write_teacher(teacher, width=48, depth=3)
    same = distillation.training_flops(distil_config("random"))
    bigger = distillation.training_flops(distil_config(teacher))
    assert bigger["flops_student_per_image"] == same["flops_student_per_image"]
    assert bigger["flops_teacher_per_image"] > same["flops_teacher_per_image"]
    ratio = bigger["flops_teacher_global_crop"] / same["flops_global_crop"]
    assert 2.0 < ratio < 4.0  # 1.5 x wider (about 2.25 x per block) and 1.5 x deeper


@pytest.mark.parametrize(
    ("preset", "arch"),
    [("vits14_distill", "vit_small"), ("vitb14_distill", "vit_base"), ("vitl14_distill", "vit_large")],
)
def test_the_vitg14_distillation_presets_carry_dinov2s_distillation_values(preset: str, arch: str):
    cfg = load_config(preset)
    assert cfg.train.method == "distillation" and cfg.student.arch == arch and cfg.student.patch_size == 14
    assert cfg.student.drop_path_rate == 0.0 and cfg.student.ffn_layer == "mlp"  # DINOv2 Sec. 5, Table 17
    assert (cfg.ema.momentum, cfg.ema.final_momentum) == (0.994, 1.0)
    assert cfg.optim.epochs * cfg.train.iterations_per_epoch == 625_000
    assert cfg.optim.warmup_epochs * cfg.train.iterations_per_epoch == 100_000
    assert (cfg.optim.weight_decay, cfg.optim.weight_decay_end) == (0.04, 0.2)
    # lr 1e-3 at a global batch of 2048 (DINOv2's Table 16), through DINOv2's sqrt_wrt_1024 rule
    assert cfg.optim.base_lr * (2048 / 1024) ** 0.5 == pytest.approx(1e-3)
    assert cfg.dino.head_n_prototypes == cfg.ibot.head_n_prototypes == 131072 and cfg.ibot.separate_head
    assert cfg.train.centering == "sinkhorn_knopp"


@pytest.mark.slow
def test_sigkill_then_resume_equals_the_uninterrupted_run_bitwise(tmp_path: Path):
    teacher = tmp_path / "teacher.safetensors"
    write_teacher(teacher, width=48, depth=3)
    kill_at_iteration_4_and_resume(tmp_path, teacher)
    for network in ("student", "teacher"):  # the student and its EMA, every tensor of the heads too
        expected = load_consolidated_state_dict(tmp_path / "ref", network, None)
        got = load_consolidated_state_dict(tmp_path / "run", network, None)
        assert expected.keys() == got.keys()
        assert all(torch.equal(got[k], expected[k]) for k in expected), network
    extra = load_consolidated_state_dict(tmp_path / "run", "objective", "extra")
    assert torch.equal(
        extra[FINGERPRINT_KEY], load_consolidated_state_dict(tmp_path / "ref", "objective", "extra")[FINGERPRINT_KEY]
    )
