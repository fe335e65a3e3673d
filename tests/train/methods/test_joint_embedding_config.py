"""dinolite/train/methods/joint_embedding_config.py: the family's shared rules, and each member's own only."""

from __future__ import annotations

import pytest

import dinolite.train.methods  # noqa: F401 - registering the methods registers their sections and rules
from dinolite.config import ConfigError, load_config


@pytest.mark.parametrize("method", ["simclr", "barlow_twins", "simsiam", "byol", "directclr"])
@pytest.mark.parametrize(
    "override, key",
    [
        ("joint_embedding.projector_layers=-1", "joint_embedding.projector_layers"),
        ("joint_embedding.projector_out_dim=0", "joint_embedding.projector_out_dim"),
        ("joint_embedding.predictor_hidden_dim=0", "joint_embedding.predictor_hidden_dim"),
    ],
)
def test_every_member_checks_the_heads_shapes(method: str, override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(f"demo_{method}", [override])


@pytest.mark.parametrize(
    "override, key, refused_by, accepted_by",
    [
        ("joint_embedding.temperature=0", "joint_embedding.temperature", ["simclr", "directclr"], ["barlow_twins"]),
        ("joint_embedding.directclr_d0=0", "joint_embedding.directclr_d0", ["directclr"], ["simclr"]),
        ("joint_embedding.lambda_offdiag=-1", "joint_embedding.lambda_offdiag", ["barlow_twins"], ["simclr"]),
        ("joint_embedding.target=teacher", "joint_embedding.target", ["simsiam", "byol"], ["simclr"]),
    ],
)
def test_a_members_rule_fires_for_it_and_never_for_another(
    override: str, key: str, refused_by: list[str], accepted_by: list[str]
) -> None:
    for method in refused_by:
        with pytest.raises(ConfigError, match=key):
            load_config(f"demo_{method}", [override])
    for method in accepted_by:
        load_config(f"demo_{method}", [override])


def test_the_bounds_are_inclusive_where_zero_makes_sense() -> None:
    load_config("demo_barlow_twins", ["joint_embedding.lambda_offdiag=0"])
    load_config("demo_simclr", ["joint_embedding.projector_layers=0", "joint_embedding.predictor_layers=0"])
