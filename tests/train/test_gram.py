"""Gram anchoring's Gram teacher and term (dinolite/train/gram.py): the load/refresh schedule, the resize of a
larger teacher grid, the term added to DINOv2's loss, the refusal for other methods, a bitwise resume
(Gram teacher and refresh count included) and 2 processes against 1."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import dinolite
from dinolite.checkpoint import load_consolidated_state_dict
from dinolite.commands.export import main as export_main
from dinolite.config import ConfigError, load_config
from dinolite.eval.backbone import load_any_backbone
from dinolite.losses.gram_loss import GramLoss
from dinolite.train.build import build_run
from dinolite.train.gram import GramAnchoring, GramRefreshPlan, attach_gram_anchoring, resize_patch_grid
from dinolite.train.gram_config import GramConfig
from dinolite.train.loop import train
from dinolite.train.methods import get_method
from dinolite.train.run import RunHooks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "methods"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale_launch  # noqa: E402
from test_every_method import SMALL, StopAt, random_image_stream  # noqa: E402

GRAM_ON = ["gram.use_loss=true", "gram.img_level=true"]


class _Backbone(nn.Module):
    """A stand-in backbone whose one weight records which EMA value was copied."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()), requires_grad=False)


def _simulate(gram: GramConfig, iterations: int) -> tuple[list[float], list[int]]:
    """Run the hooks as the step does, with an EMA teacher whose weight is ``it + 1`` after step ``it``."""
    ema = nn.ModuleDict({"backbone": _Backbone()})
    anchoring = GramAnchoring(ema["backbone"], gram, iterations_per_epoch=10, total_iterations=iterations)
    seen, counts = [], []
    for it in range(iterations):
        counts.append(int(anchoring.refreshes))
        anchoring.before_step(it, ema)
        seen.append(float(anchoring.teacher["backbone"].weight) if bool(anchoring.loaded) else float("nan"))
        with torch.no_grad():
            ema["backbone"].weight.fill_(it + 1)  # the optimizer step and EMA update of iteration it
        anchoring.after_optimizer_step(it, ema)
    return seen, counts


def test_the_gram_teacher_is_loaded_then_refreshed_on_its_schedule():
    gram = GramConfig(use_loss=True, it_load_ema_teacher=2, update_frequency=3, it_first_update=5, max_updates=2)
    seen, counts = _simulate(gram, 16)
    nan = float("nan")
    # not loaded before iteration 2; loaded with the EMA after 2 steps; refreshed after iterations 5 (6 % 3)
    # and 8 (9 % 3); the refresh due after iteration 11 is past max_updates=2
    expected = [nan, nan, 2, 2, 2, 2, 6, 6, 6, 9, 9, 9, 9, 9, 9, 9]
    assert [str(v) for v in seen] == [str(float(v)) for v in expected]
    assert counts == [0] * 6 + [1] * 3 + [2] * 7
    plan = GramRefreshPlan.from_config(gram)
    assert [plan.refreshes_before(it) for it in range(16)] == counts  # what a resume at each iteration finds


def test_refresh_counts_of_dinov3s_recipes():
    # the ViT-7B Gram-anchoring recipe: every 10,000 iterations from 1,010,000, 3 times
    plan = GramRefreshPlan(0, True, 10_000, 1_010_000, 3)
    assert [plan.refreshes_after(it, 0) for it in (1_009_998, 1_009_999, 1_010_000)] == [False, True, False]
    assert [plan.refreshes_before(it) for it in (1_009_999, 1_010_000, 1_029_999, 1_030_000, 2_000_000)] == [
        0,
        1,
        2,
        3,
        3,
    ]
    assert not plan.refreshes_after(1_039_999, 3)
    # DINOv3's default: every 50,000 from iteration 0, unlimited; no refresh before the first 50,000 steps
    default = GramRefreshPlan.from_config(GramConfig())
    assert [default.refreshes_before(it) for it in (0, 49_999, 50_000, 149_999, 150_000)] == [0, 0, 1, 2, 3]
    assert GramRefreshPlan(0, False, 1, 0, None).refreshes_before(100) == 0


def test_resize_patch_grid_hand_values():
    rows = torch.arange(4.0).repeat_interleave(4)  # a 4 x 4 grid whose value is the row index, row-major
    grid = torch.stack([rows, 10 * torch.arange(16.0)], dim=-1)[None]  # (1, 16, 2)
    # bilinear at half size (align_corners=False) averages 2 x 2 blocks: rows (0 + 1) / 2 and (2 + 3) / 2
    half = resize_patch_grid(grid, (2, 2), "bilinear")
    assert half.shape == (1, 4, 2)
    assert half[0, :, 0].tolist() == [0.5, 0.5, 2.5, 2.5]
    assert half[0, :, 1].tolist() == [25.0, 45.0, 105.0, 125.0]  # 10 x the mean of indices {0, 1, 4, 5}, ...
    assert torch.equal(resize_patch_grid(grid, (2, 2), "area"), half)
    assert torch.allclose(resize_patch_grid(grid, (4, 4), "bicubic"), grid)  # same grid: unchanged
    constant = torch.full((2, 36, 3), 0.25)
    assert torch.allclose(resize_patch_grid(constant, (3, 3), "bicubic", antialias=True), torch.full((2, 9, 3), 0.25))
    with pytest.raises(ValueError, match="not a square grid"):
        resize_patch_grid(torch.zeros(1, 12, 2), (2, 2))


def _objective_and_batch(*extra: str):
    no_drop = "student.drop_path_rate=0.0"  # the student forward is repeatable
    cfg = load_config(
        "demo", [*SMALL, no_drop, *GRAM_ON, "gram.it_load_ema_teacher=0", "gram.rep_update=false", *extra]
    )
    torch.manual_seed(0)
    objective = get_method("dinov2").build_objective(cfg)
    attach_gram_anchoring(objective, cfg, "dinov2", offers_gram=True)
    request = type("R", (), {})()
    request.cfg, request.rank, request.start_batch = cfg, 0, 0
    request.transform = get_method("dinov2").build_transform(cfg)
    request.collate_fn = get_method("dinov2").build_collate(cfg)
    return cfg, objective, next(random_image_stream(request))


def test_the_term_compares_the_students_masked_patches_with_the_gram_teachers():
    cfg, objective, batch = _objective_and_batch("gram.loss_weight=0.7")
    objective.gram.before_step(0, objective.teacher)
    with torch.no_grad():  # make the Gram teacher differ from the EMA teacher and the student
        for p in objective.gram.teacher.parameters():
            p.add_(0.01 * torch.randn_like(p))
    output = objective.gram.anchor(objective(batch, 0), 0)
    student = objective.student["backbone"].forward_features(
        batch["collated_global_crops"], masks=batch["collated_masks"]
    )
    target = objective.gram.teacher["backbone"].forward_features(batch["collated_global_crops"])
    expected = 0.7 * GramLoss(img_level=True)(student["x_norm_patchtokens"], target["x_norm_patchtokens"])
    torch.testing.assert_close(output.terms["gram_loss"], expected, rtol=1e-6, atol=1e-7)
    base = sum(v for k, v in output.terms.items() if k != "gram_loss")
    torch.testing.assert_close(output.loss, base + output.terms["gram_loss"])
    output.terms["gram_loss"].backward()
    assert objective.student["backbone"].blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in objective.gram.teacher.parameters())  # frozen


def test_the_gram_teacher_sees_its_own_larger_crops_resized_to_the_student_grid():
    cfg, objective, batch = _objective_and_batch("gram.global_teacher_resize_method=bilinear")
    objective.gram.before_step(0, objective.teacher)
    big = torch.nn.functional.interpolate(batch["collated_global_crops"], scale_factor=2, mode="nearest")
    output = objective(dict(batch, collated_gram_teacher_crops=big), 0)
    target = objective.gram.target(output.patch_tokens, output.patch_tokens.student.shape[1])
    grid = cfg.crops.global_crops_size // cfg.student.patch_size
    full = objective.gram.teacher["backbone"].forward_features(big)["x_norm_patchtokens"]
    assert full.shape[1] == 4 * grid * grid
    torch.testing.assert_close(target, resize_patch_grid(full, (grid, grid), "bilinear"))


def test_the_dinov2_transform_gives_the_gram_teacher_its_configured_crops():
    """crops.gram_teacher_crops_size reaches the batch through DINOv2's transform and collate, the Gram
    teacher's target is computed on those crops and resized to the student's grid, and the FLOPs count them."""
    cfg, objective, batch = _objective_and_batch("crops.gram_teacher_crops_size=64")
    size, grid = 64, cfg.crops.global_crops_size // cfg.student.patch_size
    assert batch["collated_gram_teacher_crops"].shape == (*batch["collated_global_crops"].shape[:2], size, size)
    objective.gram.before_step(0, objective.teacher)
    output = objective(batch, 0)
    target = objective.gram.target(output.patch_tokens, output.patch_tokens.student.shape[1])
    full = objective.gram.teacher["backbone"].forward_features(batch["collated_gram_teacher_crops"])
    torch.testing.assert_close(target, resize_patch_grid(full["x_norm_patchtokens"], (grid, grid), "bicubic"))
    plain, larger = (get_method("dinov2").training_flops(c) for c in (_objective_and_batch()[0], cfg))
    assert larger["flops_gram_teacher_per_image"] > 4 * plain["flops_gram_teacher_per_image"]  # 4x the tokens


def test_ema_teacher_mode_and_token_selection():
    cfg, objective, batch = _objective_and_batch(
        "gram.ema_teacher=true", "gram.img_level=false", "gram.tokens_used=masked"
    )
    assert len(objective.gram.teacher) == 0 and bool(objective.gram.loaded)
    output = objective(batch, 0)
    tokens = output.patch_tokens
    masks = batch["collated_masks"]
    expected = GramLoss(img_level=False)(tokens.student[masks], tokens.teacher[masks])
    torch.testing.assert_close(objective.gram.anchor(output, 0).terms["gram_loss"], expected)


def test_before_the_gram_teacher_is_loaded_the_term_is_zero():
    cfg, objective, batch = _objective_and_batch()
    output = objective.gram.anchor(objective(batch, 0), 0)  # before_step(0) not called: nothing loaded
    assert output.terms["gram_loss"].item() == 0.0


def test_gram_anchoring_is_refused_for_a_method_without_patch_tokens():
    cfg = load_config(
        "demo_simclr", [*SMALL, "gram.use_loss=true", "gram.it_load_ema_teacher=0", "gram.rep_update=false"]
    )
    with pytest.raises(ConfigError, match="train.method='simclr' does not train patch tokens"):
        build_run(cfg, batches=random_image_stream)


def test_gram_is_off_by_default_and_leaves_dinov2_alone():
    cfg = load_config("demo", SMALL)
    assert cfg.gram.use_loss is False
    assert getattr(build_run(cfg, batches=random_image_stream).objective, "gram", None) is None


RESUME = [
    *GRAM_ON,
    "gram.it_load_ema_teacher=1",
    "gram.update_frequency=2",
    "gram.it_first_update=2",
    "gram.max_updates=2",
    "gram.loss_weight_schedule={start: 0, peak: 0.5, end: 2, warmup_epochs: 1, cosine_epochs: 1}",
]


@pytest.fixture(scope="module")
def gram_runs(tmp_path_factory):
    """An uninterrupted run and one stopped after 3 steps (between the refreshes after iterations 1 and 3)
    and resumed, with the Gram teacher loaded at iteration 1."""
    root = tmp_path_factory.mktemp("gram")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = lambda out: load_config("demo", [*SMALL, *RESUME, f"train.output_dir={out}"])  # noqa: E731
        straight = train(config(root / "straight"), batches=random_image_stream)
        train(config(root / "resumed"), batches=random_image_stream, hooks=RunHooks(StopAt(3)))
        resumed = train(config(root / "resumed"), batches=random_image_stream)
    finally:
        torch.set_num_threads(previous)
    return {"root": root, "straight": straight, "resumed": resumed}


def test_stopped_and_resumed_equals_the_uninterrupted_run_bitwise(gram_runs):
    a = load_consolidated_state_dict(gram_runs["straight"].checkpoint_path, "objective", None)
    b = load_consolidated_state_dict(gram_runs["resumed"].checkpoint_path, "objective", None)
    assert sorted(a) == sorted(b)
    assert int(a["model.gram.refreshes"]) == 2 and bool(a["model.gram.loaded"])
    gram_keys = [k for k in a if k.startswith("model.gram.teacher.backbone.")]
    assert gram_keys and all(torch.equal(a[k], b[k]) for k in gram_keys)
    # the Gram teacher is the EMA teacher of iteration 3 (the last refresh), not today's teacher
    assert any(not torch.equal(a[k], a[k.replace("model.gram.teacher", "model.teacher")]) for k in gram_keys)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


def test_the_ema_teacher_is_evaluated_and_exported_not_the_gram_teacher(gram_runs, tmp_path):
    run_dir = gram_runs["root"] / "straight"
    teacher = load_consolidated_state_dict(gram_runs["straight"].checkpoint_path, "teacher", "backbone")
    backbone = load_any_backbone(run_dir)
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in teacher.items())
    out = tmp_path / "backbone.safetensors"
    assert export_main(["--checkpoint", str(run_dir), "--output", str(out), "--with-heads"]) == 0
    exported = dinolite.load_backbone(out)
    assert all(torch.equal(exported.state_dict()[k], v) for k, v in teacher.items())


def test_the_high_resolution_preset_continues_a_finished_run_at_larger_crops(gram_runs, tmp_path):
    """demo_highres (DINOv3's high-resolution adaptation): a finished run's export with heads is loaded at
    1.5x the crop size (position embeddings resampled), teacher and Gram teacher start as the loaded
    network, and the Gram teacher's target comes from its own 2x crops."""
    exported = tmp_path / "finished.safetensors"
    assert (
        export_main(["--checkpoint", str(gram_runs["root"] / "straight"), "--output", str(exported), "--with-heads"])
        == 0
    )
    model = [o for o in SMALL if o.startswith("student.") and "drop_path" not in o]
    sizes = ["crops.global_crops_size=24", "crops.local_crops_size=8", "crops.gram_teacher_crops_size=32"]
    cfg = load_config(
        "demo_highres", [*model, *sizes, "train.batch_size_per_gpu=4", f"student.pretrained_weights={exported}"]
    )
    torch.manual_seed(0)
    objective = get_method("dinov2").build_objective(cfg)
    attach_gram_anchoring(objective, cfg, "dinov2", offers_gram=True)
    objective.gram.before_step(0, objective.teacher)
    finished = dinolite.load_backbone(exported).state_dict()
    for network in (objective.student["backbone"], objective.teacher["backbone"], objective.gram.teacher["backbone"]):
        state = network.state_dict()
        assert (
            state["pos_embed"].shape[1] == 1 + (24 // 4) ** 2 and finished["pos_embed"].shape[1] == 1 + (16 // 4) ** 2
        )
        assert all(torch.equal(state[k], v) for k, v in finished.items() if k != "pos_embed")
    request = type("R", (), {})()
    request.cfg, request.rank, request.start_batch = cfg, 0, 0
    request.transform = get_method("dinov2").build_transform(cfg)
    request.collate_fn = get_method("dinov2").build_collate(cfg)
    batch = next(random_image_stream(request))
    assert batch["collated_gram_teacher_crops"].shape[-1] == 32 and batch["collated_global_crops"].shape[-1] == 24
    output = objective.gram.anchor(objective(batch, 0), 0)
    assert output.terms["gram_loss"].item() > 0 and torch.isfinite(output.loss)


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    """A global batch of 8 split 4 + 4 (FSDP2 full_shard, gloo) against one process on all 8, Gram teacher
    loaded at iteration 1 and refreshed after iteration 1; per-image Gram matrices (gram.img_level)."""
    args = ["--steps", "3", "--gram"]
    one = scale_launch.run(1, ["--out", str(tmp_path / "one"), *args])
    two = scale_launch.run(2, ["--out", str(tmp_path / "two"), *args])
    torch.testing.assert_close(two["losses"], one["losses"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(two["gram_losses"], one["gram_losses"], rtol=1e-5, atol=1e-7)
    assert one["gram_losses"][0] == 0 and (one["gram_losses"][1:] > 0).all()
    assert int(one["gram_refreshes"]) == int(two["gram_refreshes"]) == 1
    for part in ("student", "teacher", "gram_teacher"):
        assert one[part].keys() == two[part].keys()
        assert max((one[part][k] - two[part][k]).abs().max().item() for k in one[part]) < 1e-5, part


def test_the_gram_teachers_forward_is_counted_in_the_training_flops():
    from dinolite.train.methods.dinov2 import training_flops

    off = training_flops(load_config("demo", SMALL))
    on = training_flops(load_config("demo", [*SMALL, *GRAM_ON, "gram.it_load_ema_teacher=0"]))
    assert off["flops_gram_teacher_per_image"] == 0
    # one forward of the 2 global crops per image
    assert on["flops_gram_teacher_per_image"] == 2 * on["flops_global_crop"]
    assert on["flops_per_image"] - off["flops_per_image"] == pytest.approx(on["flops_gram_teacher_per_image"], abs=1)
