"""DINOv2's self-supervised objective: DINO (CLS) + iBOT (masked patches) + KoLeo, with an EMA teacher.

Oquab et al. 2023, "DINOv2: Learning Robust Visual Features without Supervision" (Sec. 4), building on
Caron et al. 2021 (DINO), Zhou et al. 2022 (iBOT) and Sablayrolles et al. 2019 (KoLeo).

Per batch of B images with 2 global crops and N local crops:

- the teacher (EMA of the student, no gradient) sees the 2 *unmasked* global crops and produces, per
  global crop i, the centred target distribution ``t_i = center(h_T(cls_T(g_i)) / teacher_temp)``;
- the student sees the 2 global crops with iBOT's masked patches replaced by the mask token, and the N
  local crops; ``s_j = log_softmax(h_S(cls_S(x_j)) / student_temp)``;
- ``DINO = mean over pairs (i, j), j != i, of -sum_k t_i[k] s_j[k]`` (the student's view of global crop
  A is matched to the teacher's view of B and every local crop to both: DINOv2's cross-view pairing);
- ``iBOT`` is the same cross-entropy between the teacher's and the student's patch-head outputs at the
  masked positions of the global crops, each image's masked tokens weighted by 1/#masked;
- ``KoLeo = sum over the 2 global crops of -mean_b log(min_{c != b} ||z_b - z_c|| + eps)`` on the
  L2-normalised student backbone CLS features (summed over crops as DINOv2 does);
- ``loss = dino.loss_weight * DINO + ibot.loss_weight * iBOT + dino.koleo_loss_weight * KoLeo``.

After each optimizer step the teacher moves as ``theta_T <- m * theta_T + (1 - m) * theta_S``.

The output's ``patch_tokens`` (the student's final-norm patch tokens of the masked global crops, the
teacher's of the unmasked ones) are what Gram anchoring (DINOv3, ``gram`` section: dinolite/train/gram.py)
compares when it is on.

The method's registry entry (built from the config, its views, FLOPs and watchdog thresholds) is
:mod:`dinolite.train.methods.dinov2`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from dinolite.config import Config
from dinolite.dtypes import at_least_float32
from dinolite.train.ema import ema_update, run_momentum_schedule
from dinolite.train.objective import ObjectiveOutput, PatchTokens, SSLObjective
from dinolite.train.schedules import CosineSchedule, Schedule

CENTERING_CHOICES = ("centering", "sinkhorn_knopp")


@dataclass(frozen=True)
class DINOv2Schedules:
    """DINOv2's own schedules, pure functions of the iteration (DINOv2's ``CosineScheduler`` shapes).

    * ``momentum``: teacher EMA momentum, ``ema.momentum`` -> ``ema.final_momentum`` over the whole run
      (DINOv2's ``teacher.momentum_teacher`` -> ``final_momentum_teacher``, cosine);
    * ``teacher_temp``: linear ``warmup_teacher_temp`` -> ``teacher_temp`` over
      ``warmup_teacher_temp_epochs``, then constant;
    * ``freeze_last_layer_iters``: the prototype layers get no update before this iteration.
    """

    momentum: Schedule
    teacher_temp: Schedule
    freeze_last_layer_iters: int = 0

    @classmethod
    def from_config(cls, cfg: Config) -> "DINOv2Schedules":
        epoch = cfg.train.iterations_per_epoch
        temp_iters = cfg.teacher.warmup_teacher_temp_epochs * epoch
        return cls(
            momentum=run_momentum_schedule(cfg),
            teacher_temp=CosineSchedule(
                base_value=cfg.teacher.teacher_temp,
                final_value=cfg.teacher.teacher_temp,
                total_iters=temp_iters,
                warmup_iters=temp_iters,
                start_warmup_value=cfg.teacher.warmup_teacher_temp,
            ),
            freeze_last_layer_iters=cfg.optim.freeze_last_layer_epochs * epoch,
        )


class DINOv2Objective(SSLObjective):
    """Student (backbone + DINO head [+ separate iBOT head]) trained against an EMA teacher copy.

    ``mask_student_crops`` (class attribute): the student's global crops get iBOT's mask tokens at the
    masked positions (DINOv2 pretraining); a subclass may turn it off (distillation).

    Args:
        backbone: the student ViT (``forward_features`` / ``forward_features_list`` as in
            docs/interfaces.md). The teacher is a deep copy of it taken here.
        dino_head: the student's CLS head.
        ibot_head: the student's patch head, or ``None`` to share ``dino_head`` (DINOv2's default).
        dino_loss, ibot_loss, koleo_loss: the loss modules of :mod:`dinolite.losses`.
        dino_weight, ibot_weight, koleo_weight: the weights of the three terms (a zero weight skips
            the term's computation).
        centering: ``"centering"`` (EMA centre then softmax) or ``"sinkhorn_knopp"``.
        sinkhorn_iterations: Sinkhorn-Knopp iterations when ``centering == "sinkhorn_knopp"``.
        schedules: teacher momentum / temperature and prototype freeze by iteration (needed by
            ``forward(batch, iteration)`` and the hooks; :meth:`loss_at_temperature` works without).
    """

    mask_student_crops = True

    def __init__(
        self,
        backbone: nn.Module,
        dino_head: nn.Module,
        ibot_head: Optional[nn.Module],
        dino_loss: nn.Module,
        ibot_loss: nn.Module,
        koleo_loss: Callable[[torch.Tensor], torch.Tensor],
        dino_weight: float = 1.0,
        ibot_weight: float = 1.0,
        koleo_weight: float = 0.1,
        centering: str = "centering",
        sinkhorn_iterations: int = 3,
        schedules: Optional[DINOv2Schedules] = None,
    ) -> None:
        super().__init__()
        if centering not in CENTERING_CHOICES:
            raise ValueError(f"train.centering: {centering!r} is not one of {', '.join(CENTERING_CHOICES)}")
        modules: dict[str, nn.Module] = {"backbone": backbone, "dino_head": dino_head}
        if ibot_head is not None and ibot_head is not dino_head:
            modules["ibot_head"] = ibot_head
        self.student = nn.ModuleDict(modules)
        # The teacher starts equal to the student (DINOv2 loads the student's weights into it).
        self.teacher = copy.deepcopy(self.student)
        for param in self.teacher.parameters():
            param.requires_grad_(False)
        self.teacher.eval()
        self.ibot_head_name = "ibot_head" if "ibot_head" in modules else "dino_head"
        self.dino_loss = dino_loss
        self.ibot_loss = ibot_loss
        self.koleo_loss = koleo_loss
        self.dino_weight = float(dino_weight)
        self.ibot_weight = float(ibot_weight)
        self.koleo_weight = float(koleo_weight)
        self.centering = centering
        self.sinkhorn_iterations = int(sinkhorn_iterations)
        self.schedules = schedules

    def _schedules(self) -> DINOv2Schedules:
        if self.schedules is None:
            raise RuntimeError("DINOv2Objective was built without schedules; use loss_at_temperature(batch, t)")
        return self.schedules

    def train(self, mode: bool = True) -> "DINOv2Objective":
        # The teacher always runs in eval mode: DINOv2 builds it without stochastic depth.
        super().train(mode)
        self.teacher.eval()
        return self

    # ------------------------------------------------------------------ teacher targets
    def _center(self, loss: nn.Module, logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        if self.centering == "centering":
            probs = loss.softmax_center_teacher(logits, teacher_temp)
            loss.update_center(logits)
            return probs
        return loss.sinkhorn_knopp_teacher(logits, teacher_temp, n_iterations=self.sinkhorn_iterations)

    def target_network(self) -> tuple[nn.ModuleDict, str]:
        """The network that produces the targets, and the name of its patch (iBOT) head: DINOv2's EMA
        teacher; distillation overrides it with its frozen teacher."""
        return self.teacher, self.ibot_head_name

    @torch.no_grad()
    def _teacher_targets(
        self, global_crops: torch.Tensor, mask_indices: torch.Tensor, teacher_temp: float, do_ibot: bool
    ) -> dict[str, torch.Tensor]:
        network, ibot_head_name = self.target_network()
        out = network["backbone"].forward_features(global_crops)
        cls = out["x_norm_clstoken"]
        n_cls = cls.shape[0]
        masked_patches = out["x_norm_patchtokens"].flatten(0, 1).index_select(0, mask_indices)
        if do_ibot and network[ibot_head_name] is network["dino_head"]:
            # One head call for CLS and masked patch tokens when the head is shared.
            both = network["dino_head"](torch.cat([cls, masked_patches]))
            cls_logits, patch_logits = both[:n_cls], both[n_cls:]
        else:
            cls_logits = network["dino_head"](cls)
            patch_logits = network[ibot_head_name](masked_patches) if do_ibot else None
        targets = {
            "cls": cls,
            "patches": out["x_norm_patchtokens"],
            "cls_logits": cls_logits,
            "cls_probs": self._center(self.dino_loss, cls_logits, teacher_temp),
        }
        if do_ibot:
            targets["patch_probs"] = self._center(self.ibot_loss, patch_logits, teacher_temp)
        return targets

    # ------------------------------------------------------------------ forward
    def forward(self, batch: dict[str, Any], iteration: int) -> ObjectiveOutput:
        """DINOv2 loss at ``iteration`` (the teacher temperature follows the schedule)."""
        return self.loss_at_temperature(batch, self._schedules().teacher_temp(iteration))

    def loss_at_temperature(
        self, batch: dict[str, Any], teacher_temp: float, teacher_targets: Optional[dict[str, torch.Tensor]] = None
    ) -> ObjectiveOutput:
        """DINOv2 loss on a batch from ``collate_data_and_cast`` (keys in docs/interfaces.md).

        ``teacher_targets``: what :meth:`_teacher_targets` returns for this batch, computed once by a caller that
        trains several students on one teacher's forward (multi-student distillation); default: computed here."""
        global_crops: torch.Tensor = batch["collated_global_crops"]
        local_crops: Optional[torch.Tensor] = batch.get("collated_local_crops")
        masks: torch.Tensor = batch["collated_masks"]
        mask_indices: torch.Tensor = batch["mask_indices_list"]
        masks_weight: torch.Tensor = batch["masks_weight"]
        n_global = 2
        n_images_global = global_crops.shape[0]
        if n_images_global % n_global:
            raise ValueError(f"collated_global_crops holds {n_images_global} crops, not 2 per image")
        batch_size = n_images_global // n_global
        has_local = local_crops is not None and local_crops.numel() > 0
        # Not conditional on this rank having masked patches: centering all-reduces on every rank.
        do_ibot = self.ibot_weight > 0

        teacher = teacher_targets
        if teacher is None:
            teacher = self._teacher_targets(global_crops, mask_indices, teacher_temp, do_ibot)

        if not self.mask_student_crops:  # distillation: the student sees whole crops (DINOv2 Sec. 5)
            masks = None
        if has_local:
            student_global, student_local = self.student["backbone"].forward_features_list(
                [global_crops, local_crops], [masks, None]
            )
        else:
            student_global = self.student["backbone"].forward_features(global_crops, masks=masks)
            student_local = None
        student_cls = student_global["x_norm_clstoken"]
        cls_inputs = [student_cls]
        if student_local is not None:
            cls_inputs.append(student_local["x_norm_clstoken"])
        student_cls_logits = self.student["dino_head"](torch.cat(cls_inputs))
        n_local_crops = 0 if student_local is None else student_local["x_norm_clstoken"].shape[0] // batch_size

        terms: dict[str, torch.Tensor] = {}
        if self.dino_weight > 0:
            student_list = list(student_cls_logits.chunk(n_global + n_local_crops))
            teacher_list = list(teacher["cls_probs"].chunk(n_global))
            terms["dino_loss"] = self.dino_weight * self.dino_loss(student_list, teacher_list)
        if do_ibot:
            student_patches = student_global["x_norm_patchtokens"].flatten(0, 1).index_select(0, mask_indices)
            student_patch_logits = self.student[self.ibot_head_name](student_patches)
            terms["ibot_loss"] = self.ibot_weight * self.ibot_loss.forward_masked(
                student_patch_logits, teacher["patch_probs"], masks_weight, n_images_global
            )
        if self.koleo_weight > 0:
            koleo = sum(self.koleo_loss(F.normalize(c, dim=-1)) for c in student_cls.chunk(n_global))
            terms["koleo_loss"] = self.koleo_weight * koleo
        if not terms:
            raise ValueError("dino.loss_weight, ibot.loss_weight and dino.koleo_loss_weight are all zero")
        loss = torch.stack([at_least_float32(t) for t in terms.values()]).sum()

        diagnostics = {
            "teacher_cls": teacher["cls"][:batch_size].detach(),
            # (B, 2, D): the two global crops of each image, LiDAR's surrogate class (monitor/collapse.py)
            "teacher_cls_views": teacher["cls"].detach().unflatten(0, (n_global, batch_size)).transpose(0, 1),
            "student_cls": student_cls[:batch_size].detach(),
            "teacher_head_logits": teacher["cls_logits"][:batch_size].detach(),
            "teacher_head_probs": teacher["cls_probs"][:batch_size].detach(),
            "student_head_logits": student_cls_logits[:batch_size].detach(),
        }
        patch_tokens = PatchTokens(
            student=student_global["x_norm_patchtokens"],
            images=global_crops,
            patch_size=self.student["backbone"].patch_size,
            masks=masks,
            teacher=teacher["patches"],
            teacher_images=batch.get("collated_gram_teacher_crops"),
        )
        return ObjectiveOutput(loss=loss, terms=terms, diagnostics=diagnostics, patch_tokens=patch_tokens)

    # ------------------------------------------------------------------ hooks
    def after_backward(self, iteration: int, optimizer: torch.optim.Optimizer) -> None:
        """The prototype freeze: no gradient and lr 0 for the last layers before ``freeze_last_layer_iters``."""
        if iteration < self._schedules().freeze_last_layer_iters:
            freeze_last_layers(self.student, optimizer)

    def after_optimizer_step(self, iteration: int) -> None:
        self.update_teacher(self._schedules().momentum(iteration))

    def schedule_values(self, iteration: int) -> dict[str, float]:
        schedules = self._schedules()
        return {"momentum": schedules.momentum(iteration), "teacher_temp": schedules.teacher_temp(iteration)}

    def update_teacher(self, momentum: float) -> None:
        """``theta_T <- m * theta_T + (1 - m) * theta_S`` on local shards (:func:`dinolite.train.ema.ema_update`)."""
        ema_update(self.teacher, self.student, momentum)

    # ------------------------------------------------------------------ resume
    def extra_state(self) -> dict[str, torch.Tensor]:
        """The losses' centering buffers, keyed ``dino_loss.<buffer>`` / ``ibot_loss.<buffer>``."""
        state: dict[str, torch.Tensor] = {}
        for prefix, loss in (("dino_loss", self.dino_loss), ("ibot_loss", self.ibot_loss)):
            for key, value in loss.state_dict().items():
                state[f"{prefix}.{key}"] = value.detach().clone()
        return state

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        for prefix, loss in (("dino_loss", self.dino_loss), ("ibot_loss", self.ibot_loss)):
            sub = {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}
            loss.load_state_dict(sub)


def last_layer_parameters(student: nn.Module) -> list[nn.Parameter]:
    """The prototype layers (``*.last_layer.*`` of the heads) that stay frozen for the first epochs."""
    return [p for name, p in student.named_parameters() if ".last_layer." in f".{name}"]


def zero_last_layer_gradients(student: nn.Module) -> None:
    """Zero the prototype layers' gradients while they are frozen (the first ``freeze_last_layer_epochs``).

    DINO (Caron et al. 2021) freezes the last layer during the first epoch by cancelling its gradients;
    :meth:`DINOv2Objective.after_backward` also gives it lr 0, which stops both the Adam step and the
    decoupled weight decay. Zeroing (rather than DINO's ``grad = None``) keeps AdamW's moments at exactly 0 while
    frozen, so no statistics of the frozen period leak into the first real updates, and still allocates
    their optimizer state, so a checkpoint taken during the freeze holds every parameter's state.
    """
    for param in last_layer_parameters(student):
        if param.grad is not None:
            param.grad.zero_()


def freeze_last_layers(student: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """This step leaves the prototype layers (``*.last_layer.*``) as they are: zero gradients and lr 0 for the
    optimizer groups flagged ``is_last_layer`` (DINO's and SwAV's prototype freeze)."""
    zero_last_layer_gradients(student)
    for group in optimizer.param_groups:
        if group.get("is_last_layer", False):
            group["lr"] = 0.0
