"""Each method's step against its authors' released code (issue 31, docs/faithfulness.md).

``tests/fixtures/released/<method>.safetensors`` holds one training step that the release itself computed:
its initial weights under dinolite's keys (``weights/``), the inputs (``inputs/``: views, masks), the loss and
its terms (``released/<name>``), every gradient before clipping (``released/grad/<key>``), and in its metadata
the release, its commit, the step's file:lines and the settings it ran with. The recording scripts ran the
release outside this repository (docs/faithfulness.md, "How the golden steps were recorded").

One harness serves every method: build the method's objective from its demo preset plus the fixture's
settings (model size, head widths, loss constants) and the options that select the released behaviour, load
the weights, run ``objective(batch, 0)`` and ``loss.backward()`` (the objective's own forward and backward,
not the training loop), and compare the loss, the terms and every gradient. Gradients are compared per
tensor: ``max |ours - released| <= grad_rtol * max |released| + grad_atol`` (the release computes in another
order, so rounding differs; ``grad_atol`` covers gradients that are 0 in exact arithmetic, such as a bias
followed by BatchNorm, whose values are rounding noise); the key sets must match, except the parameters a
case names with the reason.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dinolite.config import load_config
from dinolite.train.methods import get_method
from tests.methods.released_cases import (
    CASES,
    IJEPA_CASE,
    OPTIMIZER_CASES,
    SIMMIM_TABLE,
    VICREG_CASE,
    ijepa_overrides,
    simmim_overrides,
)
from tests.methods.released_harness import (
    Fixture,
    ReleasedStep,
    after_step_mismatches,
    backbone_overrides,
    gradient_mismatches,
    read_fixture,
    released_tensors,
    run_optimizer_step,
    run_step,
)


@pytest.fixture(scope="module", params=sorted(CASES))
def stepped(request: pytest.FixtureRequest) -> tuple[ReleasedStep, Fixture, tuple]:
    case = CASES[request.param]
    fixture = read_fixture(case.fixture)
    return case, fixture, run_step(case, fixture)


def test_loss_and_terms_equal_the_release(stepped) -> None:
    case, fixture, (loss, terms, _) = stepped
    assert loss == pytest.approx(fixture.scalar(case.loss), abs=case.loss_atol)
    for ours, key in case.terms.items():
        assert terms[ours] == pytest.approx(fixture.scalar(key), abs=case.loss_atol), ours


def test_every_gradient_equals_the_release(stepped) -> None:
    case, fixture, (_, _, grads) = stepped
    released = released_tensors(case, fixture, "released/grad")
    assert sorted(k for k in released if not k.startswith("student.")) == sorted(case.release_only)
    released = {k: v for k, v in released.items() if k.startswith("student.")}
    assert sorted(set(released) - set(grads)) == [], "parameters the release trains that get no gradient here"
    assert sorted(set(grads) - set(released)) == sorted(case.dinolite_only)
    assert gradient_mismatches(case, released, grads) == []


def test_the_released_ijepa_step_needs_the_cls_free_encoder_and_the_column_first_tables() -> None:
    """Each option of the I-JEPA case is necessary: with DINOv2's CLS token (attending in every block) or with
    row-first predictor tables, the loss and the gradients leave the tolerances the case holds."""
    fixture = read_fixture("ijepa")
    released = fixture.section("released/grad/")
    with_cls = dataclasses.replace(
        IJEPA_CASE,
        overrides=lambda settings: [*ijepa_overrides(settings), "student.cls_token=true"],
        # dinolite's column-first table (equal to the release's patch rows) with its zero CLS row in front
        computed={**IJEPA_CASE.computed, "student.backbone.pos_embed": "dinolite's table, with a CLS row"},
    )
    loss, _, grads = run_step(with_cls, fixture)
    assert set(grads) - set(released) == {"student.backbone.cls_token"}
    assert abs(loss - fixture.scalar("released/loss")) > 10 * IJEPA_CASE.loss_atol
    assert any(key.startswith("student.backbone.") for key, _, _ in gradient_mismatches(IJEPA_CASE, released, grads))
    loss, _, grads = run_step(IJEPA_CASE, fixture, ("student.sincos_order=row_first",))
    assert abs(loss - fixture.scalar("released/loss")) > 1e-3
    assert gradient_mismatches(IJEPA_CASE, released, grads)


def test_the_released_vicreg_step_needs_the_expander_without_a_last_bias() -> None:
    """With dinolite's expander (a last bias) the release's parameters are all there, loss and gradients alike,
    but dinolite trains a parameter the release does not have: its gradient is rounding noise (the loss cannot
    see it) and the key sets differ."""
    fixture = read_fixture("vicreg")
    loss, _, grads = run_step(VICREG_CASE, fixture, ("vicreg.projector_last_bias=true",))
    assert loss == pytest.approx(fixture.scalar("released/loss"), abs=VICREG_CASE.loss_atol)
    released = fixture.section("released/grad/")
    extra = sorted(set(grads) - {k for k in released if k.startswith("student.")})
    assert extra == ["student.projector.layers.fc2.bias"]
    assert float(grads[extra[0]].abs().max()) < 1e-5


def test_the_released_simmim_step_needs_the_shared_relative_position_bias() -> None:
    """With dinolite's learned absolute table instead (loaded as zeros: the first forward then carries no position
    either, so the loss is the release's) the release's relative bias table, whose gradient is not zero, has no
    parameter here, and dinolite's absolute table takes a gradient the release has no parameter for."""
    case, fixture = CASES["simmim"], read_fixture("simmim")
    absolute = dataclasses.replace(
        case,
        overrides=lambda settings: [*simmim_overrides(settings), "student.pos_embed=learned"],
        renamed={},
        zero={"student.backbone.pos_embed": "the release's first forward carries no position"},
    )
    loss, _, grads = run_step(absolute, fixture)
    released = released_tensors(case, fixture, "released/grad")
    assert loss == pytest.approx(fixture.scalar(case.loss), abs=case.loss_atol)
    assert float(released[SIMMIM_TABLE].norm()) > 1e-5
    assert sorted(set(released) - set(grads)) == [SIMMIM_TABLE]
    assert sorted(set(grads) - set(released)) == ["student.backbone.pos_embed"]


def test_column_first_sincos_tables_are_the_released_ijepa_tables() -> None:
    """``student.sincos_order=column_first`` gives the released encoder's and predictor's fixed tables exactly
    (the I-JEPA fixture stores both: the release's encoder has no CLS row; ``student.cls_token=false`` gives
    the same table without one)."""
    fixture = read_fixture("ijepa")
    settings = fixture.settings
    overrides = [
        *backbone_overrides(settings),
        f"ijepa.predictor_embed_dim={settings['pred_emb_dim']}",
        f"ijepa.predictor_num_heads={settings['predictor_num_heads']}",
        f"ijepa.predictor_depth={settings['pred_depth']}",
    ]
    released_encoder = fixture.tensors["weights/student.backbone.pos_embed"][0]
    released_predictor = fixture.tensors["weights/student.predictor.predictor_pos_embed"][0]
    for order, cls_token, equal in (
        ("column_first", True, True),
        ("column_first", False, True),
        ("row_first", False, False),
    ):
        cfg = load_config("demo_ijepa", [*overrides, f"student.sincos_order={order}", f"student.cls_token={cls_token}"])
        objective = get_method("ijepa").build_objective(cfg)
        encoder = objective.student["backbone"].pos_embed.detach()[0, int(cls_token) :]
        assert torch.equal(encoder, released_encoder) is equal, order
        assert torch.equal(objective.student["predictor"].position_table(), released_predictor) is equal, order


# -- the parameters after the release's optimizer step ----------------------------------------------------------


@pytest.mark.parametrize("name", OPTIMIZER_CASES)
def test_every_parameter_after_the_optimizer_step_equals_the_release(name: str) -> None:
    """dinolite's step with the release's optimizer options gives every parameter the release's step gives
    (the same key set, less the parameters the case names as dinolite's only)."""
    case, fixture = CASES[name], read_fixture(CASES[name].fixture)
    ours = run_optimizer_step(case, fixture)
    released = {k for k in released_tensors(case, fixture, "released/after") if k.startswith("student.")}
    assert sorted(released - set(ours)) == []
    assert after_step_mismatches(case, fixture, ours) == []


@pytest.mark.parametrize(
    ("name", "option"), [(name, option) for name in OPTIMIZER_CASES for option in CASES[name].optimizer.needed]
)
def test_the_step_needs_each_released_optimizer_option(name: str, option: str) -> None:
    """With dinolite's value of one of the release's optimizer options the parameters after the step differ
    from the release's: each option in ``needed`` is one the release's step depends on."""
    case, fixture = CASES[name], read_fixture(CASES[name].fixture)
    instead = {option: case.optimizer.needed[option]}
    assert after_step_mismatches(case, fixture, run_optimizer_step(case, fixture, instead)) != []
