"""`python -m dinolite.commands.export` on a real (tiny) training checkpoint, and training from an export."""

from __future__ import annotations

import json

import pytest
import torch

import dinolite
from dinolite.checkpoint import load_consolidated_state_dict, resolve_checkpoint_dir
from dinolite.commands.export import main as export_main
from dinolite.config import load_config
from dinolite.models import build_backbone

pytestmark = pytest.mark.slow

# DINOv2's ViT-S width (so the .pth layout is recognisable by shape) at depth 1 on 32 px digits.
TINY_RUN = [
    "student.arch=vit_small",
    "student.embed_dim=384",
    "student.num_heads=6",
    "student.depth=1",
    "student.patch_size=4",
    "ibot.separate_head=true",
    "dino.head_n_prototypes=64",
    "ibot.head_n_prototypes=64",
    "train.max_iterations=2",
    "train.batch_size_per_gpu=8",
    "train.checkpoint_every=2",
    "crops.local_crops_number=2",
    "data.num_workers=0",
    "evaluation.knn_at_end=false",
    "monitor.every=0",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from dinolite.commands.train import main as train_main

    out = tmp_path_factory.mktemp("run")
    assert train_main(["--config", "demo", "--output-dir", str(out), *TINY_RUN]) == 0
    return out


def _features(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_features(images)["x_norm_patchtokens"]


def test_safetensors_export_with_heads_equals_the_checkpoint_teacher(run_dir, tmp_path, capsys):
    out = tmp_path / "teacher.safetensors"
    assert export_main(["--checkpoint", str(run_dir), "--output", str(out), "--with-heads"]) == 0
    assert "iteration 2" in capsys.readouterr().out
    record = json.loads((tmp_path / "teacher.safetensors.json").read_text())
    assert (record["iteration"], record["source"], record["train_img_size"]) == (2, "teacher", 32)

    cfg = load_config(resolve_checkpoint_dir(run_dir) / "config.yaml")
    reference = build_backbone(cfg.student, img_size=32).eval()
    reference.load_state_dict(load_consolidated_state_dict(run_dir, model="teacher", part="backbone"))
    exported = dinolite.load_backbone(out)
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_features(exported, images), _features(reference, images), rtol=0, atol=0)

    from safetensors import safe_open

    with safe_open(str(tmp_path / "teacher.heads.safetensors"), "pt") as heads:
        keys = set(heads.keys())
    assert "dino_head.last_layer.weight" in keys and "ibot_head.last_layer.weight" in keys
    assert {"extra.dino_loss.center", "extra.ibot_loss.center"} <= keys


def test_student_export_differs_from_teacher(run_dir, tmp_path):
    assert export_main(["--checkpoint", str(run_dir), "--output", str(tmp_path / "s.safetensors"), "--student"]) == 0
    assert export_main(["--checkpoint", str(run_dir), "--output", str(tmp_path / "t.safetensors")]) == 0
    student, teacher = (
        dinolite.load_backbone(tmp_path / "s.safetensors"),
        dinolite.load_backbone(tmp_path / "t.safetensors"),
    )
    assert student.spec.source == "student"
    images = torch.randn(2, 3, 32, 32)
    assert not torch.equal(_features(student, images), _features(teacher, images))


def test_network_choice_and_the_method_record(run_dir, tmp_path):
    from dinolite.checkpoint import method_record
    from dinolite.eval.backbone import BackboneError, load_any_backbone

    # train wrote the method record; eval and export read it without importing the trainer
    assert method_record(run_dir) == {"name": "dinov2", "eval_network": "teacher", "heads": ["dino_head", "ibot_head"]}
    out = tmp_path / "s.safetensors"
    assert export_main(["--checkpoint", str(run_dir), "--output", str(out), "--network", "student"]) == 0
    exported = dinolite.load_backbone(out)
    assert exported.spec.source == "student"
    student = load_consolidated_state_dict(run_dir, model="student", part="backbone")
    assert all(torch.equal(exported.state_dict()[k], v) for k, v in student.items())
    for network in ("teacher", "student"):
        direct = dinolite.load_backbone(run_dir, network=network)  # a run directory works too
        assert direct.spec.source == network
        saved = load_consolidated_state_dict(run_dir, model=network, part="backbone")
        assert all(torch.equal(direct.state_dict()[k], v) for k, v in saved.items())
    assert load_any_backbone(run_dir).spec.source == "teacher"  # the method's default
    with pytest.raises(BackboneError, match="holds the student backbone, not the teacher"):
        load_any_backbone(out, network="teacher")
    with pytest.raises(BackboneError, match="network 'online'"):
        load_any_backbone(run_dir, network="online")


def test_dinov2_format_loads_as_a_released_checkpoint_would(run_dir, tmp_path):
    out = tmp_path / "dinov2_vits4_pretrain.pth"
    assert export_main(["--checkpoint", str(run_dir), "--output", str(out), "--format", "dinov2"]) == 0
    state = torch.load(out, weights_only=True)
    assert {"cls_token", "pos_embed", "mask_token", "blocks.0.attn.qkv.weight", "norm.weight"} <= set(state)
    model = dinolite.load_backbone(out)
    assert (model.spec.arch, model.spec.depth, model.spec.patch_size) == ("vit_small", 1, 4)


def test_training_starts_from_an_export(run_dir, tmp_path):
    from dinolite.train.methods.dinov2 import build_objective

    out = tmp_path / "t.safetensors"
    assert export_main(["--checkpoint", str(run_dir), "--output", str(out)]) == 0
    exported = dinolite.load_backbone(out).state_dict()
    cfg = load_config("demo", [*TINY_RUN, f"student.pretrained_weights={out}"])
    objective = build_objective(cfg)
    for which in (objective.student, objective.teacher):
        for key, value in which["backbone"].state_dict().items():
            torch.testing.assert_close(value, exported[key], rtol=0, atol=0)


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert export_main(["--checkpoint", str(tmp_path / "nothing"), "--output", str(tmp_path / "x.safetensors")]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err


def test_pretrained_weights_of_another_architecture_fail_naming_both_values(run_dir, tmp_path):
    from dinolite.train.methods.dinov2 import build_objective

    out = tmp_path / "t.safetensors"
    assert export_main(["--checkpoint", str(run_dir), "--output", str(out)]) == 0
    cfg = load_config("demo", [*TINY_RUN, "student.depth=2", f"student.pretrained_weights={out}"])
    with pytest.raises(
        ValueError, match=r"student\.depth=2 conflicts with student\.pretrained_weights.*whose depth is 1"
    ):
        build_objective(cfg)


def test_continue_pretraining_from_an_export_with_heads_restores_heads_and_centers(run_dir, tmp_path):
    from safetensors.torch import load_file

    from dinolite.train.methods.dinov2 import build_objective

    out = tmp_path / "t.safetensors"
    assert export_main(["--checkpoint", str(run_dir), "--output", str(out), "--with-heads"]) == 0
    heads = load_file(str(tmp_path / "t.heads.safetensors"))
    assert heads["extra.dino_loss.center"].abs().sum() > 0  # a trained centre, not the zero init
    objective = build_objective(load_config("demo", [*TINY_RUN, f"student.pretrained_weights={out}"]))
    for name in ("dino_head", "ibot_head"):
        for which in (objective.student, objective.teacher):
            for key, value in which[name].state_dict().items():
                torch.testing.assert_close(value, heads[f"{name}.{key}"], rtol=0, atol=0)
    torch.testing.assert_close(objective.dino_loss.center, heads["extra.dino_loss.center"], rtol=0, atol=0)
    torch.testing.assert_close(objective.ibot_loss.center, heads["extra.ibot_loss.center"], rtol=0, atol=0)

    with pytest.raises(ValueError, match=r"pretrained_weights.*dino_head.*last_layer\.weight: file \(\d+, \d+\)"):
        build_objective(
            load_config("demo", [*TINY_RUN, "dino.head_n_prototypes=128", f"student.pretrained_weights={out}"])
        )


def test_onnx_suffix_writes_onnx_and_an_existing_export_needs_force(run_dir, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    out = tmp_path / "m.onnx"
    assert export_main(["--checkpoint", str(run_dir), "--output", str(out)]) == 0  # no --format: from the suffix
    onnx.checker.check_model(onnx.load(str(out)))
    assert (tmp_path / "m.onnx.json").is_file() and not (tmp_path / "m.safetensors").exists()
    before = out.read_bytes()
    capsys.readouterr()
    assert export_main(["--checkpoint", str(run_dir), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --output: ") and "pass --force" in err and err.count("\n") == 1
    assert out.read_bytes() == before
    # The safetensors export of the same stem keeps its own record; the ONNX one is untouched.
    assert export_main(["--checkpoint", str(run_dir), "--output", str(tmp_path / "m.safetensors"), "--student"]) == 0
    assert json.loads((tmp_path / "m.onnx.json").read_text())["source"] == "teacher"
    assert dinolite.load_backbone(tmp_path / "m.safetensors").spec.source == "student"
    assert export_main(["--checkpoint", str(run_dir), "--output", str(out), "--force"]) == 0


def test_format_that_contradicts_the_suffix_is_refused_before_any_work(tmp_path, capsys):
    argv = ["--checkpoint", str(tmp_path / "no-run"), "--output", str(tmp_path / "x.onnx"), "--format", "safetensors"]
    assert export_main(argv) == 2
    assert "--format safetensors writes .safetensors files, not '.onnx'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_hub_folders_from_a_checkpoint_load_back_and_push(run_dir, tmp_path, capsys, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    calls = []
    monkeypatch.setattr(hub.HfApi, "create_repo", lambda self, **kw: calls.append(("create_repo", kw["repo_id"])))
    monkeypatch.setattr(
        hub.HfApi,
        "upload_folder",
        lambda self, **kw: calls.append(("upload_folder", kw["folder_path"])) or "commit-url",
    )
    teacher = tmp_path / "t.safetensors"
    assert export_main(["--checkpoint", str(run_dir), "--output", str(teacher)]) == 0
    images = torch.randn(2, 3, 32, 32)
    expected = _features(dinolite.load_backbone(teacher), images)
    for fmt in ("timm-hub", "transformers"):
        folder = tmp_path / fmt
        argv = ["--checkpoint", str(run_dir), "--format", fmt, "--output", str(folder), "--push-to-hub", f"me/{fmt}"]
        assert export_main(argv) == 0
        assert f"pushed to https://huggingface.co/me/{fmt}: commit-url" in capsys.readouterr().out
        torch.testing.assert_close(_features(dinolite.load_backbone(folder), images), expected, rtol=0, atol=0)
        assert export_main(argv) == 2  # the folder exists: --force to overwrite, as for files
        assert "pass --force" in capsys.readouterr().err
    assert calls == [
        ("create_repo", "me/timm-hub"),
        ("upload_folder", str(tmp_path / "timm-hub")),
        ("create_repo", "me/transformers"),
        ("upload_folder", str(tmp_path / "transformers")),
    ]
    assert (
        export_main(
            ["--checkpoint", str(run_dir), "--output", str(tmp_path / "x.safetensors"), "--push-to-hub", "me/x"]
        )
        == 2
    )
    assert "--push-to-hub uploads a folder" in capsys.readouterr().err
    assert (
        export_main(["--checkpoint", str(run_dir), "--format", "timm-hub", "--output", str(tmp_path / "y.json")]) == 2
    )
    assert "writes a folder" in capsys.readouterr().err
