"""Method-owned config sections (dinolite/config/sections.py): registration, the config class built from
the shared fields plus every registered section, its pickling, and what a section no method registered
becomes (``unknown_sections``)."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import dinolite.train.methods  # noqa: F401  (registers the methods' config sections)
from dinolite.config import (
    SHARED_SECTIONS,
    Config,
    ConfigError,
    ConfigSection,
    SectionData,
    config_class,
    load_config,
    register_section,
    registered_sections,
    save_config,
    sections,
    to_dict,
    to_yaml,
)

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ToyConfig:
    width: int = 4  # a toy knob
    ratios: list[float] = dataclasses.field(default_factory=lambda: [0.1, 0.2])  # a list-typed knob


def _refuse_negative_width(toy: ToyConfig, cfg: Config) -> None:
    if toy.width < 0:
        raise ConfigError(f"invalid value for 'toy.width': {toy.width}; must be >= 0")


@pytest.fixture
def registry(monkeypatch):
    """This test's own copy of the section registry (what it registers is gone afterwards)."""
    monkeypatch.setattr(sections, "_SCHEMAS", dict(sections._SCHEMAS))
    monkeypatch.setattr(sections, "_USES", {method: dict(own) for method, own in sections._USES.items()})


@pytest.fixture
def no_registry(monkeypatch):
    """A process where no method registered a section (e.g. export's)."""
    monkeypatch.setattr(sections, "_SCHEMAS", {})
    monkeypatch.setattr(sections, "_USES", {})


def test_a_loaded_config_is_the_shared_config_plus_every_registered_section():
    cfg = load_config("demo")
    assert isinstance(cfg, Config) and type(cfg) is config_class() is type(load_config("demo_simclr"))
    names = [f.name for f in dataclasses.fields(cfg)]
    assert names == [*SHARED_SECTIONS, *registered_sections()]
    assert {"dino", "ibot", "teacher", "msn", "ijepa", "simmim", "joint_embedding"} <= set(registered_sections())
    assert not {"dino", "ibot", "teacher"} & set(SHARED_SECTIONS)  # DINOv2's sections are DINOv2's
    assert cfg.dino.head_n_prototypes == 32 and type(cfg.dino).__module__ == "dinolite.train.methods.dinov2_config"


def test_a_config_pickles_deep_copies_and_unpickles_in_a_fresh_process(tmp_path):
    cfg = load_config("demo_msn", ["msn.num_prototypes=7"])
    for copied in (pickle.loads(pickle.dumps(cfg)), copy.deepcopy(cfg)):
        assert copied == cfg and type(copied) is type(cfg) and copied is not cfg
    (tmp_path / "cfg.pkl").write_bytes(pickle.dumps(cfg))
    script = (
        "import pickle, sys, json; cfg = pickle.load(open(sys.argv[1], 'rb'));"
        "print(json.dumps([cfg.msn.num_prototypes, type(cfg.msn).__name__, cfg.train.method]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "cfg.pkl")], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert json.loads(out.stdout) == [7, "MSNConfig", "msn"]


def test_a_section_name_holds_one_dataclass(registry):
    @dataclass
    class OtherDino:
        loss_weight: float = 1.0

    with pytest.raises(ValueError, match="'dino' is registered with .*DinoConfig.*'toy' brings another"):
        register_section(ConfigSection("dino", OtherDino), "toy")
    with pytest.raises(ValueError, match="'optim' is a shared section"):
        ConfigSection("optim", ToyConfig)
    with pytest.raises(ValueError, match="not an identifier"):
        ConfigSection("my-section", ToyConfig)
    with pytest.raises(ValueError, match="is not a dataclass"):
        ConfigSection("toy", dict)


def test_a_registered_section_is_checked_always_and_its_rules_run_for_its_method_only(registry, tmp_path):
    register_section(ConfigSection("toy", ToyConfig, _refuse_negative_width), "toy_method")
    cfg = load_config("demo", ["toy.width=3", "toy.ratios=[0.5, 0.7]"])
    assert cfg.toy == ToyConfig(width=3, ratios=[0.5, 0.7]) and cfg.dino.head_n_prototypes == 32
    path = tmp_path / "mine.yaml"
    path.write_text("toy:\n  width: 5\n")
    assert load_config(path).toy.width == 5
    # keys and types of the section: checked whatever the method
    with pytest.raises(ConfigError, match=r"'toy\.widht'.*did you mean 'toy\.width'"):
        load_config("demo", ["toy.widht=3"])
    with pytest.raises(ConfigError, match=r"'toy\.width', expected int.*'abc'"):
        load_config("demo", ["toy.width=abc"])
    # its rule: only when train.method registered the section
    assert load_config("demo", ["toy.width=-1"]).toy.width == -1
    with pytest.raises(ConfigError, match=r"'toy\.width': -1; must be >= 0"):
        load_config("demo", ["train.method=toy_method", "toy.width=-1"])
    # and DINOv2's rules do not run for toy_method (a 2x2 patch grid is too small for iBOT's masks)
    assert load_config("demo", ["train.method=toy_method", "crops.global_crops_size=8"]).crops.global_crops_size == 8


def test_without_a_registry_method_sections_are_plain_data(no_registry, tmp_path):
    cfg = load_config("demo")  # "auto": nothing registered -> kept as data
    assert isinstance(cfg.dino, SectionData) and cfg.dino["head_n_prototypes"] == 32
    assert cfg.student.embed_dim == 96 and cfg.ema.momentum == 0.98  # shared sections are typed and checked
    with pytest.raises(AttributeError, match="'dino' was read as plain data.*import dinolite.train.methods"):
        _ = cfg.dino.head_n_prototypes
    save_config(cfg, tmp_path / "config.yaml")
    assert to_dict(load_config(tmp_path / "config.yaml")) == to_dict(cfg)
    assert "head_n_prototypes: 32" in to_yaml(cfg)
    with pytest.raises(ConfigError, match="unknown config key 'dino'.*import dinolite.train.methods"):
        load_config("demo", unknown_sections="error")


def test_with_the_registry_an_unregistered_section_is_refused_unless_kept(tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text("train:\n  seed: 3\nfoo:\n  bar: 1\n")
    with pytest.raises(ConfigError, match="unknown config key 'foo'"):
        load_config(path)
    kept = load_config(path, unknown_sections="keep")
    assert kept.foo == {"bar": 1} and kept.train.seed == 3 and kept.dino.head_n_prototypes == 65536
    # a near miss of a known section is a typo in every mode
    path.write_text("trian:\n  seed: 3\n")
    with pytest.raises(ConfigError, match="'trian'.*did you mean 'train'"):
        load_config(path, unknown_sections="keep")
    with pytest.raises(ValueError, match="unknown_sections='lenient'"):
        load_config("demo", unknown_sections="lenient")


def test_a_fresh_process_reads_configs_without_importing_the_trainer(tmp_path):
    """What export does with a run's config.yaml: nothing of dinolite.train is imported."""
    save_config(load_config("demo_msn"), tmp_path / "config.yaml")
    script = (
        "import json, sys; from dinolite.config import load_config;"
        "cfg = load_config(sys.argv[1], unknown_sections='keep');"
        "print(json.dumps([cfg.student.embed_dim, cfg.msn['temperature'], type(cfg.msn).__name__,"
        " any(m.startswith('dinolite.train') for m in sys.modules)]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "config.yaml")],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    assert json.loads(out.stdout) == [96, 0.1, "SectionData", False]
