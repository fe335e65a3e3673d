"""dinolite/compat.py: torch and torchvision must come from one release; the error says what to install."""

from __future__ import annotations

import pytest

from dinolite.compat import TORCHVISION_FOR_TORCH, IncompatibleVersionsError, check_torch_torchvision


@pytest.mark.parametrize("torch_version, vision_version", [("2.6.0+cu124", "0.21.0"), ("2.14.1", "0.29.1+cpu")])
def test_matching_pairs_pass_whatever_their_local_tags(torch_version: str, vision_version: str) -> None:
    check_torch_torchvision(torch_version, vision_version)


def test_a_mismatch_names_the_torchvision_to_install() -> None:
    with pytest.raises(IncompatibleVersionsError, match=r"torchvision 0\.28\.0 does not go with torch 2\.14\.1") as e:
        check_torch_torchvision("2.14.1", "0.28.0")
    assert "pip install 'torchvision==0.29.*'" in str(e.value)


def test_an_unsupported_torch_lists_the_supported_range() -> None:
    with pytest.raises(IncompatibleVersionsError, match=r"torch 2\.5\.1 is not supported \(supported: 2\.6, 2\.7"):
        check_torch_torchvision("2.5.1", "0.20.1")


def test_an_unreadable_version_is_named() -> None:
    with pytest.raises(IncompatibleVersionsError, match="cannot read a version number from 'nightly'"):
        check_torch_torchvision("nightly", "0.29.0")


def test_the_table_steps_one_minor_release_at_a_time() -> None:
    pairs = sorted(TORCHVISION_FOR_TORCH.items())
    for (t0, v0), (t1, v1) in zip(pairs, pairs[1:]):
        assert (t1[1] - t0[1], v1[1] - v0[1]) == (1, 1)
    assert issubclass(IncompatibleVersionsError, ValueError)  # entrypoints print ValueErrors as one line
