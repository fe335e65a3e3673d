"""What SimCLR, Barlow Twins, SimSiam / BYOL and DirectCLR share: views, projector / predictor, EMA target.

A joint-embedding objective encodes every view of a batch with the student (backbone CLS feature ->
projector -> predictor), optionally with an EMA target network as well, and averages a per-pair loss
over the pairs of views: the two large views with each other and, with multi-crop, every small view with
each large one (Caron et al. 2020's multi-crop pairing). Subclasses only define :meth:`pair_loss`.

Each view goes through the projector on its own, so BatchNorm statistics are per view, over the global
batch (the published code calls the network once per view). The collate is :func:`collate_views`
(``collated_global_crops`` = view 0 of every image, then view 1; ``collated_local_crops`` likewise).

Monitoring: ``diagnostics`` hold, for the first view of this rank's images, the backbone CLS feature
(``backbone_cls``: the evaluated network), the projector output (``projector``: the embedding SimSiam's
paper watches, std of the L2-normalised output -> 0 on collapse) and the predictor output
(``predictor``). :data:`MONITOR_EMBEDDINGS` maps them to ``collapse/{backbone,projector,predictor}_*``.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dinolite.config import Config, ConfigError, ConfigSection
from dinolite.config.sections import SectionRule
from dinolite.data.augment import CropRecipe
from dinolite.data.views import MultiViewAugmentation, blur_kernel_for, collate_views
from dinolite.models import ProjectionMLP, backbone_kwargs
from dinolite.models.info import backbone_forward_macs, head_forward_macs
from dinolite.monitor.collapse_rules import CollapseRule, constant_output, one_direction
from dinolite.train.ema import ema_update, run_momentum_schedule
from dinolite.train.methods.joint_embedding_config import ViewConfig, family_section
from dinolite.train.methods.registry import MethodSpec
from dinolite.train.objective import ObjectiveOutput, SSLObjective
from dinolite.train.schedules import Schedule

N_VIEWS = 2
MONITOR_EMBEDDINGS = {"backbone_cls": "backbone", "projector": "projector", "predictor": "predictor"}


def watchdog_thresholds(embeddings: tuple[str, ...], warmup_iterations: int = 100) -> tuple[CollapseRule, ...]:
    """Complete collapse for every joint-embedding method (there is no teacher entropy here), at the
    default thresholds of dinolite.monitor.collapse_rules:

    * one direction on the embedding the loss sees (the projector output; the backbone feature without a
      projector, DirectCLR): a projector ending in BatchNorm (SimSiam) cannot output a constant, so a
      collapsed one splits the batch along a single direction instead; RankMe catches both (the std of the
      L2-normalised output does not);
    * with a predictor, a constant predictor output (SimSiam's collapse signature, Chen & He 2021 Fig. 2;
      there is no BatchNorm after the predictor).
    Dimensional collapse (Jing et al.) lowers RankMe without reaching 1: it is measured, not alarmed.
    Measured on the digits demo: docs/methods_joint_embedding.md.
    """
    embedding = "projector" if "projector" in embeddings else "backbone"
    rules = [one_direction(embedding, after_iteration=warmup_iterations, patience=2)]
    if "predictor" in embeddings:
        rules.append(constant_output("predictor", after_iteration=warmup_iterations, patience=2))
    return tuple(rules)


# ---------------------------------------------------------------------------------------------------- views


def view_recipe(view: ViewConfig, size: int, scale: Any, key: str) -> CropRecipe:
    try:
        return CropRecipe(
            size=size,
            scale=(float(scale[0]), float(scale[1])),
            blur_p=view.blur_p,
            solarize_p=view.solarize_p,
            horizontal_flip_p=view.horizontal_flip_p,
            color_jitter=tuple(float(v) for v in view.color_jitter),
            color_jitter_p=view.color_jitter_p,
            grayscale_p=view.grayscale_p,
            blur_kernel_size=view.blur_kernel_size or blur_kernel_for(size),
        )
    except ValueError as exc:
        raise ConfigError(f"invalid view recipe 'joint_embedding.{key}': {exc}") from exc


def build_views(cfg: Config) -> MultiViewAugmentation:
    """The two views (``joint_embedding.view1/view2``, size and scale from ``crops``) and the optional
    ``crops.local_crops_number`` small views (``joint_embedding.local_view``)."""
    je, crops = cfg.joint_embedding, cfg.crops
    views = [
        view_recipe(je.view1, crops.global_crops_size, crops.global_crops_scale, "view1"),
        view_recipe(je.view2, crops.global_crops_size, crops.global_crops_scale, "view2"),
    ]
    local = None
    if crops.local_crops_number > 0:
        local = view_recipe(je.local_view, crops.local_crops_size, crops.local_crops_scale, "local_view")
    return MultiViewAugmentation(views, local, crops.local_crops_number, mean=crops.mean, std=crops.std)


def build_collate(cfg: Config) -> Any:
    return collate_views


# ---------------------------------------------------------------------------------------------------- heads


def build_projector(cfg: Config, in_dim: int, last_bias: bool = True) -> ProjectionMLP | None:
    """The ``joint_embedding`` projector; ``last_bias=False`` drops its last Linear's bias (a method's option)."""
    je = cfg.joint_embedding
    if je.projector_layers == 0:
        return None
    return ProjectionMLP(
        in_dim,
        je.projector_hidden_dim,
        je.projector_out_dim,
        je.projector_layers,
        last_batch_norm=je.projector_last_bn,
        last_bias=last_bias,
    )


def build_predictor(cfg: Config, dim: int) -> ProjectionMLP | None:
    je = cfg.joint_embedding
    if je.predictor_layers == 0:
        return None
    return ProjectionMLP(dim, je.predictor_hidden_dim, dim, je.predictor_layers, last_batch_norm=je.predictor_last_bn)


def training_flops(cfg: Config) -> dict[str, Any]:
    """Nominal FLOPs (= 2 x multiply-adds) of one training iteration, per image and per GPU batch.

    With ``g``/``l`` the backbone MACs of a large/small view, ``h`` the projector + predictor MACs per view
    (the predictor only where there is one), ``h_T`` the target projector's, 2 large views and ``N`` small::

        student forward = 2 (g + h) + N (l + h)          (backward = 2 x forward)
        target forward  = 2 (g + h_T) + N (l + h_T)      (EMA target only, else 0)
        FLOPs per image = 2 x (3 x student forward + target forward)
    """
    size, small = cfg.crops.global_crops_size, cfg.crops.local_crops_size
    kwargs = backbone_kwargs(cfg.student, size)
    embed_dim = kwargs["embed_dim"]
    g = backbone_forward_macs(kwargs, size)
    n_small = cfg.crops.local_crops_number
    local = backbone_forward_macs(kwargs, small) if n_small else 0
    projector = build_projector(cfg, embed_dim)
    h_projector = head_forward_macs(projector, embed_dim) if projector is not None else 0
    predictor = build_predictor(cfg, projector.out_dim if projector is not None else embed_dim)
    h_predictor = head_forward_macs(predictor, predictor.in_dim) if predictor is not None else 0
    h = h_projector + h_predictor
    student_forward = N_VIEWS * (g + h) + n_small * (local + h)
    target_forward = (
        N_VIEWS * (g + h_projector) + n_small * (local + h_projector) if cfg.joint_embedding.target == "ema" else 0
    )
    per_image = 2 * (3 * student_forward + target_forward)
    return {
        "flops_global_crop": 2 * g,
        "flops_local_crop": 2 * local,
        "flops_heads_per_view": 2 * h,
        "flops_student_per_image": 2 * 3 * student_forward,
        "flops_teacher_per_image": 2 * target_forward,
        "flops_per_image": per_image,
        "flops_per_batch": per_image * cfg.train.batch_size_per_gpu,
    }


def head_names(cfg: Config) -> tuple[str, ...]:
    """The student modules besides the backbone (exported ``--with-heads``)."""
    je = cfg.joint_embedding
    return tuple(
        name for name, layers in (("projector", je.projector_layers), ("predictor", je.predictor_layers)) if layers
    )


# ---------------------------------------------------------------------------------------------------- objective


class JointEmbeddingObjective(SSLObjective):
    """Backbone -> [projector] -> [predictor] on every view; ``pair_loss`` averaged over view pairs.

    Args:
        backbone: the ViT; its ``x_norm_clstoken`` is the representation.
        projector, predictor: :class:`ProjectionMLP` or None (absent).
        target_momentum: None for no target network; else a schedule ``iteration -> m`` and the target
            (``teacher``: a copy of backbone + projector, no predictor) moves as
            ``theta_T <- m theta_T + (1 - m) theta_S`` after every optimizer step (BYOL).
        symmetric_loss: True: ``pair_loss`` over the pair of global views and every (global, local) pair.
            False (Wang et al. 2022, asymmetric): ``directed_pair_loss(source, target)`` over (view 0 ->
            view 1) and (local -> each global view): the local crops are sources only. Only methods that
            implement ``directed_pair_loss`` (SimSiam, BYOL) accept it.
    """

    def __init__(
        self,
        backbone: nn.Module,
        projector: nn.Module | None = None,
        predictor: nn.Module | None = None,
        target_momentum: Schedule | None = None,
        symmetric_loss: bool = True,
    ) -> None:
        super().__init__()
        if not symmetric_loss and type(self).directed_pair_loss is JointEmbeddingObjective.directed_pair_loss:
            raise ConfigError(
                f"joint_embedding.symmetric_loss=false: {type(self).__name__} has no asymmetric (source -> target) "
                "loss; only the siamese methods (simsiam, byol) take it"
            )
        self.symmetric_loss = symmetric_loss
        modules: dict[str, nn.Module] = {"backbone": backbone}
        if projector is not None:
            modules["projector"] = projector
        if predictor is not None:
            modules["predictor"] = predictor
        self.student = nn.ModuleDict(modules)
        self.target_momentum = target_momentum
        self.teacher = nn.ModuleDict()
        if target_momentum is not None:
            self.teacher = nn.ModuleDict({k: copy.deepcopy(v) for k, v in modules.items() if k != "predictor"})
            for param in self.teacher.parameters():
                param.requires_grad_(False)
        self.train()

    def train(self, mode: bool = True) -> JointEmbeddingObjective:
        super().train(mode)
        # The target backbone runs without stochastic depth; its projector keeps batch statistics (as
        # BYOL's target network, whose BatchNorm normalises with the batch like the online one).
        if "backbone" in self.teacher:
            self.teacher["backbone"].eval()
        return self

    # ------------------------------------------------------------------ encoding
    @staticmethod
    def _split(batch: dict[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        global_views: torch.Tensor = batch["collated_global_crops"]
        if global_views.shape[0] % N_VIEWS:
            raise ValueError(f"collated_global_crops holds {global_views.shape[0]} crops, not {N_VIEWS} per image")
        n_images = global_views.shape[0] // N_VIEWS
        local_views: torch.Tensor | None = batch.get("collated_local_crops")
        locals_ = list(local_views.split(n_images)) if local_views is not None and local_views.numel() else []
        return list(global_views.split(n_images)), locals_

    @staticmethod
    def _cls(
        backbone: nn.Module, global_views: list[torch.Tensor], local_views: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        n_images = global_views[0].shape[0]
        if local_views:
            outs = backbone.forward_features_list([torch.cat(global_views), torch.cat(local_views)], [None, None])
            cls = [o["x_norm_clstoken"] for o in outs]
            return list(cls[0].split(n_images)) + list(cls[1].split(n_images))
        return list(backbone.forward_features(torch.cat(global_views))["x_norm_clstoken"].split(n_images))

    def encode(
        self, network: nn.ModuleDict, global_views: list[torch.Tensor], local_views: list[torch.Tensor]
    ) -> list[dict]:
        """Per view: ``cls`` (backbone), ``z`` (projector output, = cls without one), ``p`` (predictor
        output, = z without one; only when ``network`` has a predictor slot)."""
        outputs = []
        for cls in self._cls(network["backbone"], global_views, local_views):
            z = network["projector"](cls) if "projector" in network else cls
            p = network["predictor"](z) if "predictor" in network else z
            outputs.append({"cls": cls, "z": z, "p": p})
        return outputs

    @abc.abstractmethod
    def pair_loss(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
        """Loss of one pair of views; ``a``/``b`` hold ``cls``, ``z``, ``p`` and (EMA target) ``target_z``."""

    def directed_pair_loss(self, source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> torch.Tensor:
        """Loss of the ``source`` view predicting the ``target`` view alone (asymmetric methods override it)."""
        raise NotImplementedError(f"{type(self).__name__} has no asymmetric loss")

    def forward(self, batch: dict[str, Any], iteration: int) -> ObjectiveOutput:
        global_views, local_views = self._split(batch)
        views = self.encode(self.student, global_views, local_views)
        if len(self.teacher):
            with torch.no_grad():
                for view, target in zip(views, self.encode(self.teacher, global_views, local_views)):
                    view["target_z"] = target["z"]
        local_ids = range(N_VIEWS, len(views))
        if self.symmetric_loss:
            pairs = [(0, 1)] + [(g, l) for l in local_ids for g in range(N_VIEWS)]
            losses = [self.pair_loss(views[i], views[j]) for i, j in pairs]
        else:  # (source, target): view 0 predicts view 1, every local crop predicts each global view
            pairs = [(0, 1)] + [(l, g) for l in local_ids for g in range(N_VIEWS)]
            losses = [self.directed_pair_loss(views[i], views[j]) for i, j in pairs]
        loss = torch.stack([term.float() for term in losses]).mean()
        first = views[0]
        diagnostics = {
            "backbone_cls": first["cls"].detach(),
            # (B, 2, D): each image's two global views, LiDAR's surrogate class (monitor/collapse.py)
            "backbone_cls_views": torch.stack([view["cls"] for view in views[:N_VIEWS]], dim=1).detach(),
        }
        if "projector" in self.student:
            diagnostics["projector"] = first["z"].detach()
        if "predictor" in self.student:
            diagnostics["predictor"] = first["p"].detach()
        return ObjectiveOutput(loss=loss, terms={self.loss_name: loss}, diagnostics=diagnostics)

    loss_name = "loss"

    # ------------------------------------------------------------------ target network
    def after_optimizer_step(self, iteration: int) -> None:
        if self.target_momentum is not None:
            ema_update(self.teacher, self.student, self.target_momentum(iteration))

    def schedule_values(self, iteration: int) -> dict[str, float]:
        return {} if self.target_momentum is None else {"momentum": self.target_momentum(iteration)}


def require_symmetric_loss(cfg: Config) -> None:
    """Refuse ``joint_embedding.symmetric_loss=false`` for a method whose loss has no source/target sides."""
    if not cfg.joint_embedding.symmetric_loss:
        raise ConfigError(
            f"joint_embedding.symmetric_loss=false: train.method={cfg.train.method} has no asymmetric "
            "(source -> target) loss; only simsiam and byol take it"
        )


def require_no_predictor(cfg: Config) -> None:
    """Refuse ``joint_embedding.predictor_layers`` > 0 for a method that has no predictor."""
    if cfg.joint_embedding.predictor_layers:
        raise ConfigError(
            f"invalid value for 'joint_embedding.predictor_layers': {cfg.joint_embedding.predictor_layers}; "
            f"train.method={cfg.train.method} has no predictor (set it to 0)"
        )


def target_momentum_schedule(cfg: Config) -> Schedule | None:
    """BYOL's ``tau = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2``: the shared ``ema`` section's schedule
    (cosine from ``ema.momentum`` to ``ema.final_momentum`` over the run by default); None when
    ``joint_embedding.target`` is ``stopgrad``."""
    if cfg.joint_embedding.target != "ema":
        return None
    return run_momentum_schedule(cfg)


def method_spec(
    name: str,
    paper: str,
    build: Callable[[Config], SSLObjective],
    embeddings: tuple[str, ...] = ("backbone_cls", "projector"),
    rules: tuple[SectionRule, ...] = (),
    sections: tuple[ConfigSection, ...] = (),
) -> MethodSpec:
    """The registry entry of a joint-embedding method: its views and collate, FLOPs, the student as the
    evaluated network (BYOL's target with ``--network teacher``), its heads, the monitored ``embeddings``
    (keys of :data:`MONITOR_EMBEDDINGS`), the ``joint_embedding`` section with the method's own ``rules``
    for it, and the method's own config ``sections``."""
    return MethodSpec(
        name=name,
        paper=paper,
        build_objective=build,
        build_transform=build_views,
        build_collate=build_collate,
        training_flops=training_flops,
        eval_network="student",
        head_names=head_names,
        demo_preset=f"demo_{name}",
        # the embeddings the method has (a switch that removes one, e.g. predictor_layers=0, just skips its metrics)
        monitor_embeddings={key: MONITOR_EMBEDDINGS[key] for key in embeddings},
        watchdog_thresholds=watchdog_thresholds(embeddings),
        config_sections=(family_section(*rules), *sections),
    )
