"""Released-recipe presets: every value ``vitb16_<method>`` takes from its release equals the release's.

The expected values are read from the released code at its pinned commit (docs/faithfulness.md names the
commit and the file:line of each); the schedules are checked as functions of the iteration, at the
release's own formula.
"""

from __future__ import annotations

import pytest

from dinolite.config import load_config
from dinolite.train.ema import run_momentum_schedule
from dinolite.train.methods.msn import sharpen_schedule

# facebookresearch/msn 4388dc1: configs/pretrain/msn_vits16.yaml ([cfg]:line) and src/ (file:line)
MSN_RELEASED = {
    "msn.num_prototypes": 1024,  # [cfg]:6 num_proto
    "msn.hidden_dim": 2048,  # [cfg]:31
    "msn.output_dim": 256,  # [cfg]:34
    "msn.use_bn": True,  # [cfg]:36
    "msn.temperature": 0.1,  # [cfg]:8
    "msn.sharpen_temperature": 0.25,  # [cfg]:7 start_sharpen
    "msn.final_sharpen_temperature": 0.25,  # [cfg]:3 final_sharpen
    "msn.sharpen_horizon": 1.25,  # msn_train.py:258
    "msn.me_max": True,  # [cfg]:4
    "msn.me_max_weight": 1.0,  # [cfg]:5
    "msn.use_sinkhorn": True,  # [cfg]:11
    "msn.label_smoothing": 0.0,  # [cfg]:17
    "msn.entropy_weight": 0.0,  # [cfg]:2
    "msn.anchor_views": 1,  # [cfg]:21 rand_views
    "msn.focal_patch_drop": False,  # deit.py:228 resets patch_drop after the first view size
    "msn.head_bn_groups": "per_view_size",  # deit.py:221-229, the head at :263
    "msn.head_bn": "global",  # msn_train.py:176-178, SyncBatchNorm on student and target
    "msn.patch_drop_per": "batch",  # deit.py:253, one randperm per forward
    "msn.patch_drop_rounding": "floor",  # deit.py:252
    "msn.weight_init": "released",  # msn_train.py:504-511, deit.py:196-211
    "student.interpolate_offset": 0.0,  # deit.py:291-305
    "ema.momentum": 0.996,  # msn_train.py:253
    "ema.final_momentum": 1.0,  # msn_train.py:253
    "ema.schedule": "linear",  # msn_train.py:254-255
    "ema.schedule_horizon": 1.25,  # msn_train.py:254
    "crops.local_crops_number": 10,  # [cfg]:22 focal_views
    "crops.local_crops_size": 96,  # [cfg]:20
    "crops.global_crops_size": 224,  # [cfg]:19
    "crops.blur_p_global1": 0.5,  # data_manager.py:89,99
    "optim.clip_grad": 3.0,  # [cfg]:40
}


def _get(cfg, dotted: str):
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


@pytest.mark.parametrize("key, released", sorted(MSN_RELEASED.items()))
def test_vitb16_msn_takes_the_released_value(key: str, released) -> None:
    assert _get(load_config("vitb16_msn"), key) == released


def test_vitb16_msn_schedules_follow_the_released_formulas() -> None:
    cfg = load_config("vitb16_msn")
    run = cfg.optim.epochs * cfg.train.iterations_per_epoch
    momentum, sharpen = run_momentum_schedule(cfg), sharpen_schedule(cfg)
    for iteration in (0, 1, run // 2, run - 1):
        # msn_train.py:253-255: 0.996 + i * (1 - 0.996) / (ipe * epochs * 1.25)
        assert momentum(iteration) == pytest.approx(0.996 + iteration * 0.004 / (run * 1.25), abs=1e-15)
        assert sharpen(iteration) == 0.25  # msn_train.py:257-259 with start = final
    assert momentum(run) == pytest.approx(0.9992, abs=1e-15)


# microsoft/SimMIM d3e29bc: configs/vit_base__800ep/simmim_pretrain__vit_base__img224__800ep.yaml ([cfg]:line),
# config.py and models/ (file:line)
SIMMIM_RELEASED = {
    "student.pos_embed": "shared_rel_pos_bias",  # [cfg]:9-11 USE_APE False, USE_SHARED_RPB True
    "student.mask_token_init": "trunc_normal",  # models/simmim.py:63-67 (std 0.02, cut at +-1 std)
    "student.layerscale": 0.1,  # config.py:84 INIT_VALUES
    "student.drop_path_rate": 0.1,  # [cfg]:4
    "simmim.mask_patch_size": 32,  # [cfg]:15
    "simmim.mask_ratio": 0.6,  # [cfg]:16
    "optim.clip_grad": 5.0,  # config.py:102
    "optim.clip_grad_scope": "joint",  # main_simmim.py:166-167
    "optim.weight_decay": 0.05,  # [cfg]:22
}


@pytest.mark.parametrize("key, released", sorted(SIMMIM_RELEASED.items()))
def test_vitb16_simmim_takes_the_released_value(key: str, released) -> None:
    assert _get(load_config("vitb16_simmim"), key) == released
