"""dinolite/train/startup_notices.py: a preset's explicit model sizes kept under a new student.arch are named."""

from __future__ import annotations

from pathlib import Path

from dinolite.config import load_config
from dinolite.models.backbone_factory import ARCHITECTURES
from dinolite.train.startup_notices import stale_arch_fields, user_set_keys


def _stale(overrides: list[str]) -> list[str]:
    return stale_arch_fields("demo", overrides, load_config("demo", overrides))


def test_an_arch_override_names_each_explicit_size_it_leaves_in_place() -> None:
    demo, small = load_config("demo").student, ARCHITECTURES["vit_small"]
    lines = _stale(["student.arch=vit_small"])
    kept = [f for f in ("embed_dim", "depth", "num_heads") if getattr(demo, f) not in (None, small[f])]
    assert kept and len(lines) == len(kept)
    for field, line in zip(kept, lines):
        assert line.startswith(
            f"student.{field}={getattr(demo, field)} from demo is kept although student.arch=vit_small"
        )
        assert f"pass student.{field}=null" in line


def test_no_notice_without_an_arch_override_or_when_the_sizes_are_set_too() -> None:
    assert _stale([]) == [] and _stale(["optim.base_lr=0.1"]) == []
    small = ARCHITECTURES["vit_small"]
    sizes = [f"student.{f}={small[f]}" for f in ("embed_dim", "depth", "num_heads")]
    assert _stale(["student.arch=vit_small", *sizes]) == []
    # a size the user set too, even to the preset's value, is what they asked for: not named
    named = _stale(["student.arch=vit_small", "student.embed_dim=96"])
    assert named and not any(line.startswith("student.embed_dim") for line in named)


def test_user_set_keys_are_the_overrides_and_a_users_own_file(tmp_path: Path) -> None:
    assert user_set_keys("demo", ["optim.base_lr=0.1", " train.seed =3"]) == {"optim.base_lr", "train.seed"}
    mine = tmp_path / "mine.yaml"
    mine.write_text("student:\n  arch: vit_small\noptim:\n  epochs: 2\n")
    assert user_set_keys(mine, ["train.seed=1"]) == {"student.arch", "optim.epochs", "train.seed"}
