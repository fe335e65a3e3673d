"""dinolite/train/methods/distillation_objective.py: DINOv2's distillation step (Sec. 5).

The loss against a hand computation from the formula; the student sees unmasked crops; the frozen
teacher is bitwise unchanged by training while the evaluated EMA of the student moves; a resume against
other teacher weights is refused."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from dinolite.train.build import build_run
from dinolite.train.methods import distillation
from dinolite.train.methods.distillation_objective import FINGERPRINT_KEY
from tests.train.methods.distillation_helpers import distil_config, write_teacher
from tests.train.scale_worker import global_batch_slice

TEACHER_TEMP = 0.05


def _cross_entropy(targets: torch.Tensor, logits: torch.Tensor, temp: float) -> torch.Tensor:
    return -(targets * F.log_softmax(logits / temp, dim=-1)).sum(-1)


def _by_hand(objective, batch: dict, cfg) -> dict[str, torch.Tensor]:
    """DINO + iBOT + KoLeo written from the formula of the module docstring, with plain torch ops."""
    teacher, student = objective.distillation_teacher, objective.student
    g, loc = batch["collated_global_crops"], batch["collated_local_crops"]
    idx, weight = batch["mask_indices_list"], batch["masks_weight"]
    n_images = g.shape[0]
    with torch.no_grad():
        out = teacher["backbone"].forward_features(g)
        # train.centering=centering: the centre starts at 0, so the first targets are a plain softmax
        t_cls = F.softmax(teacher["dino_head"](out["x_norm_clstoken"]) / TEACHER_TEMP, dim=-1)
        t_patch_in = out["x_norm_patchtokens"].flatten(0, 1)[idx]
        t_patch = F.softmax(teacher["ibot_head"](t_patch_in) / TEACHER_TEMP, dim=-1)
    s_global = student["backbone"].forward_features(g)  # no masks: distillation's student sees whole crops
    s_local = student["backbone"].forward_features(loc)
    s_logits = student["dino_head"](torch.cat([s_global["x_norm_clstoken"], s_local["x_norm_clstoken"]]))
    student_crops, teacher_crops = s_logits.chunk(4), t_cls.chunk(2)
    tau = cfg.teacher.student_temp
    pairs = [(i, j) for i in range(2) for j in range(4) if j != i]
    dino = sum(_cross_entropy(teacher_crops[i], student_crops[j], tau).mean() for i, j in pairs) / len(pairs)
    s_patch = student["dino_head"](s_global["x_norm_patchtokens"].flatten(0, 1)[idx])
    ibot = (_cross_entropy(t_patch, s_patch, tau) * weight).sum() / n_images
    koleo = 0.0
    for crop in s_global["x_norm_clstoken"].chunk(2):
        z = F.normalize(crop, dim=-1)
        distances = torch.cdist(z, z) + torch.diag(torch.full((z.shape[0],), float("inf")))
        koleo = koleo - torch.log(distances.min(dim=1).values + 1e-8).mean()
    return {
        "dino_loss": cfg.dino.loss_weight * dino,
        "ibot_loss": cfg.ibot.loss_weight * ibot,
        "koleo_loss": cfg.dino.koleo_loss_weight * koleo,
    }


@pytest.fixture
def teacher_file(tmp_path):
    path = tmp_path / "teacher.safetensors"
    write_teacher(path, width=48, depth=3)
    return path


def _objective(cfg):
    torch.manual_seed(cfg.train.seed)
    objective = distillation.build_objective(cfg)
    objective.train()
    return objective


def test_the_loss_is_the_hand_computed_dino_ibot_and_koleo_of_the_frozen_teachers_targets(teacher_file):
    cfg = distil_config(teacher_file, "dino.koleo_loss_weight=0.3", "ibot.loss_weight=0.7")
    objective = _objective(cfg)
    assert objective.distillation_teacher["backbone"].embed_dim == 48 and objective.student["backbone"].embed_dim == 32
    batch = global_batch_slice(0, 4, 0, 1)
    out = objective.loss_at_temperature(batch, TEACHER_TEMP)
    expected = _by_hand(objective, batch, cfg)
    assert out.terms.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(out.terms[name], value, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(out.loss, sum(expected.values()), rtol=1e-5, atol=1e-6)


def test_the_student_sees_unmasked_crops_the_masks_only_place_the_ibot_loss(teacher_file):
    objective = _objective(distil_config(teacher_file))
    batch = global_batch_slice(0, 4, 0, 1)
    other_masks = {**batch, "collated_masks": torch.zeros_like(batch["collated_masks"])}
    fewer = {**batch, "mask_indices_list": batch["mask_indices_list"][:3], "masks_weight": batch["masks_weight"][:3]}
    # each from the same state (a step updates the centres)
    losses = [copy.deepcopy(objective).loss_at_temperature(b, TEACHER_TEMP).loss for b in (batch, other_masks, fewer)]
    assert torch.equal(losses[0], losses[1])
    assert not torch.equal(losses[0], losses[2])  # the positions do matter: fewer of them is another iBOT loss


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_the_frozen_teacher_is_bitwise_unchanged_by_training_and_the_ema_of_the_student_moves(teacher_file):
    cfg = distil_config(teacher_file)
    torch.manual_seed(cfg.train.seed)
    run = build_run(cfg)
    objective = run.objective
    frozen = objective.distillation_teacher
    before, ema_before = _state(frozen), _state(objective.teacher)
    for step in range(3):
        run.step(global_batch_slice(step, 4, 0, 1))
        assert not frozen.training and all(not p.requires_grad and p.grad is None for p in frozen.parameters())
    after = _state(frozen)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    # not among what the optimizer trains, nor in the objective's (checkpointed) state
    trained = {id(p) for group in run.optimizer.param_groups for p in group["params"]}
    assert not trained & {id(p) for p in frozen.parameters()}
    assert not any(k.startswith("distillation_teacher") for k in objective.state_dict())
    ema = _state(objective.teacher)
    assert any(not torch.equal(ema[k], ema_before[k]) for k in ema), "the evaluated EMA of the student did not move"


def test_the_evaluated_network_is_the_ema_of_the_student(teacher_file):
    cfg = distil_config(teacher_file)
    torch.manual_seed(cfg.train.seed)
    run = build_run(cfg)
    objective = run.objective
    run.step(global_batch_slice(0, 4, 0, 1))
    ema_before, student = _state(objective.teacher), None
    run.step(global_batch_slice(1, 4, 0, 1))
    student = _state(objective.student)
    momentum = objective.schedules.momentum(1)
    for key, value in _state(objective.teacher).items():
        torch.testing.assert_close(value, momentum * ema_before[key] + (1 - momentum) * student[key], msg=key)


def test_a_resume_against_other_teacher_weights_is_refused(teacher_file, tmp_path):
    objective = _objective(distil_config(teacher_file))
    state = objective.extra_state()
    assert state[FINGERPRINT_KEY].dtype == torch.uint8 and state[FINGERPRINT_KEY].shape == (32,)
    objective.load_extra_state(state)  # the same teacher: fine
    other = tmp_path / "other.safetensors"
    write_teacher(other, width=48, depth=2)
    with pytest.raises(ValueError, match="trained against another teacher"):
        _objective(distil_config(other)).load_extra_state(state)
