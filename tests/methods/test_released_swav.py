"""SwAV's objective against facebookresearch/swav's released training step (tests/fixtures/released/swav.safetensors).

The fixture holds four iterations that the release's own ``main_swav.train`` computed (its projection head,
L2 normalisation, prototypes, ``distributed_sinkhorn`` on a 1-rank gloo group, the swapped prediction loss,
the feature queue and the prototype freeze, then an SGD step and the prototypes' normalisation) on fixed
pooled features: the backbone is left out, so here it is a stand-in that returns its inputs as the CLS token.
dinolite's :class:`SwAVObjective`, built from ``demo_swav`` with the fixture's sizes, runs the same four
iterations with the trainer's hooks (``after_backward``: the freeze; ``after_optimizer_step``: the
normalisation) and must give the release's loss, codes, gradients, queue and final weights. The recording
script and what it changed around the release: docs/faithfulness.md, "SwAV".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from torch import nn

from dinolite.config import load_config
from dinolite.train.methods.joint_embedding import build_projector
from dinolite.train.methods.swav import SwAVObjective, build_objective

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "released" / "swav.safetensors"
PROTOTYPES = "student.prototypes.last_layer.weight"


def read_fixture() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    with safe_open(str(FIXTURE), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["settings"])


class FeaturesAsCLS(nn.Module):
    """The backbone left out of the recording: each crop's "image" is its pooled feature."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.embed_dim = dim

    def forward_features_list(self, images: list[torch.Tensor], masks: list[Any]) -> list[dict[str, torch.Tensor]]:
        return [{"x_norm_clstoken": x} for x in images]


def released_objective(settings: dict[str, Any], weights: dict[str, torch.Tensor]) -> SwAVObjective:
    overrides = [
        f"train.batch_size_per_gpu={settings['batch_size']}",
        f"crops.local_crops_number={settings['nmb_crops'][1]}",
        f"joint_embedding.projector_hidden_dim={settings['hidden_mlp']}",
        f"joint_embedding.projector_out_dim={settings['feat_dim']}",
        f"swav.num_prototypes={settings['nmb_prototypes']}",
        f"swav.queue_length={settings['queue_length']}",
        "swav.epoch_queue_starts=0",
        f"swav.freeze_prototypes_iters={settings['freeze_prototypes_niters']}",
        f"swav.temperature={settings['temperature']}",
        f"swav.epsilon={settings['epsilon']}",
        f"swav.sinkhorn_iterations={settings['sinkhorn_iterations']}",
        "student.embed_dim=32",
        "student.depth=1",
        "student.num_heads=2",
    ]
    cfg = load_config("demo_swav", overrides)
    objective = build_objective(cfg)
    objective.student["backbone"] = FeaturesAsCLS(settings["feature_dim"])
    objective.student["projector"] = build_projector(cfg, settings["feature_dim"])  # on the pooled features
    state = {k.removeprefix("student."): v for k, v in weights.items() if k.startswith("student.")}
    missing, unexpected = objective.student.load_state_dict(state, strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    objective.student["prototypes"].normalize_()  # at construction, as the release before its first forward
    return objective


def optimizer_for(objective: SwAVObjective, settings: dict[str, Any]) -> torch.optim.SGD:
    """The release's SGD (LARC left out on both sides); the prototypes in their own group, flagged as the
    trainer's optimizer flags them, for the freeze."""
    prototypes = objective.student["prototypes"].last_layer.weight
    others = [p for p in objective.student.parameters() if p is not prototypes]
    groups = [{"params": others}, {"params": [prototypes], "is_last_layer": True}]
    return torch.optim.SGD(
        groups, lr=settings["lr"], momentum=settings["momentum"], weight_decay=settings["weight_decay"]
    )


@pytest.fixture(scope="module")
def steps() -> dict[str, Any]:
    tensors, settings = read_fixture()
    weights = {k.removeprefix("weights/"): v for k, v in tensors.items() if k.startswith("weights/")}
    objective = released_objective(settings, weights)
    optimizer = optimizer_for(objective, settings)
    names = {id(p): f"student.{k}" for k, p in objective.student.named_parameters()}
    ours: dict[str, torch.Tensor] = {}
    n_global, n_local = settings["nmb_crops"]
    for it in range(settings["iterations"]):
        crops = [tensors[f"inputs/{it}/crop{v}"] for v in range(n_global + n_local)]
        batch = {
            "collated_global_crops": torch.cat(crops[:n_global]),
            "collated_local_crops": torch.cat(crops[n_global:]),
        }
        for group in optimizer.param_groups:
            group["lr"] = settings["lr"]
        out = objective(batch, it)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        objective.after_backward(it, optimizer)
        ours[f"{it}/loss"] = out.loss.detach()
        ours[f"{it}/codes0"] = out.diagnostics["teacher_head_probs"]
        for group in optimizer.param_groups:
            for p in group["params"]:
                ours[f"{it}/grad/{names[id(p)]}"] = p.grad.clone()
        optimizer.step()
        objective.after_optimizer_step(it)
        ours[f"{it}/queue"] = objective.queue.rows.clone()
    for k, v in objective.student.state_dict().items():
        ours[f"final/student.{k}"] = v.clone()
    released = {k.removeprefix("released/"): v for k, v in tensors.items() if k.startswith("released/")}
    return {"ours": ours, "released": released, "settings": settings}


def test_the_loss_of_every_iteration_equals_the_release(steps):
    for it in range(steps["settings"]["iterations"]):
        torch.testing.assert_close(
            steps["ours"][f"{it}/loss"].double(), steps["released"][f"{it}/loss"], rtol=1e-5, atol=0
        )


def test_the_codes_equal_the_releases_sinkhorn_with_and_without_the_queue(steps):
    for it in range(steps["settings"]["iterations"]):
        torch.testing.assert_close(
            steps["ours"][f"{it}/codes0"], steps["released"][f"{it}/codes"][0], rtol=1e-4, atol=1e-6
        )


def test_every_gradient_equals_the_release_and_the_prototypes_are_frozen_first(steps):
    ours, released = steps["ours"], steps["released"]
    freeze = steps["settings"]["freeze_prototypes_niters"]
    for it in range(steps["settings"]["iterations"]):
        expected = {k.split("/grad/")[1]: v for k, v in released.items() if k.startswith(f"{it}/grad/")}
        if it < freeze:  # the release drops the prototypes' gradient; dinolite zeroes it (and gives lr 0)
            assert PROTOTYPES not in expected and not ours[f"{it}/grad/{PROTOTYPES}"].any()
        else:
            assert PROTOTYPES in expected
        for key, grad in expected.items():
            if key.startswith("released_only."):  # the hidden Linear's bias, cancelled by the BatchNorm
                assert grad.abs().max() < 1e-6
                continue
            scale = grad.abs().max()
            torch.testing.assert_close(ours[f"{it}/grad/{key}"], grad, rtol=0, atol=1e-4 * scale + 1e-8, msg=key)


def test_the_queue_holds_the_releases_rows(steps):
    for it in range(steps["settings"]["iterations"]):
        torch.testing.assert_close(steps["ours"][f"{it}/queue"], steps["released"][f"{it}/queue"])


def test_the_weights_after_four_steps_equal_the_release_with_unit_prototypes(steps):
    ours, released = steps["ours"], steps["released"]
    final = {k.removeprefix("final/"): v for k, v in released.items() if k.startswith("final/")}
    for key, value in final.items():
        if key.startswith("released_only.") or key.endswith("norm0.running_mean"):
            continue  # the release's hidden bias, cancelled by the BatchNorm, only shifts its running mean
        if value.is_floating_point():
            torch.testing.assert_close(ours[f"final/{key}"], value, rtol=1e-5, atol=1e-6, msg=key)
        else:
            assert torch.equal(ours[f"final/{key}"], value), key
    torch.testing.assert_close(ours[f"final/{PROTOTYPES}"].norm(dim=1), torch.ones(steps["settings"]["nmb_prototypes"]))
