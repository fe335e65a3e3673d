"""benchmarks/methods_vs_lightly.py's ``--presets``: which dinolite preset each method trains (the digits demos
by default, the generic small-image presets with ``--presets small``), where its runs go, and that a results
file of one set is neither resumed by nor written over the other's table. No training: the option only, and
without lightly (the benchmark's own test, tests/benchmarks/test_methods_vs_lightly.py, needs it)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from benchmarks import methods_vs_lightly_presets as presets
from dinolite.config import available_presets, load_config


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    presets.add_preset_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_default_is_the_digits_demos_as_before():
    args = parse()
    assert args.presets == "demo" and args.output_dir is None
    chosen = {name: presets.preset_of(name, args.presets) for name in presets.METHODS}
    assert chosen == {
        "simclr": "demo_simclr",
        "barlow_twins": "demo_barlow_twins",
        "byol": "demo_byol",
        "simsiam": "demo_simsiam",
        "msn": "demo_msn",
        "dino": "demo",
        "vicreg": "demo_vicreg",
    }
    assert presets.output_dir(None, "demo") == Path("output/methods_vs_lightly")
    assert presets.label_of("dino", "demo") == "DINO (dinolite: DINOv2 `demo`), EMA teacher"  # the table's old row


def test_presets_small_chooses_each_methods_generic_preset():
    args = parse("--presets", "small")
    chosen = {name: presets.preset_of(name, args.presets) for name in presets.METHODS}
    assert chosen == {name: f"small_{name}" for name in presets.METHODS if name != "dino"} | {"dino": "small_dinov2"}
    shipped = set(available_presets())
    assert set(chosen.values()) <= shipped, set(chosen.values()) - shipped
    for name, preset in chosen.items():  # the objective lightly's recipe is compared with
        assert load_config(preset).train.method == ("dinov2" if name == "dino" else name)
    assert presets.label_of("dino", "small") == "DINO (dinolite: DINOv2 `small_dinov2`), EMA teacher"
    assert presets.label_of("byol", "small") == "BYOL, online"


def test_an_unknown_preset_set_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse("--presets", "digits")
    assert "invalid choice: 'digits'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown preset set 'digits'"):
        presets.preset_of("simclr", "digits")


def test_each_set_runs_in_its_own_folder_unless_one_is_given(tmp_path):
    assert presets.output_dir(None, "small") == Path("output/methods_vs_lightly_small")
    assert presets.output_dir(tmp_path, "small") == tmp_path == parse("--output-dir", str(tmp_path)).output_dir


def test_a_results_file_is_resumed_only_with_its_own_presets(tmp_path):
    path = tmp_path / "results.json"
    presets.check_resumed_presets({"presets": "small"}, "small", path)
    presets.check_resumed_presets({"datasets": {}}, "demo", path)  # written before --presets: the demos
    with pytest.raises(SystemExit, match="holds --presets demo results; this run asks for small"):
        presets.check_resumed_presets({"datasets": {}}, "small", path)


def test_the_two_sets_tables_have_their_own_markers():
    demo, small = presets.result_markers("demo"), presets.result_markers("small")
    assert demo == ("<!-- methods_vs_lightly: begin -->", "<!-- methods_vs_lightly: end -->")  # RESULTS.md's today
    assert small[0] not in demo[0] and demo[0] not in small[0] and small[1] != demo[1]


# --lightly-from: lightly's side of the generic presets' table taken from the demos' run


@pytest.mark.parametrize("name", sorted(presets.METHODS))
def test_demo_and_generic_presets_give_lightlys_side_the_same_inputs(name):
    """What makes --lightly-from valid: lightly's ViT, its seed and the evaluation's images do not depend on
    which of the two preset sets dinolite runs."""
    assert presets.lightly_inputs(presets.preset_of(name, "small")) == presets.lightly_inputs(
        presets.preset_of(name, "demo")
    )


BUDGET = {"iterations": 300, "batch_size": 64, "linear_epochs": 10}


def demo_results() -> dict:
    return {
        "budget": BUDGET,
        "datasets": {
            "fashion_mnist": {
                "methods": {
                    "simclr": {"dinolite": {"knn": 71.8}, "lightly": {"knn": 69.0}},
                    "vicreg": {"lightly": {"knn": 72.0}},
                },
                "random_init": {"knn": 57.9, "linear": 59.6},
                "raw_pixels": {"knn": 84.0, "linear": 83.3},
            }
        },
    }


def test_lightly_from_copies_lightlys_side_and_the_baselines_never_dinolites(tmp_path):
    donor = tmp_path / "demo.json"
    results = {"presets": "small", "budget": BUDGET, "datasets": {}}
    copied = presets.reuse_lightly_side(results, demo_results(), donor, ["simclr", "vicreg", "byol"], "small")
    assert copied == ["fashion_mnist/simclr", "fashion_mnist/vicreg"]
    entry = results["datasets"]["fashion_mnist"]
    assert entry["methods"]["simclr"] == {
        "lightly": {"knn": 69.0, "copied_from": str(donor)}
    }  # not the demo's dinolite
    assert entry["methods"]["vicreg"]["lightly"]["knn"] == 72.0
    assert entry["methods"]["byol"] == {}  # the donor has none: trained by this run
    assert entry["random_init"] == {"knn": 57.9, "linear": 59.6, "copied_from": str(donor)}
    assert entry["raw_pixels"]["knn"] == 84.0


def test_lightly_from_keeps_what_the_results_already_hold(tmp_path):
    results = {
        "budget": BUDGET,
        "datasets": {
            "fashion_mnist": {"methods": {"simclr": {"lightly": {"knn": 70.5}}}, "random_init": {"knn": 58.0}}
        },
    }
    copied = presets.reuse_lightly_side(results, demo_results(), tmp_path / "d.json", ["simclr"], "small")
    assert copied == []
    assert results["datasets"]["fashion_mnist"]["methods"]["simclr"]["lightly"] == {"knn": 70.5}
    assert results["datasets"]["fashion_mnist"]["random_init"] == {"knn": 58.0}


def test_lightly_from_refuses_another_budget(tmp_path):
    results = {"budget": {**BUDGET, "iterations": 3}, "datasets": {}}
    with pytest.raises(SystemExit, match=r"d\.json'? ran budget .*'iterations': 300.*this run .*'iterations': 3"):
        presets.reuse_lightly_side(results, demo_results(), tmp_path / "d.json", ["simclr"], "small")
    assert results["datasets"] == {}


def test_lightly_from_refuses_presets_that_give_lightly_other_inputs(tmp_path, monkeypatch):
    real = presets.lightly_inputs

    def inputs(preset: str) -> dict:
        return real(preset) | ({"train.seed": 1} if preset == "small_simclr" else {})

    monkeypatch.setattr(presets, "lightly_inputs", inputs)
    results = {"budget": BUDGET, "datasets": {}}
    with pytest.raises(SystemExit, match="simclr: small_simclr and demo_simclr differ in train.seed"):
        presets.reuse_lightly_side(results, demo_results(), tmp_path / "d.json", ["simclr"], "small")
    assert results["datasets"] == {}
