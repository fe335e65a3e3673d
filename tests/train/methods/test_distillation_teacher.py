"""dinolite/train/methods/distillation_teacher.py: the frozen teacher from every source, with its heads.

A dinolite run folder (its EMA teacher or its student, with the heads), an export made --with-heads, a
backbone-only export or DINOv2 ``.pth`` (refused unless missing_heads=random), and the checks that name
both values (patch size, prototypes, normalisation)."""

from __future__ import annotations

import pytest
import torch

from dinolite.checkpoint import load_consolidated_state_dict
from dinolite.config import ConfigError, load_config
from dinolite.models.heads import DINOHead
from dinolite.train.loop import train
from dinolite.train.methods.distillation_teacher import build_frozen_teacher, head_from_state, teacher_fingerprint
from dinolite.train.preflight import check_startup
from tests.methods.test_every_method import random_image_stream
from tests.train.methods.distillation_helpers import STUDENT, distil_config, write_teacher


def _equal(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str = "") -> bool:
    state = module.state_dict()
    return all(torch.equal(state[k], tensors[prefix + k]) for k in state)


def test_an_export_with_heads_gives_the_teacher_its_backbone_and_heads_frozen(tmp_path):
    path = tmp_path / "t.safetensors"
    tensors = write_teacher(path, width=48, depth=3, separate=True)
    teacher = build_frozen_teacher(distil_config(path, "ibot.separate_head=true"))
    assert teacher["backbone"].embed_dim == 48 and len(teacher["backbone"].blocks) == 3
    assert _equal(teacher["backbone"], tensors)
    assert _equal(teacher["dino_head"], tensors, "dino_head.") and _equal(teacher["ibot_head"], tensors, "ibot_head.")
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_a_teacher_with_a_shared_head_reads_ibot_targets_through_its_dino_head(tmp_path):
    path = tmp_path / "t.safetensors"
    write_teacher(path, separate=False)
    teacher = build_frozen_teacher(distil_config(path))
    assert teacher["ibot_head"] is teacher["dino_head"]


@pytest.fixture(scope="module")
def dinov2_run(tmp_path_factory):
    """A 2-iteration DINOv2 run of a 48-wide ViT with patch 4 (a teacher as dinolite-train leaves it)."""
    out = tmp_path_factory.mktemp("dinov2_run")
    overrides = [*STUDENT, "student.embed_dim=48", "student.num_heads=3", "optim.epochs=1", f"train.output_dir={out}"]
    result = train(load_config("demo", overrides), batches=random_image_stream)
    return out, result.checkpoint_path


@pytest.mark.parametrize("network", ["", "teacher", "student"])
def test_a_dinolite_run_folder_gives_the_network_asked_for_with_its_heads(dinov2_run, network):
    run, checkpoint = dinov2_run
    asked = [f"distillation.teacher_network={network}"] if network else []
    teacher = build_frozen_teacher(distil_config(run, *asked))
    expected = network or "teacher"  # DINOv2's evaluated network by default
    for part in ("backbone", "dino_head"):
        saved = load_consolidated_state_dict(checkpoint, expected, part)
        assert _equal(teacher[part], saved), f"{part} is not the run's {expected} {part}"
    assert teacher["ibot_head"] is teacher["dino_head"]


def test_a_dry_run_reads_a_run_folder_teacher(dinov2_run):
    """--dry-run builds on the ``meta`` device; the teacher's checkpoint is still read and checked."""
    run, _ = dinov2_run
    check_startup(distil_config(run))
    with pytest.raises(ConfigError, match="has 16 prototypes, dino.head_n_prototypes=20"):
        check_startup(distil_config(run, "dino.head_n_prototypes=20", "ibot.head_n_prototypes=20"))


def test_a_backbone_without_heads_is_refused_unless_random_heads_are_asked_for(tmp_path):
    path = tmp_path / "backbone.safetensors"
    write_teacher(path, heads=False)
    with pytest.raises(ConfigError, match=r"holds no DINO head .*distillation.missing_heads=random"):
        build_frozen_teacher(distil_config(path))
    teacher = build_frozen_teacher(distil_config(path, "distillation.missing_heads=random"))
    assert teacher["dino_head"].out_dim == 16 and not any(p.requires_grad for p in teacher.parameters())
    again = build_frozen_teacher(distil_config(path, "distillation.missing_heads=random"))
    assert torch.equal(teacher_fingerprint(teacher), teacher_fingerprint(again))  # seeded: a resume rebuilds them


def test_a_dinov2_pth_backbone_is_read_like_the_released_files(tmp_path):
    exported = tmp_path / "t.safetensors"
    tensors = write_teacher(
        exported, width=384, depth=1, heads=False, num_heads=6
    )  # a ViT-S width: a .pth names no heads
    pth = tmp_path / "dinov2_vits4_pretrain.pth"
    torch.save({k: v for k, v in tensors.items() if not k.startswith("dino_head.")}, pth)
    with pytest.raises(ConfigError, match="holds no DINO head"):
        build_frozen_teacher(distil_config(pth))
    teacher = build_frozen_teacher(distil_config(pth, "distillation.missing_heads=random"))
    assert _equal(teacher["backbone"], tensors)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["student.patch_size=2", "crops.global_crops_size=16"], r"patch size 4 differs from student.patch_size=2"),
        (["dino.head_n_prototypes=20", "ibot.head_n_prototypes=20"], r"has 16 prototypes, dino.head_n_prototypes=20"),
        (["crops.mean=[0.5,0.5,0.5]"], r"normalised with mean=.* crops.mean=\[0.5, 0.5, 0.5\]"),
    ],
)
def test_a_teacher_that_does_not_fit_the_student_is_refused_naming_both_values(tmp_path, overrides, match):
    path = tmp_path / "t.safetensors"
    write_teacher(path)
    with pytest.raises(ConfigError, match=match):
        build_frozen_teacher(distil_config(path, *overrides))


def test_no_teacher_or_a_missing_one_is_refused_naming_the_key(tmp_path):
    cfg = distil_config("random")
    cfg.distillation.teacher_weights = ""  # a preset that leaves the teacher to the command line
    with pytest.raises(ConfigError, match="distillation.teacher_weights is empty"):
        build_frozen_teacher(cfg)
    with pytest.raises(ConfigError, match=r"distillation.teacher_weights='.*nowhere.safetensors'"):
        build_frozen_teacher(distil_config(tmp_path / "nowhere.safetensors"))


def test_a_head_is_sized_from_its_weights_also_in_dinov2s_weight_norm_layout():
    torch.manual_seed(0)
    head = DINOHead(12, 10, hidden_dim=20, bottleneck_dim=6, nlayers=3)
    rebuilt = head_from_state(head.state_dict(), "here")
    assert (rebuilt.in_dim, rebuilt.out_dim, rebuilt.bottleneck_dim, len(rebuilt.mlp)) == (12, 10, 6, 5)
    x = torch.randn(4, 12)
    assert torch.equal(rebuilt(x), head(x))
    dinov2_layout = {k: v for k, v in head.state_dict().items() if k != "last_layer.weight"}
    dinov2_layout["last_layer.weight_v"] = head.last_layer.weight.detach() * 3.0  # g = 1: only the direction counts
    dinov2_layout["last_layer.weight_g"] = torch.ones(10, 1)
    torch.testing.assert_close(head_from_state(dinov2_layout, "here")(x), head(x))
    single = DINOHead(12, 10, bottleneck_dim=6, nlayers=1)
    assert torch.equal(head_from_state(single.state_dict(), "here")(x), single(x))


def test_the_fingerprint_changes_with_any_byte():
    head = DINOHead(4, 3, hidden_dim=5, bottleneck_dim=2)
    before = teacher_fingerprint(head)
    with torch.no_grad():
        head.mlp[0].bias[0] += 1e-6
    assert not torch.equal(before, teacher_fingerprint(head))
