"""Optimiser param groups (dinolite.train.optim): membership, multipliers, fusing, FSDP2 DTensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dinolite.config import load_config
from dinolite.models import DINOHead, DinoVisionTransformer
from dinolite.train.lars import LARS
from dinolite.train.optim import (
    GroupRules,
    apply_schedules,
    build_configured_optimizer,
    build_optimizer,
    get_param_groups,
    optimizer_for,
)
from tests.gloo_ranks import run_on_ranks

DECAY, PATCH_MULT = 0.9, 0.2


def _student(separate_ibot_head: bool = False) -> nn.ModuleDict:
    backbone = DinoVisionTransformer(
        img_size=32, patch_size=16, embed_dim=16, depth=2, num_heads=2, init_values=1e-5, num_register_tokens=1
    )
    dino_head = DINOHead(16, 8, hidden_dim=16, bottleneck_dim=8)
    ibot_head = DINOHead(16, 8, hidden_dim=16, bottleneck_dim=8) if separate_ibot_head else dino_head
    return nn.ModuleDict({"backbone": backbone, "dino_head": dino_head, "ibot_head": ibot_head})


def _by_name(groups: list[dict]) -> dict[str, dict]:
    table = {}
    for group in groups:
        for name in group["names"]:
            assert name not in table, f"{name} is in two groups"
            table[name] = group
    return table


def _expected_lr_multiplier(name: str) -> float:
    # depth L = 2: embeddings layer 0 -> 0.9**3, block i -> 0.9**(2 - i), final norm and heads -> 1
    if name.startswith("backbone.patch_embed."):
        return DECAY**3 * PATCH_MULT
    if name.split(".")[1] in ("cls_token", "pos_embed", "register_tokens", "mask_token"):
        return DECAY**3
    if name.startswith("backbone.blocks."):
        return DECAY ** (2 - int(name.split(".")[2]))
    return 1.0


def test_every_parameter_once_with_dinov2_multipliers():
    student = _student()
    groups = get_param_groups(student, layerwise_decay=DECAY, patch_embed_lr_mult=PATCH_MULT)
    table = _by_name(groups)
    # ibot_head is dino_head: its parameters appear once, under dino_head
    assert set(table) == {name for name, _ in student.named_parameters()}
    assert not any(name.startswith("ibot_head.") for name in table)
    assert sum(len(g["params"]) for g in groups) == len(list(student.parameters()))
    for name, group in table.items():
        assert group["lr_multiplier"] == pytest.approx(_expected_lr_multiplier(name)), name

    no_decay = {name for name, g in table.items() if g["wd_multiplier"] == 0.0}
    assert no_decay == {
        name
        for name in table
        if name.endswith(".bias")
        or "norm" in name
        or name.endswith(".gamma")
        or name.split(".")[-1] in ("cls_token", "pos_embed", "register_tokens", "mask_token")
    }
    # spot checks written out
    assert table["backbone.blocks.0.ls1.gamma"]["wd_multiplier"] == 0.0
    assert table["backbone.blocks.1.attn.qkv.weight"]["wd_multiplier"] == 1.0
    assert table["backbone.blocks.1.attn.qkv.weight"]["lr_multiplier"] == pytest.approx(0.9)
    assert table["backbone.patch_embed.proj.weight"]["lr_multiplier"] == pytest.approx(0.729 * 0.2)
    assert table["backbone.norm.weight"]["lr_multiplier"] == 1.0
    assert table["dino_head.mlp.0.weight"]["wd_multiplier"] == 1.0

    last = {name for name, g in table.items() if g["is_last_layer"]}
    assert last == {"dino_head.last_layer.weight"}
    # groups are fused: one group per distinct (lr, wd, last-layer) triple, each param in one group
    keys = [(g["lr_multiplier"], g["wd_multiplier"], g["is_last_layer"]) for g in groups]
    assert len(keys) == len(set(keys))
    for g in groups:
        assert [id(p) for p in g["params"]] == [id(dict(student.named_parameters())[n]) for n in g["names"]]


def test_separate_ibot_head_and_frozen_parameters():
    student = _student(separate_ibot_head=True)
    student["backbone"].mask_token.requires_grad_(False)
    table = _by_name(get_param_groups(student, DECAY, PATCH_MULT))
    assert {n for n, g in table.items() if g["is_last_layer"]} == {
        "dino_head.last_layer.weight",
        "ibot_head.last_layer.weight",
    }
    assert "backbone.mask_token" not in table


def test_no_layerwise_decay_gives_two_lr_multipliers():
    groups = get_param_groups(_student(), layerwise_decay=1.0, patch_embed_lr_mult=PATCH_MULT)
    assert {g["lr_multiplier"] for g in groups} == {1.0, PATCH_MULT}


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="optim.layerwise_decay"):
        get_param_groups(_student(), layerwise_decay=0.0)
    with pytest.raises(ValueError, match="optim.patch_embed_lr_mult"):
        get_param_groups(_student(), patch_embed_lr_mult=-1.0)


def test_apply_schedules_and_frozen_last_layer_step():
    torch.manual_seed(0)
    student = _student()
    groups = get_param_groups(student, DECAY, PATCH_MULT)
    optimizer = build_optimizer(groups, beta1=0.8, beta2=0.95)
    assert all(g["betas"] == (0.8, 0.95) for g in optimizer.param_groups)
    apply_schedules(optimizer, lr=1e-2, weight_decay=0.04)
    for g in optimizer.param_groups:
        assert g["lr"] == pytest.approx(1e-2 * g["lr_multiplier"])
        assert g["weight_decay"] == pytest.approx(0.04 * g["wd_multiplier"])
    # what DINOv2's prototype freeze (its after_backward hook) does to the flagged group
    for g in optimizer.param_groups:
        if g["is_last_layer"]:
            g["lr"] = 0.0

    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    out = student["dino_head"](student["backbone"](torch.randn(2, 3, 32, 32)))
    out.square().sum().backward()
    optimizer.step()
    after = dict(student.named_parameters())
    # lr 0 on the prototypes: unchanged; the rest of the head and the blocks moved
    assert torch.equal(after["dino_head.last_layer.weight"], before["dino_head.last_layer.weight"])
    assert not torch.equal(after["dino_head.mlp.0.weight"], before["dino_head.mlp.0.weight"])
    assert not torch.equal(after["backbone.blocks.0.attn.qkv.weight"], before["backbone.blocks.0.attn.qkv.weight"])


def _fsdp_groups_on_rank(rank: int, world: int) -> dict:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    student = _student()
    reference = get_param_groups(student, DECAY, PATCH_MULT)
    for block in student["backbone"].blocks:
        fully_shard(block)
    fully_shard(student["backbone"])
    fully_shard(student["dino_head"])
    sharded = get_param_groups(student, DECAY, PATCH_MULT)
    optimizer = build_optimizer(sharded)
    apply_schedules(optimizer, lr=1e-3, weight_decay=0.04)
    student["dino_head"](student["backbone"](torch.randn(2, 3, 32, 32))).sum().backward()
    optimizer.step()
    return {
        "reference": [(g["names"], g["lr_multiplier"], g["wd_multiplier"], g["is_last_layer"]) for g in reference],
        "sharded": [(g["names"], g["lr_multiplier"], g["wd_multiplier"], g["is_last_layer"]) for g in sharded],
        "types": sorted({type(p).__name__ for g in sharded for p in g["params"]}),
    }


@pytest.mark.slow
def test_groups_are_identical_for_fsdp2_dtensors(tmp_path: Path):
    for summary in run_on_ranks(_fsdp_groups_on_rank, 2, tmp_path):
        assert summary["types"] == ["DTensor"]
        assert summary["sharded"] == summary["reference"]


# -- the released recipes' rules (optim.decay_rule, no_decay, lr_1d_mult, fixed_lr_modules, optimizer) ------------


def _decayed(rules: GroupRules) -> set[str]:
    return {
        name for name, group in _by_name(get_param_groups(_student(), rules=rules)).items() if group["wd_multiplier"]
    }


def test_decay_rules_name_what_each_release_decays():
    student = _student()
    names = {name for name, _ in student.named_parameters()}
    one_d = {name for name, p in student.named_parameters() if p.ndim == 1}
    tokens = {"backbone.cls_token", "backbone.pos_embed", "backbone.register_tokens", "backbone.mask_token"}
    assert _decayed(GroupRules(decay_rule="all")) == names  # SimSiam: every parameter
    non_1d = _decayed(GroupRules(decay_rule="non_1d"))  # Barlow Twins, DirectCLR, MSN, I-JEPA, SimMIM
    assert non_1d == names - one_d and tokens <= non_1d
    dinolite = _decayed(GroupRules())
    assert not tokens & dinolite and dinolite < non_1d
    # MSN: the prototypes (here the heads' last layers) exempt too, matched as whole dotted components
    msn = _decayed(GroupRules(decay_rule="non_1d", no_decay=("last_layer",)))
    assert msn == {n for n in non_1d if ".last_layer." not in n}
    simmim = _decayed(GroupRules(decay_rule="non_1d", no_decay=("backbone.cls_token", "backbone.pos_embed")))
    assert simmim == non_1d - {"backbone.cls_token", "backbone.pos_embed"}
    assert _decayed(GroupRules(decay_rule="non_1d", no_decay=("cls",))) == non_1d  # not a substring match


def test_default_rules_add_no_group_key():
    """The DINOv2 path: groups (and so checkpoints) keep exactly their old keys."""
    for group in get_param_groups(_student(), DECAY, PATCH_MULT, rules=GroupRules()):
        assert set(group) == {"params", "names", "lr_multiplier", "wd_multiplier", "is_last_layer"}


def test_lr_1d_mult_scales_only_one_dimensional_parameters():
    """Barlow Twins: biases and norm weights at 0.0048 / 0.2 = 0.024 of the weights' lr."""
    groups = _by_name(get_param_groups(_student(), rules=GroupRules(lr_1d_mult=0.024)))
    for name, param in _student().named_parameters():
        assert groups[name]["lr_multiplier"] == (0.024 if param.ndim == 1 else 1.0), name


def test_fixed_lr_modules_stay_at_the_peak_lr():
    """SimSiam's predictor: lr = the peak lr times its multiplier, whatever the schedule says."""
    groups = get_param_groups(_student(separate_ibot_head=True), rules=GroupRules(fixed_lr_modules=("ibot_head",)))
    optimizer = build_optimizer(groups)
    apply_schedules(optimizer, lr=0.01, weight_decay=0.1, peak_lr=0.5)
    for group, built in zip(optimizer.param_groups, groups):
        fixed = all(name.startswith("ibot_head.") for name in built["names"])
        assert group.get("fixed_lr", False) is fixed
        assert group["lr"] == (0.5 if fixed else 0.01)
    with pytest.raises(ValueError, match="no peak_lr"):
        apply_schedules(optimizer, lr=0.01, weight_decay=0.1)
    with pytest.raises(ValueError, match="'optim.fixed_lr_modules': \\['predictor'\\] name no student module"):
        get_param_groups(_student(), rules=GroupRules(fixed_lr_modules=("predictor",)))


def test_bad_rules_are_named():
    with pytest.raises(ValueError, match="'optim.decay_rule': 'non1d'"):
        GroupRules(decay_rule="non1d")
    with pytest.raises(ValueError, match="'optim.lr_1d_mult'"):
        GroupRules(lr_1d_mult=-1.0)


@pytest.mark.parametrize(
    ("overrides", "kind", "settings"),
    [
        ([], torch.optim.AdamW, {"betas": (0.9, 0.999)}),
        (["optim.optimizer=sgd", "optim.momentum=0.8", "optim.nesterov=true"], torch.optim.SGD, {"momentum": 0.8}),
        (["optim.optimizer=lars", "optim.lars_eta=0.002"], LARS, {"eta": 0.002, "momentum": 0.9}),
    ],
)
def test_the_optim_section_picks_the_optimizer(overrides, kind, settings):
    cfg = load_config("demo", overrides)
    optimizer = optimizer_for(_student(), cfg.optim)
    assert type(optimizer) is kind
    for group in optimizer.param_groups:
        assert group["lr"] == 0.0 and group["weight_decay"] == 0.0 and "names" not in group
        assert {k: group[k] for k in settings} == settings
    adaptation = {bool(group.get("lars_adaptation", True)) for group in optimizer.param_groups}
    assert adaptation == ({True, False} if kind is LARS else {True})  # 1-D parameters skip the trust ratio


def test_lars_groups_follow_lars_exclude_1d():
    cfg = load_config("demo", ["optim.optimizer=lars", "optim.lars_exclude_1d=false"])
    for group in optimizer_for(_student(), cfg.optim).param_groups:
        assert group["lars_adaptation"] is True
    cfg.optim.optimizer = "rmsprop"
    with pytest.raises(ValueError, match="'optim.optimizer': 'rmsprop'"):
        build_configured_optimizer(get_param_groups(_student()), cfg.optim)


def _three_adamw_steps(kernel: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    student = _student()
    cfg = load_config("demo", [f"optim.adamw_kernel={kernel}"])
    optimizer = optimizer_for(student, cfg.optim)
    for group in optimizer.param_groups:
        group.update(lr=1e-2 * group["lr_multiplier"], weight_decay=0.04 * group["wd_multiplier"])
    for step in range(3):
        torch.manual_seed(step)
        for p in student.parameters():
            p.grad = torch.randn_like(p)
        optimizer.step()
    return {name: p.detach().clone() for name, p in student.named_parameters()}


@pytest.mark.parametrize("kernel", ["foreach", "fused"])
def test_adamw_kernels_make_the_same_update_as_the_per_tensor_loop(kernel):
    """optim.adamw_kernel changes how the update runs, not what it computes (fp32 rounding: rtol 1e-5)."""
    reference, batched = _three_adamw_steps("for_loop"), _three_adamw_steps(kernel)
    initial = {name: p.detach() for name, p in (torch.manual_seed(0), _student())[1].named_parameters()}
    assert any(not torch.equal(reference[n], initial[n]) for n in reference)  # the steps moved the weights
    for name in reference:
        torch.testing.assert_close(batched[name], reference[name], rtol=1e-5, atol=1e-7, msg=name)


def test_adamw_kernel_reaches_torch_and_a_bad_one_is_named():
    optimizer = optimizer_for(_student(), load_config("demo", ["optim.adamw_kernel=fused"]).optim)
    assert all(group["fused"] for group in optimizer.param_groups)
    assert not optimizer_for(_student(), load_config("demo").optim).param_groups[0]["foreach"]  # auto: CPU loop
    with pytest.raises(ValueError, match="optim.adamw_kernel"):
        build_optimizer(get_param_groups(_student(), DECAY, PATCH_MULT), kernel="fast")
    with pytest.raises(Exception, match="adamw_kernel"):
        load_config("demo", ["optim.adamw_kernel=fast"])
