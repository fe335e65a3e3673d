"""DINOv2Objective: teacher/student wiring, EMA, loss composition against hand-computed values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dinolite.config import load_config
from dinolite.losses import DINOLoss, KoLeoLoss, iBOTPatchLoss
from dinolite.models import DINOHead, DinoVisionTransformer
from dinolite.train.methods.dinov2 import build_objective
from dinolite.train.methods.dinov2_objective import DINOv2Objective, DINOv2Schedules
from dinolite.train.objective import SSLObjective

K = 16  # prototypes
B = 3  # images
N_LOCAL = 2
GLOBAL, LOCAL, PATCH = 16, 8, 4
N_TOKENS = (GLOBAL // PATCH) ** 2


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids OpenMP oversubscription."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_objective(weights=(1.0, 1.0, 0.1), centering="centering", separate_ibot=False, seed=0) -> DINOv2Objective:
    torch.manual_seed(seed)
    # layerscale 1.0 (not DINOv2's 1e-5) so that the tiny random network's outputs differ per image
    backbone = DinoVisionTransformer(
        img_size=GLOBAL, patch_size=PATCH, embed_dim=24, depth=2, num_heads=2, init_values=1.0
    )
    head = DINOHead(24, K, hidden_dim=32, bottleneck_dim=8, nlayers=3)
    ibot_head = DINOHead(24, K, hidden_dim=32, bottleneck_dim=8, nlayers=3) if separate_ibot else None
    return DINOv2Objective(
        backbone,
        head,
        ibot_head,
        DINOLoss(K),
        iBOTPatchLoss(K),
        KoLeoLoss(),
        dino_weight=weights[0],
        ibot_weight=weights[1],
        koleo_weight=weights[2],
        centering=centering,
    )


def make_batch(seed=1) -> dict:
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(2 * B, N_TOKENS, dtype=torch.bool)
    masks[0, [1, 2, 5]] = True
    masks[4, [0, 7]] = True
    indices = masks.flatten().nonzero().flatten()
    weight = torch.cat([torch.full((3,), 1 / 3), torch.full((2,), 1 / 2)])
    return {
        "collated_global_crops": torch.randn(2 * B, 3, GLOBAL, GLOBAL, generator=g),
        "collated_local_crops": torch.randn(N_LOCAL * B, 3, LOCAL, LOCAL, generator=g),
        "collated_masks": masks,
        "mask_indices_list": indices,
        "masks_weight": weight,
        "n_masked_patches": torch.tensor([indices.numel()]),
        "upperbound": indices.numel(),
    }


def test_is_an_ssl_objective_with_frozen_teacher():
    obj = make_objective()
    assert isinstance(obj, SSLObjective)
    assert set(obj.student.keys()) == {"backbone", "dino_head"}  # shared iBOT head is not duplicated
    assert all(not p.requires_grad for p in obj.teacher.parameters())
    student_ids = {id(p) for p in obj.student.parameters()}
    assert not any(id(p) in student_ids for p in obj.teacher.parameters())
    for (_, s), (_, t) in zip(obj.student.named_parameters(), obj.teacher.named_parameters()):
        assert torch.equal(s, t)
    obj.train()
    assert obj.student.training and not obj.teacher.training


def test_teacher_gets_no_gradient():
    obj = make_objective()
    out = obj.loss_at_temperature(make_batch(), teacher_temp=0.04)
    out.loss.backward()
    assert all(p.grad is None for p in obj.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in obj.student["backbone"].parameters())


def test_update_teacher_follows_ema_formula():
    obj = make_objective()
    with torch.no_grad():
        for p in obj.student.parameters():
            p.add_(torch.randn_like(p))
    before_t = [p.detach().clone() for p in obj.teacher.parameters()]
    student = [p.detach().clone() for p in obj.student.parameters()]
    m = 0.9
    obj.update_teacher(m)
    for t_old, s, t_new in zip(before_t, student, obj.teacher.parameters()):
        torch.testing.assert_close(t_new, m * t_old + (1 - m) * s, rtol=1e-6, atol=1e-7)
    obj.update_teacher(1.0)  # momentum 1 freezes the teacher exactly
    for t_old, s, t_new in zip(before_t, student, obj.teacher.parameters()):
        torch.testing.assert_close(t_new, m * t_old + (1 - m) * s, rtol=1e-6, atol=1e-7)


def test_dino_term_matches_hand_computed_cross_view_pairs():
    obj = make_objective(weights=(1.0, 0.0, 0.0))
    batch = make_batch()
    teacher_temp, student_temp = 0.05, 0.1
    with torch.no_grad():
        t_cls = obj.teacher["backbone"].forward_features(batch["collated_global_crops"])["x_norm_clstoken"]
        t_probs = F.softmax(obj.teacher["dino_head"](t_cls) / teacher_temp, dim=-1)  # centre is 0 at start
        s_global = obj.student["backbone"].forward_features(
            batch["collated_global_crops"], masks=batch["collated_masks"]
        )
        s_local = obj.student["backbone"].forward_features(batch["collated_local_crops"])
        s_logits = obj.student["dino_head"](torch.cat([s_global["x_norm_clstoken"], s_local["x_norm_clstoken"]]))
    s_crops = s_logits.chunk(2 + N_LOCAL)
    t_crops = t_probs.chunk(2)
    pairs = [(i, j) for i in range(2) for j in range(2 + N_LOCAL) if i != j]
    expected = sum(-(t_crops[i] * F.log_softmax(s_crops[j] / student_temp, -1)).sum(-1).mean() for i, j in pairs)
    expected = expected / len(pairs)
    assert len(pairs) == 2 * (1 + N_LOCAL)
    out = obj.loss_at_temperature(batch, teacher_temp=teacher_temp)
    assert set(out.terms) == {"dino_loss"}
    torch.testing.assert_close(out.terms["dino_loss"], expected, rtol=1e-5, atol=1e-6)
    # centring: the centre moved towards the batch mean of the teacher logits (momentum 0.9)
    with torch.no_grad():
        t_logits = obj.teacher["dino_head"](t_cls)
    torch.testing.assert_close(obj.dino_loss.center, 0.1 * t_logits.mean(0, keepdim=True), rtol=1e-5, atol=1e-6)


def test_ibot_and_koleo_terms_match_hand_computation():
    obj = make_objective(weights=(0.0, 1.0, 1.0), centering="sinkhorn_knopp", separate_ibot=True)
    batch = make_batch()
    idx = batch["mask_indices_list"]
    with torch.no_grad():
        t_patch = obj.teacher["backbone"].forward_features(batch["collated_global_crops"])["x_norm_patchtokens"]
        t_logits = obj.teacher["ibot_head"](t_patch.flatten(0, 1)[idx])
        q = torch.exp(t_logits / 0.07).t()
        q /= q.sum()
        for _ in range(3):
            q /= q.sum(1, keepdim=True) * K
            q /= q.sum(0, keepdim=True) * q.shape[1]
        t_probs = (q * q.shape[1]).t()
        s_out = obj.student["backbone"].forward_features(batch["collated_global_crops"], masks=batch["collated_masks"])
        s_logits = obj.student["ibot_head"](s_out["x_norm_patchtokens"].flatten(0, 1)[idx])
        ce = -(t_probs * F.log_softmax(s_logits / 0.1, -1)).sum(-1)
        expected_ibot = (ce * batch["masks_weight"]).sum() / (2 * B)
        expected_koleo = 0.0
        for crop in F.normalize(s_out["x_norm_clstoken"], dim=-1).chunk(2):
            dist = torch.cdist(crop, crop) + torch.eye(B) * 1e9
            expected_koleo += -torch.log(dist.min(1).values + 1e-8).mean()
    out = obj.loss_at_temperature(batch, teacher_temp=0.07)
    assert set(out.terms) == {"ibot_loss", "koleo_loss"}
    torch.testing.assert_close(out.terms["ibot_loss"], expected_ibot, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.terms["koleo_loss"], expected_koleo, rtol=1e-4, atol=1e-5)


def test_terms_are_scaled_by_config_weights_and_sum_to_loss():
    batch = make_batch()
    unit = make_objective(weights=(1.0, 1.0, 1.0), centering="sinkhorn_knopp")
    weighted = make_objective(weights=(2.0, 0.5, 0.3), centering="sinkhorn_knopp")  # same seed -> same weights
    raw = unit.loss_at_temperature(batch, teacher_temp=0.06).terms
    out = weighted.loss_at_temperature(batch, teacher_temp=0.06)
    for name, w in (("dino_loss", 2.0), ("ibot_loss", 0.5), ("koleo_loss", 0.3)):
        torch.testing.assert_close(out.terms[name], w * raw[name], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, sum(out.terms.values()), rtol=1e-6, atol=1e-6)


def test_teacher_sees_unmasked_global_crops_only():
    obj = make_objective(weights=(1.0, 1.0, 0.0), centering="sinkhorn_knopp")
    calls = []
    original = obj.teacher["backbone"].forward_features

    def spy(x, masks=None):
        calls.append((tuple(x.shape), masks))
        return original(x, masks=masks)

    obj.teacher["backbone"].forward_features = spy
    obj.loss_at_temperature(make_batch(), teacher_temp=0.04)
    assert calls == [((2 * B, 3, GLOBAL, GLOBAL), None)]


def test_diagnostics_for_monitor():
    obj = make_objective()
    diag = obj.loss_at_temperature(make_batch(), teacher_temp=0.04).diagnostics
    assert diag["teacher_cls"].shape == (B, 24) and diag["student_cls"].shape == (B, 24)
    for key in ("teacher_head_logits", "teacher_head_probs", "student_head_logits"):
        assert diag[key].shape == (B, K) and not diag[key].requires_grad
    torch.testing.assert_close(diag["teacher_head_probs"].sum(-1), torch.ones(B))
    # LiDAR's surrogate classes: the teacher CLS of the two global crops of each image (crop-major batch)
    views = diag["teacher_cls_views"]
    assert views.shape == (B, 2, 24) and not views.requires_grad
    torch.testing.assert_close(views[:, 0], diag["teacher_cls"])
    crops = make_batch()["collated_global_crops"]
    second_crops = obj.teacher["backbone"].forward_features(crops)["x_norm_clstoken"][B:]
    torch.testing.assert_close(views[:, 1], second_crops, rtol=1e-5, atol=1e-5)


def test_extra_state_round_trip_restores_centres():
    obj = make_objective()
    obj.loss_at_temperature(make_batch(), teacher_temp=0.04)
    state = obj.extra_state()
    assert set(state) == {"dino_loss.center", "ibot_loss.center"} and state["dino_loss.center"].abs().sum() > 0
    fresh = make_objective()
    fresh.load_extra_state(state)
    assert torch.equal(fresh.dino_loss.center, obj.dino_loss.center)
    assert torch.equal(fresh.ibot_loss.center, obj.ibot_loss.center)


def test_frozen_prototypes_do_not_move_and_keep_zero_moments():
    obj = make_objective()
    obj.schedules = DINOv2Schedules(momentum=lambda it: 0.9, teacher_temp=lambda it: 0.04, freeze_last_layer_iters=2)
    last = obj.student["dino_head"].last_layer.weight
    others = [p for n, p in obj.student.named_parameters() if "last_layer" not in n]
    # the loop sets every group's lr from the generic schedule; the hook zeroes the flagged group's lr
    opt = torch.optim.AdamW(
        [{"params": others, "lr": 0.1, "is_last_layer": False}, {"params": [last], "lr": 0.1, "is_last_layer": True}],
        weight_decay=0.5,
    )
    before = last.detach().clone()
    others_before = [p.detach().clone() for p in others]
    for iteration in range(2):
        opt.zero_grad()
        obj(make_batch(), iteration).loss.backward()
        assert last.grad.abs().sum() > 0
        obj.after_backward(iteration, opt)
        assert torch.count_nonzero(last.grad) == 0
        assert opt.param_groups[1]["lr"] == 0.0 and opt.param_groups[0]["lr"] == 0.1
        opt.step()
    assert torch.equal(last, before)  # no Adam step, no weight decay
    assert torch.count_nonzero(opt.state[last]["exp_avg"]) == 0
    assert torch.count_nonzero(opt.state[last]["exp_avg_sq"]) == 0
    assert any(not torch.equal(p, b) for p, b in zip(others, others_before))  # the rest did train
    opt.zero_grad()
    opt.param_groups[1]["lr"] = 0.1  # what the loop's apply_schedules does at every step
    obj(make_batch(), 2).loss.backward()
    obj.after_backward(2, opt)  # the freeze is over: gradient and lr are left alone
    assert last.grad.abs().sum() > 0 and opt.param_groups[1]["lr"] == 0.1


def test_forward_and_hooks_follow_the_schedules():
    obj = make_objective()
    obj.schedules = DINOv2Schedules(momentum=lambda it: 0.5 + it / 10, teacher_temp=lambda it: 0.04 + it / 100)
    batch = make_batch()
    at_3 = obj(batch, 3)
    fresh = make_objective()
    reference = fresh.loss_at_temperature(batch, teacher_temp=0.07)
    assert torch.equal(at_3.loss, reference.loss)
    assert obj.schedule_values(3) == {"momentum": 0.8, "teacher_temp": 0.07}
    teacher_before = [p.detach().clone() for p in obj.teacher.parameters()]
    with torch.no_grad():
        for p in obj.student.parameters():
            p.add_(1.0)
    obj.after_optimizer_step(3)  # EMA with the momentum at iteration 3
    for t_before, t, s in zip(teacher_before, obj.teacher.parameters(), obj.student.parameters()):
        torch.testing.assert_close(t, 0.8 * t_before + 0.2 * s)
    with pytest.raises(RuntimeError, match="without schedules"):
        make_objective()(batch, 0)


def test_build_objective_from_demo_config():
    cfg = load_config("demo", ["student.depth=1", "dino.head_n_prototypes=32", "ibot.head_n_prototypes=32"])
    obj = build_objective(cfg)
    assert obj.student["dino_head"].last_layer.weight.shape[0] == 32
    assert obj.koleo_weight == cfg.dino.koleo_loss_weight and obj.centering == cfg.train.centering


def test_invalid_centering_is_rejected():
    with pytest.raises(ValueError, match="train.centering"):
        make_objective(centering="none")
