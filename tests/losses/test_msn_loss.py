"""MSN loss: hand values, a reference written from the paper's formulas, switches, 2 ranks = 1 rank."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dinolite.losses import MSNLoss
from dinolite.train.schedules import LinearSchedule, stretched_iters
from tests.gloo_ranks import run_on_ranks


def _reference(anchor, target, prototypes, tau, T, lam):
    """The paper's formulas, with sharpening as p^(1/T) / sum p^(1/T) (not via the temperature)."""
    z, zp, q = F.normalize(anchor, dim=1), F.normalize(target, dim=1), F.normalize(prototypes, dim=1)
    p = F.softmax(z @ q.t() / tau, dim=1)
    with torch.no_grad():
        pt = F.softmax(zp @ q.t() / tau, dim=1) ** (1 / T)
        pt = pt / pt.sum(1, keepdim=True)
        pt = pt.repeat(anchor.shape[0] // target.shape[0], 1)
    ce = -(pt * torch.log(p)).sum(1).mean()
    p_bar = p.mean(0)
    return ce, lam * (math.log(q.shape[0]) + (p_bar * torch.log(p_bar)).sum())


def test_msn_hand_values():
    prototypes = torch.eye(2)
    anchor, target = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 0.5]])  # norms do not matter
    out = MSNLoss(temperature=1.0, sharpen_temperature=0.5)(anchor, target, prototypes)
    p = [math.e / (math.e + 1), 1 / (math.e + 1)]  # softmax([1, 0])
    t = [1 / (1 + math.e**2), math.e**2 / (1 + math.e**2)]  # softmax([0, 1] / 0.5)
    ce = -(t[0] * math.log(p[0]) + t[1] * math.log(p[1]))
    me_max = math.log(2) + p[0] * math.log(p[0]) + p[1] * math.log(p[1])
    assert float(out["cross_entropy"]) == pytest.approx(ce, rel=1e-6)
    assert float(out["me_max"]) == pytest.approx(me_max, rel=1e-6)
    assert float(out["loss"]) == pytest.approx(ce + me_max, rel=1e-6)


def test_msn_matches_reference_with_several_views():
    g = torch.Generator().manual_seed(0)
    anchor, target, protos = (
        torch.randn(12, 8, generator=g),
        torch.randn(4, 8, generator=g),
        torch.randn(16, 8, generator=g),
    )
    anchor.requires_grad_(True)
    out = MSNLoss(temperature=0.1, sharpen_temperature=0.25, me_max_weight=1.0)(anchor, target, protos)
    ce, rme = _reference(anchor, target, protos, 0.1, 0.25, 1.0)
    torch.testing.assert_close(out["cross_entropy"], ce)
    torch.testing.assert_close(out["me_max"], rme)
    (grad,) = torch.autograd.grad(out["loss"], anchor)
    (ref_grad,) = torch.autograd.grad(ce + rme, anchor)
    torch.testing.assert_close(grad, ref_grad)


def test_msn_switches():
    g = torch.Generator().manual_seed(1)
    anchor, target, protos = (
        torch.randn(6, 4, generator=g),
        torch.randn(3, 4, generator=g),
        torch.randn(5, 4, generator=g),
    )
    no_sharpen = MSNLoss(temperature=0.1, sharpen=False)(anchor, target, protos)
    ce, _ = _reference(anchor, target, protos, 0.1, 1.0, 1.0)
    torch.testing.assert_close(no_sharpen["cross_entropy"], ce)
    no_me_max = MSNLoss(me_max=False)(anchor, target, protos)
    assert float(no_me_max["me_max"]) == 0.0
    torch.testing.assert_close(no_me_max["loss"], no_me_max["cross_entropy"])
    # Sinkhorn targets equal 3 Sinkhorn iterations started from the sharpened probabilities
    targets = torch.randn(40, 4, generator=g)
    balanced = MSNLoss(temperature=0.5, sharpen_temperature=0.5, use_sinkhorn=True).target_probs(targets, protos)
    q = F.softmax(F.normalize(targets, dim=1) @ F.normalize(protos, dim=1).t() / 0.5, dim=1) ** 2
    q = (q / q.sum(1, keepdim=True)).t()
    q = q / q.sum()
    for _ in range(3):
        q = q / q.sum(1, keepdim=True) / 5  # each prototype 1/K
        q = q / q.sum(0, keepdim=True) / 40  # each sample 1/B
    torch.testing.assert_close(balanced, (q * 40).t())
    torch.testing.assert_close(balanced.sum(0), torch.full((5,), 8.0), rtol=0.05, atol=0)
    with pytest.raises(ValueError, match="whole number of views"):
        MSNLoss()(torch.randn(5, 4), torch.randn(2, 4), protos)


def test_label_smoothing_entropy_and_sharpening_hand_values():
    prototypes = torch.eye(2)
    anchor, target = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 0.5]])
    s, w, T = 0.2, 0.5, 0.25
    loss = MSNLoss(temperature=1.0, sharpen_temperature=0.5, label_smoothing=s, entropy_weight=w)
    out = loss(anchor, target, prototypes, sharpen_temperature=T)  # the scheduled T replaces 0.5
    sig = math.e / (math.e + 1)
    p = [(1 - s) * sig + s / 2, (1 - s) * (1 - sig) + s / 2]  # smoothed softmax([1, 0])
    q = [(1 - s) * (1 - sig) + s / 2, (1 - s) * sig + s / 2]  # smoothed softmax([0, 1]), then sharpened
    t = [q[0] ** 4 / (q[0] ** 4 + q[1] ** 4), q[1] ** 4 / (q[0] ** 4 + q[1] ** 4)]
    entropy = -(p[0] * math.log(p[0]) + p[1] * math.log(p[1]))
    assert float(out["cross_entropy"]) == pytest.approx(-(t[0] * math.log(p[0]) + t[1] * math.log(p[1])), rel=1e-6)
    assert float(out["me_max"]) == pytest.approx(math.log(2) - entropy, rel=1e-5)  # one anchor: p_bar = p
    assert float(out["entropy"]) == pytest.approx(w * entropy, rel=1e-6)
    assert float(out["loss"]) == pytest.approx(float(out["cross_entropy"] + out["me_max"] + out["entropy"]), rel=1e-6)
    torch.testing.assert_close(out["anchor_probs"], torch.tensor([p]))
    # defaults: no smoothing, no entropy term, the constructor's T; sharpen=False ignores a scheduled T
    plain = MSNLoss(temperature=1.0, sharpen_temperature=0.5)(anchor, target, prototypes)
    assert float(plain["entropy"]) == 0.0
    unsharpened = MSNLoss(temperature=1.0, sharpen=False)
    torch.testing.assert_close(unsharpened.target_probs(target, prototypes, 0.1), torch.tensor([[1 - sig, sig]]))
    for bad in ({"label_smoothing": 1.0}, {"label_smoothing": -0.1}, {"entropy_weight": -1.0}):
        with pytest.raises(ValueError, match="MSNLoss"):
            MSNLoss(**bad)
    with pytest.raises(ValueError, match="sharpening temperature"):
        loss(anchor, target, prototypes, sharpen_temperature=0.0)


RELEASED_OPTIONS = Path(__file__).resolve().parents[1] / "fixtures" / "released" / "msn_loss_options.safetensors"


@pytest.mark.parametrize("sinkhorn", ["sinkhorn_off", "sinkhorn_on"])
def test_loss_options_equal_the_released_loss(sinkhorn: str):
    """facebookresearch/msn's own loss (src/losses.py, recorded in the fixture) with label smoothing 0.1,
    entropy weight 0.3, the scheduled T at iteration 10 of 40 (start 0.25, final 0.5, horizon 1.25) and 3
    anchor views: loss, terms, targets and the gradients of anchors and prototypes."""
    from safetensors import safe_open

    with safe_open(str(RELEASED_OPTIONS), "pt") as f:
        fixture = {key: f.get_tensor(key) for key in f.keys()}
        settings = json.loads(f.metadata()["settings"])
    released = {key.split("/")[-1]: value for key, value in fixture.items() if key.startswith(f"released/{sinkhorn}/")}
    total = settings["iterations_per_epoch"] * settings["epochs"]
    schedule = LinearSchedule(settings["start_sharpen"], settings["final_sharpen"], stretched_iters(total, 1.25))
    T = schedule(settings["iteration"])  # msn.final_sharpen_temperature with msn.sharpen_horizon=1.25
    assert T == float(fixture["released/sharpen_T"])
    loss = MSNLoss(
        temperature=settings["temperature"],
        sharpen_temperature=settings["start_sharpen"],
        me_max_weight=settings["memax_weight"],
        use_sinkhorn=sinkhorn == "sinkhorn_on",
        label_smoothing=settings["label_smoothing"],
        entropy_weight=settings["ent_weight"],
    )
    anchor = fixture["inputs/anchor"].clone().requires_grad_(True)
    prototypes = fixture["inputs/prototypes"].clone().requires_grad_(True)
    out = loss(anchor, fixture["inputs/target"], prototypes, sharpen_temperature=T)
    out["loss"].backward()
    assert anchor.shape[0] == settings["num_views"] * settings["batch"]
    torch.testing.assert_close(out["loss"], released["loss"], rtol=0, atol=2e-6)
    torch.testing.assert_close(out["cross_entropy"], released["msn_ce"], rtol=0, atol=2e-6)
    torch.testing.assert_close(out["me_max"], released["me_max"], rtol=0, atol=2e-6)
    torch.testing.assert_close(out["entropy"], settings["ent_weight"] * released["entropy"], rtol=0, atol=2e-6)
    torch.testing.assert_close(out["target_probs"], released["targets"], rtol=0, atol=1e-6)
    torch.testing.assert_close(anchor.grad, released["grad_anchor"], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(prototypes.grad, released["grad_prototypes"], rtol=1e-4, atol=1e-7)


def test_me_max_is_zero_for_balanced_and_log_k_for_collapsed_predictions():
    protos = torch.eye(4)
    loss = MSNLoss(temperature=1e-3)
    balanced = loss(torch.eye(4), torch.eye(4), protos)
    collapsed = loss(torch.tensor([[1.0, 0, 0, 0]] * 4), torch.eye(4), protos)
    assert float(balanced["me_max"]) == pytest.approx(0.0, abs=1e-5)
    assert float(collapsed["me_max"]) == pytest.approx(math.log(4), rel=1e-4)


# ---- 2 gloo processes == 1 process -------------------------------------------------------------
B_PER_RANK, VIEWS, D, K = 3, 2, 8, 6


def _data():
    g = torch.Generator().manual_seed(0)
    anchor = torch.randn(VIEWS, 2 * B_PER_RANK, D, generator=g)  # (view, image, D)
    target = torch.randn(2 * B_PER_RANK, D, generator=g)
    protos = torch.randn(K, D, generator=g)
    return anchor, target, protos


def _run(anchor_vbd, target, protos):
    anchor = anchor_vbd.reshape(-1, D).clone().requires_grad_(True)  # view-major rows
    prototypes = protos.clone().requires_grad_(True)
    out = MSNLoss(temperature=0.1, sharpen_temperature=0.25)(anchor, target, prototypes)
    anchor_grad, proto_grad = torch.autograd.grad(out["loss"], [anchor, prototypes])
    return {
        "ce": out["cross_entropy"].detach(),
        "me_max": out["me_max"].detach(),
        "anchor_grad": anchor_grad.reshape(VIEWS, -1, D),
        "proto_grad": proto_grad,
    }


def _on_rank(rank: int, world: int) -> dict[str, torch.Tensor]:
    anchor, target, protos = _data()
    mine = slice(rank * B_PER_RANK, (rank + 1) * B_PER_RANK)
    return _run(anchor[:, mine], target[mine], protos)


def test_two_process_msn_equals_single_process(tmp_path: Path):
    ranks = run_on_ranks(_on_rank, 2, tmp_path)
    reference = _run(*_data())
    # ME-MAX uses the global mean prediction: the same value on every rank as in one process
    for r in ranks:
        torch.testing.assert_close(r["me_max"], reference["me_max"])
    # equal local batches: the mean of the local cross-entropies is the global one
    torch.testing.assert_close((ranks[0]["ce"] + ranks[1]["ce"]) / 2, reference["ce"])
    # gradient averaging over ranks (FSDP/DDP) gives the single-process gradient
    anchor_grad = torch.cat([r["anchor_grad"] for r in ranks], dim=1) / 2
    torch.testing.assert_close(anchor_grad, reference["anchor_grad"])
    torch.testing.assert_close((ranks[0]["proto_grad"] + ranks[1]["proto_grad"]) / 2, reference["proto_grad"])
