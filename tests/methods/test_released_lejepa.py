"""LeJEPA against its released code (rbalestr-lab/lejepa): what the release computes on fixed inputs,
recorded by /work/wt/notes/released_golden/lejepa.py into tests/fixtures/released/lejepa.safetensors.

* the library's SIGReg (``SlicingUnivariateTest(EppsPulley())``, the README's) at a given step: the
  directions it draws from its step counter are :func:`slice_directions` of that seed, and the statistic,
  every slice's statistic and the input gradient are dinolite's :class:`SIGRegLoss`;
* MINIMAL.md's SIGReg module and LeJEPA loss (all views global): its invariance, SIGReg and total loss and
  the input gradient are dinolite's :class:`LeJEPALoss` with the directions it drew.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from dinolite.losses.lejepa_loss import LeJEPALoss
from dinolite.losses.sigreg_loss import SIGRegLoss, slice_directions

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "released" / "lejepa.safetensors"


@pytest.fixture(scope="module")
def released() -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    with safe_open(str(FIXTURE), "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = handle.metadata()
    assert metadata["commit"] == "eddffdd857a19726342ef6526e01021fb3c32cae"
    settings = {key: json.loads(metadata[key]) for key in ("library_settings", "minimal_settings")}
    return tensors, settings


def test_the_library_sigreg_at_a_step_is_ours_with_that_steps_slices(released):
    tensors, settings = released
    lib = settings["library_settings"]
    x = tensors["library/input"].clone().requires_grad_(True)
    directions = slice_directions(x.shape[1], lib["num_slices"], seed=lib["global_step"])
    loss = SIGRegLoss(t_max=3.0, n_points=17)
    torch.testing.assert_close(loss.statistics(x.detach(), directions), tensors["library/per_slice"])
    value = loss(x, directions)
    torch.testing.assert_close(value.detach(), tensors["library/sigreg"])
    value.backward()
    torch.testing.assert_close(x.grad, tensors["library/grad_input"])


def test_the_minimal_lejepa_loss_is_ours_with_every_view_global(released):
    tensors, settings = released
    lamb = settings["minimal_settings"]["lamb"]
    proj = tensors["minimal/input"].clone().requires_grad_(True)
    terms = LeJEPALoss(sigreg_weight=lamb).terms(proj, proj.shape[0], tensors["minimal/directions"])
    torch.testing.assert_close(terms["prediction"].detach() / (1 - lamb), tensors["minimal/inv_loss"])
    torch.testing.assert_close(terms["sigreg"].detach() / lamb, tensors["minimal/sigreg_loss"])
    total = terms["prediction"] + terms["sigreg"]
    torch.testing.assert_close(total.detach(), tensors["minimal/lejepa_loss"])
    total.backward()
    torch.testing.assert_close(proj.grad, tensors["minimal/grad_input"])


def test_other_directions_do_not_reproduce_the_release(released):
    """The comparison can fail: a step's directions are what make the statistic the release's."""
    tensors, settings = released
    lib = settings["library_settings"]
    x = tensors["library/input"]
    other = slice_directions(x.shape[1], lib["num_slices"], seed=lib["global_step"] + 1)
    assert not torch.allclose(SIGRegLoss()(x, other), tensors["library/sigreg"], rtol=1e-3)
