"""A method owns its config: the sections each registry entry names, their keys documented where they are
defined, and their rules firing for that method only (one method's rules never fire for another)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap

import pytest
import yaml

from dinolite.config import ConfigError, get_by_path, load_config, registered_sections, sections_of
from dinolite.train.methods import get_method, list_methods


def test_every_method_registers_the_sections_its_entry_names():
    for name in list_methods():
        spec = get_method(name)
        assert spec.config_sections, f"{name} names no config section"
        assert [s.name for s in sections_of(name)] == [s.name for s in spec.config_sections]
    assert [s.name for s in sections_of("dinov2")] == ["dino", "ibot", "teacher", "gram"]
    assert [s.name for s in sections_of("msn")] == ["msn"]
    assert [s.name for s in sections_of("byol")] == ["joint_embedding"]


def _documented_fields(schema: type) -> dict[str, bool]:
    """Field -> whether a comment sits on its line or on the line(s) just above it."""
    source = textwrap.dedent(inspect.getsource(schema))
    lines = source.splitlines()
    documented = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            line = lines[node.lineno - 1]
            above = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
            documented[node.target.id] = "#" in line or above.startswith("#")
    return documented


def _dataclasses_in(schema: type) -> list[type]:
    found = [schema]
    for f in dataclasses.fields(schema):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default) and type(default) not in found:
            found.extend(_dataclasses_in(type(default)))
    return found


def test_every_key_of_every_method_section_is_documented_in_its_dataclass():
    """configs/default.yaml lists the shared keys; a method's keys are documented where they are defined."""
    for name, schema in registered_sections().items():
        for cls in _dataclasses_in(schema):
            documented = _documented_fields(cls)
            assert set(documented) == {f.name for f in dataclasses.fields(cls)}, cls
            assert all(documented.values()), f"{name}: {cls.__name__} fields without a comment: " + ", ".join(
                key for key, ok in documented.items() if not ok
            )


# Values DINOv2's rules refuse (each used to be refused whatever train.method was).
DINOV2_ONLY = [
    ("ibot.mask_sample_probability=2", "'ibot.mask_sample_probability': 2.0; must be in [0, 1]"),
    ("ibot.mask_ratio_min_max=[0.5,0.1]", "'ibot.mask_ratio_min_max': [0.5, 0.1]; expected [low, high]"),
    ("teacher.teacher_temp=0", "'teacher.teacher_temp': 0.0; must be > 0"),
    ("dino.head_nlayers=0", "'dino.head_nlayers': 0; must be >= 1"),
    ("dino.head_n_prototypes=0", "'dino.head_n_prototypes': 0; must be > 0"),
    ("train.centering=none", "'train.centering': 'none'; expected one of centering, sinkhorn_knopp"),
    ("optim.freeze_last_layer_epochs=10", "'optim.freeze_last_layer_epochs': 10; must be < optim.epochs=10"),
    ("crops.global_crops_size=8", "iBOT's block masking needs at least 8 patches per global crop"),
    ("ibot.head_n_prototypes=64", "with ibot.separate_head=false iBOT uses the DINO head"),
]


@pytest.mark.parametrize(("override", "message"), DINOV2_ONLY)
def test_a_dinov2_rule_fires_for_dinov2_and_not_for_simclr(override, message):
    with pytest.raises(ConfigError) as info:
        load_config("demo", [override])
    assert message in str(info.value)
    # SimCLR does not read DINOv2's sections: the value is accepted (keys and types checked) and unused
    key, value = override.split("=")
    assert get_by_path(load_config("demo_simclr", [override]), key) == yaml.safe_load(value)


@pytest.mark.parametrize(
    ("method_preset", "other_preset", "override", "message"),
    [
        ("demo_msn", "demo", "msn.temperature=0", "'msn.temperature': 0.0; must be > 0"),
        ("demo_msn", "demo_ijepa", "msn.mask_ratio=1.0", "'msn.mask_ratio': 1.0; must be in [0, 1)"),
        ("demo_msn", "demo", "msn.head_bn_groups=per_view", "'msn.head_bn_groups': 'per_view'; expected one of"),
        ("demo_ijepa", "demo", "ijepa.loss=l2", "'ijepa.loss': 'l2'; expected one of smooth_l1, mse, l1"),
        (
            "demo_ijepa",
            "demo",
            "ijepa.mask_sampler=code",
            "'ijepa.mask_sampler': 'code'; expected one of paper, released",
        ),
        ("demo_simmim", "demo_msn", "simmim.mask_ratio=1.5", "'simmim.mask_ratio': 1.5; must be in [0, 1)"),
        ("demo_byol", "demo_simclr", "joint_embedding.target=momentum", "'joint_embedding.target': 'momentum'"),
        ("demo_simclr", "demo_barlow_twins", "joint_embedding.temperature=0", "'joint_embedding.temperature': 0.0"),
        ("demo_barlow_twins", "demo_simsiam", "joint_embedding.lambda_offdiag=-1", "'joint_embedding.lambda_offdiag'"),
        ("demo_directclr", "demo_simclr", "joint_embedding.directclr_d0=0", "'joint_embedding.directclr_d0': 0"),
        ("demo_barlow_twins", "demo_vicreg", "barlow_twins.normalization=l2", "'barlow_twins.normalization': 'l2'"),
        ("demo_directclr", "demo_simclr", "directclr.negatives=all", "'directclr.negatives': 'all'; expected one of"),
    ],
)
def test_each_methods_rules_fire_for_that_method_only(method_preset, other_preset, override, message):
    with pytest.raises(ConfigError) as info:
        load_config(method_preset, [override])
    assert message in str(info.value)
    load_config(other_preset, [override])


def test_keys_of_another_methods_section_are_still_checked():
    """A typo is a typo, whichever method is trained."""
    with pytest.raises(
        ConfigError, match=r"'ibot\.mask_sample_probabilty'.*did you mean 'ibot\.mask_sample_probability'"
    ):
        load_config("demo_simclr", ["ibot.mask_sample_probabilty=0.5"])
    with pytest.raises(ConfigError, match=r"'msn\.temperature', expected float.*'abc'"):
        load_config("demo", ["msn.temperature=abc"])


def test_the_monitor_gets_the_methods_student_temperature():
    """The loop passes MethodSpec.monitor_student_temp, not DINOv2's teacher.student_temp, to the monitor."""
    overrides = ["teacher.student_temp=0.2", "msn.temperature=0.3"]
    assert get_method("dinov2").monitor_student_temp(load_config("demo", overrides)) == 0.2
    assert get_method("msn").monitor_student_temp(load_config("demo_msn", overrides)) == 0.3
    assert get_method("simclr").student_temp is None  # no student softmax: the value is never read


def test_a_cls_free_encoder_is_refused_for_every_method_that_reads_the_cls_token():
    """student.cls_token=false (the released I-JEPA encoder's layout) only where no objective term reads the CLS
    token; elsewhere the error names the key, the method and the methods that accept it."""
    free = [name for name in list_methods() if not get_method(name).reads_cls_token]
    assert free == ["beit", "ijepa", "simmim"]
    for name in list_methods():
        preset = get_method(name).demo_preset
        if name in free:
            assert load_config(preset, ["student.cls_token=false"]).student.cls_token is False
            continue
        message = (
            rf"'student.cls_token': false, but train.method='{name}' reads the backbone's CLS token; "
            "a CLS-free encoder is for beit, ijepa, simmim"
        )
        with pytest.raises(ConfigError, match=message):
            load_config(preset, ["student.cls_token=false"])
