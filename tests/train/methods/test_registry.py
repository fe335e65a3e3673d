"""The method registry: lookup by train.method, a "did you mean" for typos, one spec per name."""

from __future__ import annotations

import dataclasses

import pytest

from dinolite.config import ConfigError, load_config
from dinolite.train.methods import MethodSpec, get_method, list_methods, register_method
from dinolite.train.methods.dinov2_objective import DINOv2Objective


def test_dinov2_is_the_default_method():
    cfg = load_config("demo")
    assert cfg.train.method == "dinov2" and "dinov2" in list_methods()
    spec = get_method(cfg.train.method)
    assert spec.eval_network == "teacher" and spec.demo_preset == "demo"
    assert spec.head_names(cfg) == ("dino_head",)
    assert spec.head_names(load_config("demo", ["ibot.separate_head=true"])) == ("dino_head", "ibot_head")
    assert spec.record(cfg) == {"name": "dinov2", "eval_network": "teacher", "heads": ["dino_head"]}
    assert isinstance(spec.build_objective(load_config("demo", ["student.depth=1"])), DINOv2Objective)


def test_unknown_method_names_the_key_and_suggests():
    with pytest.raises(ConfigError, match=r"train\.method.*'dinov3'.*did you mean 'dinov2'"):
        get_method("dinov3")
    with pytest.raises(ConfigError, match=r"registered: .*dinov2"):
        get_method("xyz")


def test_a_name_is_registered_once_and_networks_are_checked():
    spec = get_method("dinov2")
    assert register_method(spec) is spec  # re-importing a module is harmless
    with pytest.raises(ValueError, match="already registered"):
        register_method(dataclasses.replace(spec))
    with pytest.raises(ValueError, match="eval_network"):
        dataclasses.replace(spec, name="x", eval_network="online")
    with pytest.raises(ValueError, match="eval_features='patches'"):
        dataclasses.replace(spec, name="x", eval_features="patches")
    assert spec.eval_features == "cls" and get_method("ijepa").eval_features == "avgpool"
    assert isinstance(spec, MethodSpec)
