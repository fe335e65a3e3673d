"""Config merge, override and validation errors (dinolite.config), with the methods' sections registered."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

import dinolite.train.methods  # noqa: F401  (registers the methods' config sections)
from dinolite.config import (
    Config,
    ConfigError,
    available_presets,
    config_from_dict,
    load_config,
    save_config,
    to_dict,
)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "dinolite" / "configs"


def _schema_keys(cls: type, prefix: str = "") -> set[str]:
    keys = set()
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            keys |= _schema_keys(type(default), f"{prefix}{f.name}.")
        else:
            keys.add(f"{prefix}{f.name}")
    return keys


def _yaml_keys(node: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in node.items():
        if isinstance(v, dict):
            keys |= _yaml_keys(v, f"{prefix}{k}.")
        else:
            keys.add(f"{prefix}{k}")
    return keys


def test_default_yaml_lists_every_shared_key_with_the_schema_default():
    default = yaml.safe_load((CONFIG_DIR / "default.yaml").read_text())
    assert _yaml_keys(default) == _schema_keys(Config)  # shared sections only: methods document their own
    assert default == to_dict(Config())


def test_presets_load_with_published_values():
    assert {"demo", "vits16", "vitb16", "vitl16", "vitl14", "vitg14"} <= set(available_presets())
    vitl16 = load_config("vitl16")
    assert (vitl16.student.arch, vitl16.student.patch_size) == ("vit_large", 16)
    assert vitl16.optim.base_lr == 0.004 and vitl16.optim.epochs == 100
    assert vitl16.ema.momentum == 0.992 and vitl16.teacher.teacher_temp == 0.07
    assert vitl16.optim.weight_decay == 0.04 and vitl16.optim.weight_decay_end == 0.4
    assert vitl16.dino.koleo_loss_weight == 0.1 and vitl16.dino.head_n_prototypes == 65536
    vitg14 = load_config("vitg14")
    assert vitg14.student.arch == "vit_giant2" and vitg14.student.ffn_layer == "swiglu"
    assert vitg14.dino.head_n_prototypes == 131072 and vitg14.ibot.separate_head
    assert vitg14.train.centering == "sinkhorn_knopp"


def test_overrides_win_over_preset_and_default():
    cfg = load_config("vitl16", ["optim.base_lr=0.002", "crops.local_crops_number=6", "student.arch=vit_base"])
    assert cfg.optim.base_lr == 0.002
    assert cfg.crops.local_crops_number == 6
    assert cfg.student.arch == "vit_base"
    assert cfg.student.patch_size == 16  # untouched keys keep the preset's value


def test_unknown_key_names_full_path_and_nearest_key():
    with pytest.raises(ConfigError, match=r"'optim\.base_lrr'.*did you mean 'optim\.base_lr'"):
        load_config("demo", ["optim.base_lrr=0.1"])
    with pytest.raises(ConfigError, match=r"'trian'.*did you mean 'train'"):
        load_config("demo", ["trian.seed=3"])


def test_unknown_key_in_a_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("student:\n  arch: vit_small\n  pach_size: 14\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'student\.pach_size'.*'student\.patch_size'"):
        load_config(bad)


def test_wrong_type_names_path_expected_type_and_value():
    with pytest.raises(ConfigError, match=r"'optim\.base_lr', expected float.*'abc'"):
        load_config("demo", ["optim.base_lr=abc"])
    with pytest.raises(ConfigError, match=r"'train\.batch_size_per_gpu', expected int.*'1\.5'"):
        load_config("demo", ["train.batch_size_per_gpu=1.5"])


def test_invalid_choice_and_range():
    with pytest.raises(ConfigError, match=r"'student\.arch'.*'vit_huge'.*vit_small"):
        load_config("demo", ["student.arch=vit_huge"])
    with pytest.raises(ConfigError, match=r"'crops\.global_crops_size'.*not a multiple"):
        load_config("vitl16", ["crops.global_crops_size=225"])
    with pytest.raises(ConfigError, match=r"'train\.batch_size_per_gpu'.*must be > 0"):
        load_config("demo", ["train.batch_size_per_gpu=0"])


def test_unknown_preset_lists_available():
    with pytest.raises(ConfigError, match=r"unknown config preset 'vitx'.*demo.*vitl16"):
        load_config("vitx")


def test_malformed_override():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config("demo", ["optim.base_lr"])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config("vitg14", ["train.seed=7"])
    save_config(cfg, tmp_path / "config.yaml")
    reloaded = load_config(tmp_path / "config.yaml")
    assert to_dict(reloaded) == to_dict(cfg)
    assert to_dict(config_from_dict(to_dict(cfg))) == to_dict(cfg)
    assert not (tmp_path / "config.yaml.tmp").exists()
