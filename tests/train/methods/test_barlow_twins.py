"""dinolite/train/methods/barlow_twins.py: Barlow Twins' loss of the two views, and its section's options."""

from __future__ import annotations

import pytest
import torch

from dinolite.config import ConfigError
from dinolite.losses import BarlowTwinsLoss
from dinolite.train.methods import barlow_twins
from tests.train.methods.test_joint_embedding import _batch, _cfg, _views


def _objective(*overrides: str) -> barlow_twins.BarlowTwinsObjective:
    torch.manual_seed(0)
    return barlow_twins.build_objective(_cfg("train.method=barlow_twins", *overrides))


@pytest.mark.parametrize("normalization", ["exact", "batchnorm"])
def test_the_loss_is_barlow_twins_with_the_sections_normalization(normalization: str) -> None:
    objective = _objective("joint_embedding.lambda_offdiag=0.02", f"barlow_twins.normalization={normalization}")
    batch = _batch()
    views = _views(objective, batch)
    expected = BarlowTwinsLoss(0.02, normalization)(views[0]["z"], views[1]["z"])
    torch.testing.assert_close(objective(batch, 0).loss, expected)


def test_the_two_normalizations_give_different_losses() -> None:
    batch = _batch()
    exact = _objective("barlow_twins.normalization=exact")(batch, 0).loss
    batchnorm = _objective("barlow_twins.normalization=batchnorm")(batch, 0).loss
    assert not torch.allclose(exact, batchnorm)


def test_the_projectors_last_bias_follows_the_section() -> None:
    def last_linear(objective: barlow_twins.BarlowTwinsObjective) -> torch.nn.Linear:
        return [m for m in objective.student["projector"].modules() if isinstance(m, torch.nn.Linear)][-1]

    assert last_linear(_objective()).bias is not None
    assert last_linear(_objective("barlow_twins.projector_last_bias=false")).bias is None


def test_an_unknown_normalization_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="barlow_twins.normalization"):
        _cfg("train.method=barlow_twins", "barlow_twins.normalization=layernorm")
