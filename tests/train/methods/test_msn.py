"""dinolite/train/methods/msn.py: its switches reach the loss, and its watchdog rules."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from dinolite.config import ConfigError, load_config
from dinolite.losses import MSNLoss
from dinolite.models.masked_heads import MSNProjectionHead, Prototypes
from dinolite.monitor.collapse import metric_names
from dinolite.monitor.watchdog import Watchdog
from dinolite.train.methods import get_method
from dinolite.train.methods.msn import project_anchors
from tests.gloo_ranks import run_on_ranks
from tests.train.methods.test_masked_methods import TINY, _batch, _step


def test_msn_switches_reach_the_loss_and_anchors_are_patch_dropped():
    _, _, objective, out = _step("msn", ["msn.sharpen=false", "msn.me_max=false"])
    assert objective.loss.sharpen_temperature == 1.0 and objective.loss.me_max_weight == 0.0
    assert float(out.terms["me_max"]) == 0.0
    cfg = load_config("demo_msn", TINY)
    batch = _batch(cfg, get_method("msn"))
    assert batch["anchor_keep"].shape == (4, round(0.85 * 64)) and batch["focal_keep"].shape == (8, round(0.85 * 16))
    heavy = get_method("msn").training_flops(load_config("demo_msn", [*TINY, "msn.mask_ratio=0.5"]))
    assert heavy["flops_student_per_image"] < get_method("msn").training_flops(cfg)["flops_student_per_image"]


@pytest.mark.parametrize(
    "run, flagged",
    [
        # (batch-mean entropy / ln K, per-sample entropy / ln K) at iterations 30..120 of the digits demo runs
        # recorded in docs/methods_masked.md. The demo preset (Sinkhorn targets), healthy:
        ({"mean": [1.00, 1.00, 1.00, 1.00], "per_sample": [0.72, 0.82, 0.80, 0.74]}, None),
        # msn.me_max=false: Sinkhorn alone keeps the batch balanced, no collapse
        ({"mean": [1.00, 1.00, 1.00, 1.00], "per_sample": [0.74, 0.82, 0.79, 0.71]}, None),
        # msn.me_max=false msn.use_sinkhorn=false: the whole batch on one prototype
        (
            {"mean": [0.13, 0.00, 0.00, 0.00], "per_sample": [0.05, 0.00, 0.00, 0.00]},
            "collapse/teacher_mean_entropy_norm",
        ),
        # msn.sharpen=false: uniform targets
        ({"mean": [1.00, 1.00, 1.00, 1.00], "per_sample": [0.98, 1.00, 1.00, 1.00]}, "collapse/teacher_entropy_norm"),
        # the earlier preset (no Sinkhorn, EMA 0.98 -> 1, no colour jitter): healthy, without ME-MAX, unsharpened
        ({"mean": [0.39, 0.32, 0.32, 0.32], "per_sample": [0.11, 0.09, 0.06, 0.04]}, None),
        (
            {"mean": [0.34, 0.22, 0.19, 0.17], "per_sample": [0.08, 0.05, 0.03, 0.03]},
            "collapse/teacher_mean_entropy_norm",
        ),
        ({"mean": [0.99, 1.00, 1.00, 1.00], "per_sample": [0.93, 0.98, 0.98, 0.99]}, "collapse/teacher_entropy_norm"),
    ],
)
def test_msn_watchdog_rules_separate_the_measured_healthy_and_collapsed_runs(run, flagged):
    spec = get_method("msn")
    watchdog = Watchdog(
        list(spec.watchdog_thresholds), action="warn", known_metrics=metric_names(spec.monitor_embeddings)
    )
    fired = set()
    for i, (mean, per_sample) in enumerate(zip(run["mean"], run["per_sample"])):
        metrics = {"collapse/teacher_mean_entropy_norm": mean, "collapse/teacher_entropy_norm": per_sample}
        fired |= {alert.metric for alert in watchdog.check(30 * (i + 1), metrics)}
    assert fired == ({flagged} if flagged else set())


RELEASED_SWITCHES = [
    "msn.anchor_views=2",
    "msn.patch_drop_per=batch",
    "msn.patch_drop_rounding=floor",
    "msn.label_smoothing=0.1",
    "msn.entropy_weight=0.3",
    "msn.final_sharpen_temperature=0.5",
    "msn.sharpen_horizon=1.25",
]


def test_msn_released_options_reach_the_batch_the_loss_and_the_schedules():
    cfg, spec, objective, out = _step("msn", RELEASED_SWITCHES)
    batch = _batch(cfg, spec)
    # two full-size anchors per image, one patch subset per batch and view size, floor(64 x 0.85) = 54 kept
    assert batch["anchor_views"].shape[0] == 8 and batch["anchor_keep"].shape == (8, 54)
    assert batch["focal_keep"].shape == (8, 13)  # floor(16 x 0.85); round would keep 14
    assert all(bool((keep == keep[0]).all()) for keep in (batch["anchor_keep"], batch["focal_keep"]))
    assert objective.loss.label_smoothing == 0.1 and float(out.terms["entropy"].detach()) > 0
    assert float(out.loss) == pytest.approx(float(sum(out.terms.values())), rel=1e-6)
    # the sharpening temperature: linear 0.25 -> 0.5 over 1.25 x the run, so 0.45 where the run ends
    total = cfg.optim.epochs * cfg.train.iterations_per_epoch
    assert objective.schedule_values(0)["sharpen_temperature"] == 0.25
    assert objective.schedule_values(total)["sharpen_temperature"] == pytest.approx(0.45, abs=1e-12)
    with torch.no_grad():
        late = objective(batch, iteration=total).diagnostics
    expected = objective.loss.target_probs(late["target_embedding"], objective.student["prototypes"](), 0.45)
    torch.testing.assert_close(late["teacher_head_probs"], expected)
    assert "sharpen_temperature" not in get_method("msn").build_objective(
        load_config("demo_msn", TINY)
    ).schedule_values(0)
    more = spec.training_flops(cfg)["flops_student_per_image"]
    assert more > spec.training_flops(load_config("demo_msn", TINY))["flops_student_per_image"]


def test_msn_released_init_redraws_linears_tokens_and_patch_projection():
    overrides = [*TINY, "msn.hidden_dim=512"]
    torch.manual_seed(0)
    ours = get_method("msn").build_objective(load_config("demo_msn", overrides)).student
    torch.manual_seed(0)
    released = (
        get_method("msn").build_objective(load_config("demo_msn", [*overrides, "msn.weight_init=released"])).student
    )
    head = released["projector"].mlp
    for layer in (head[0], head[3], released["backbone"].blocks[0].mlp.fc1):
        assert float(layer.weight.std()) == pytest.approx(0.02, rel=0.08) and not layer.bias.any()
    assert float(ours["projector"].mlp[3].weight.std()) == pytest.approx(1 / math.sqrt(3 * 512), rel=0.05)  # PyTorch's
    assert float(released["backbone"].cls_token.std()) > 0.01 > 1e-5 > float(ours["backbone"].cls_token.std())
    proj = released["backbone"].patch_embed.proj.weight  # Kaiming normal, fan-in 3 x 4 x 4, ReLU gain
    assert float(proj.std()) == pytest.approx(math.sqrt(2 / 48), rel=0.08)
    assert float(ours["backbone"].patch_embed.proj.weight.std()) < 0.1
    assert float(released["backbone"].pos_embed.std()) == pytest.approx(0.02, rel=0.15)
    torch.testing.assert_close(released["prototypes"].weight, ours["prototypes"].weight)  # uniform, as released
    with pytest.raises(ConfigError, match="student.pretrained_weights"):
        load_config("demo_msn", ["msn.weight_init=released", "student.pretrained_weights=/tmp/x.pth"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("msn.patch_drop_per=row", "msn.patch_drop_per"),
        ("msn.patch_drop_rounding=ceil", "msn.patch_drop_rounding"),
        ("msn.weight_init=timm", "msn.weight_init"),
        ("msn.anchor_views=0", "msn.anchor_views"),
        ("msn.label_smoothing=1.0", "msn.label_smoothing"),
        ("msn.entropy_weight=-1", "msn.entropy_weight"),
        ("msn.final_sharpen_temperature=0", "msn.final_sharpen_temperature"),
        ("msn.sharpen_horizon=0", "msn.sharpen_horizon"),
        ("msn.head_bn=sync", "msn.head_bn"),
    ],
)
def test_msn_released_options_refuse_bad_values_naming_the_key(override: str, key: str):
    with pytest.raises(ConfigError, match=f"invalid value for '{key}'"):
        load_config("demo_msn", [override])


# ---- msn.head_bn=global: 2 gloo processes == 1 process, with either head_bn_groups -----------------------------
RANKS, IMAGES, FOCAL, D_IN = 2, 3, 2, 6  # per rank: 3 images, one anchor and 2 focal views each
HEAD_CASES = [(bn, groups) for bn in ("global", "per_rank") for groups in ("joint", "per_view_size")]
TOL = {"rtol": 1e-5, "atol": 1e-7}  # the heads run in float64, but MSNLoss takes its logits in float32


def _head_data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "target": torch.randn(RANKS * IMAGES, D_IN, generator=g, dtype=torch.float64),
        "anchor": torch.randn(RANKS * IMAGES, D_IN, generator=g, dtype=torch.float64) * 2 + 1,
        "focal": torch.randn(FOCAL, RANKS * IMAGES, D_IN, generator=g, dtype=torch.float64) - 1,  # (view, image, D)
    }


def _head_step(data: dict[str, torch.Tensor], head_bn: str, groups: str) -> dict[str, torch.Tensor]:
    """MSN's head, target head and loss on these images (both heads' BatchNorms in training mode); parameter
    gradients are this process's own, not yet averaged."""
    torch.manual_seed(1)
    student = MSNProjectionHead(D_IN, 8, 5, head_bn=head_bn).double()
    prototypes = Prototypes(4, 5).double()
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        target = teacher(data["target"])
    anchor = project_anchors(student, [data["anchor"], data["focal"].reshape(-1, D_IN)], groups)
    out = MSNLoss(temperature=0.1, sharpen_temperature=0.25)(anchor, target, prototypes())
    out["loss"].backward()
    result = {"ce": out["cross_entropy"].detach(), "me_max": out["me_max"].detach()}
    for name, param in [*student.named_parameters(), ("prototypes", prototypes.weight)]:
        result[f"grad/{name}"] = param.grad.detach().clone()
    for prefix, module in (("student", student), ("teacher", teacher)):
        for name, buf in module.named_buffers():
            result[f"{prefix}/{name}"] = buf.detach().clone()
    return result


def _heads_on_rank(rank: int, world: int) -> dict:
    mine = slice(rank * IMAGES, (rank + 1) * IMAGES)
    data = {key: value[..., mine, :] for key, value in _head_data().items()}
    results = {}
    for head_bn, groups in HEAD_CASES:
        out = _head_step(data, head_bn, groups)
        for key, value in out.items():
            if key.startswith("grad/"):  # the trainer's gradient reduction: the mean over ranks
                dist.all_reduce(value)
                value /= world
        results[(head_bn, groups)] = out
    return results


@pytest.mark.numerics
def test_msn_global_head_bn_on_two_processes_equals_one_process(tmp_path: Path):
    """``msn.head_bn=global`` (the release's SyncBatchNorm): the loss, every averaged gradient and the running
    statistics of student and target heads on 2 gloo ranks equal one process holding both ranks' images, with the
    head called jointly or once per view size; ``per_rank`` statistics do not."""
    ranks = run_on_ranks(_heads_on_rank, RANKS, tmp_path)
    for head_bn, groups in HEAD_CASES:
        reference = _head_step(_head_data(), head_bn, groups)
        per_rank = [r[(head_bn, groups)] for r in ranks]
        if head_bn == "per_rank":  # each rank normalises with its own moments: the gradients differ
            assert not torch.allclose(per_rank[0]["grad/mlp.0.weight"], reference["grad/mlp.0.weight"], **TOL)
            continue
        torch.testing.assert_close(sum(r["ce"] for r in per_rank) / RANKS, reference["ce"], **TOL)
        for key, value in reference.items():
            if key != "ce":  # ME-MAX, averaged gradients and running statistics: the same on every rank
                # summation order differs across ranks: the rounding scales with the tensor's largest entry,
                # not with each entry (a small entry of a large gradient differs relatively more)
                atol = TOL["atol"] + TOL["rtol"] * float(value.abs().max())
                for r in per_rank:
                    torch.testing.assert_close(
                        r[key], value, rtol=TOL["rtol"], atol=atol, msg=lambda m, k=key, g=groups: f"{g} {k}: {m}"
                    )
