"""Continued pretraining from released weights at another resolution (docs/interop.md): every released
DINOv2 backbone is at 518 px, pretraining runs at 224. The weights' position embeddings are resampled on
load as the source model resamples them, the architecture is read from the weights where the user did
not set it (a conflict names both values), and at iteration 0 the student's features at 224 px equal the
source model's at 224 px."""

from __future__ import annotations

import re
import shlex
import warnings
from pathlib import Path

import pytest
import torch

from dinolite.commands import train as train_command
from dinolite.config import ConfigError, load_config
from dinolite.models import DinoVisionTransformer
from dinolite.train.methods import get_method
from dinolite.train.pretrained import resolve_pretrained_architecture
from tests.offline_hub import cache_repository, read_cache_offline

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

SIZE = 518  # the released checkpoints' resolution
CONTINUE = [
    "student.patch_size=14",
    "crops.global_crops_size=224",
    "crops.local_crops_size=98",
    "crops.local_crops_number=2",
    "train.batch_size_per_gpu=2",
    "evaluation.knn_at_end=false",
    "evaluation.online_every=0",
]


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    """LayerScale at 1e-5 and tiny position embeddings would hide a wrong resampling: make them matter."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("gamma", "lambda1")) or "layer_scale" in name:
                param.uniform_(0.3, 0.7)
            elif name.split(".")[-1] in ("pos_embed", "cls_token", "reg_token", "position_embeddings"):
                param.normal_(0, 0.5)
    return model.eval()


def _timm_source(tmp_path: Path, registers: bool):
    name = "vit_small_patch14_reg4_dinov2" if registers else "vit_small_patch14_dinov2"
    torch.manual_seed(1)
    model = timm.create_model(name, pretrained=False, img_size=SIZE, depth=2, num_classes=0, dynamic_img_size=True)
    _randomise(model)
    timm.models.save_for_hf(model, str(tmp_path / "timm"), safe_serialization=True)
    return tmp_path / "timm", lambda x: model.forward_features(x)


def _transformers_source(tmp_path: Path, registers: bool):
    common = dict(hidden_size=384, num_hidden_layers=2, num_attention_heads=6, image_size=SIZE, patch_size=14)
    torch.manual_seed(2)
    if registers:
        config = transformers.Dinov2WithRegistersConfig(num_register_tokens=4, **common)
        model = transformers.Dinov2WithRegistersModel(config)
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**common))
    _randomise(model)
    model.save_pretrained(str(tmp_path / "transformers"))
    return tmp_path / "transformers", lambda x: model(pixel_values=x).last_hidden_state


def _dinov2_pth_source(tmp_path: Path, ffn_layer: str):
    # DINOv2's own model (dinolite's is key for key and value for value DINOv2's: tests/models), as the
    # released dinov2_vits14_pretrain.pth is saved: a plain state dict at 518 px
    torch.manual_seed(3)
    model = DinoVisionTransformer(
        img_size=SIZE, patch_size=14, embed_dim=384, depth=2, num_heads=6, init_values=1e-5, ffn_layer=ffn_layer
    )
    _randomise(model)
    torch.save(model.state_dict(), tmp_path / "dinov2_vits14_pretrain.pth")
    return tmp_path / "dinov2_vits14_pretrain.pth", lambda x: model.norm(model.forward_features(x)["x_prenorm"])


SOURCES = {
    "timm": lambda tmp: _timm_source(tmp, registers=False),
    "timm_reg4": lambda tmp: _timm_source(tmp, registers=True),
    "transformers": lambda tmp: _transformers_source(tmp, registers=False),
    "transformers_reg4": lambda tmp: _transformers_source(tmp, registers=True),
    "dinov2_pth_mlp": lambda tmp: _dinov2_pth_source(tmp, "mlp"),
    "dinov2_pth_swiglu": lambda tmp: _dinov2_pth_source(tmp, "swiglufused"),
}


def _quiet_config(preset: str, overrides: list[str]):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_config(preset, overrides)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_released_weights_at_518_continue_at_224(tmp_path, name, capsys):
    path, source_forward = SOURCES[name](tmp_path)
    overrides = [*CONTINUE, f"student.pretrained_weights={path}"]
    cfg, read = resolve_pretrained_architecture(_quiet_config("demo", overrides), {o.split("=")[0] for o in overrides})
    assert cfg.student.embed_dim is None and cfg.student.arch == "vit_small" and cfg.student.depth == 2
    assert cfg.student.num_register_tokens == (4 if name.endswith("reg4") else 0)
    assert cfg.student.ffn_layer == ("swiglu" if name.endswith("swiglu") else "mlp")
    assert any("student.arch=vit_small from student.pretrained_weights" in line for line in read)

    objective = get_method("dinov2").build_objective(cfg)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = source_forward(images)
        for network in (objective.student, objective.teacher):  # the teacher starts equal to the student
            backbone = network["backbone"].eval()
            ours = backbone.norm(backbone.forward_features(images)["x_prenorm"])
            diff = (ours - expected).abs().max().item()
            with capsys.disabled():
                print(f"\n{name}: max abs diff of the features at 224 px, iteration 0: {diff:.3g}")
            torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)

    output_dir = tmp_path / "run"
    args = ["--output-dir", str(output_dir), *overrides, "train.max_iterations=2", "train.checkpoint_every=2"]
    assert train_command.main(args) == 0
    assert "note: student.arch=vit_small from student.pretrained_weights" in capsys.readouterr().err
    saved = _quiet_config(str(output_dir / "config.yaml"), [])
    assert (saved.student.arch, saved.student.depth, saved.student.num_register_tokens) == (
        "vit_small",
        2,
        cfg.student.num_register_tokens,
    )
    assert (output_dir / "checkpoints").is_dir()


def test_a_field_the_user_set_that_the_weights_contradict_names_both_values(tmp_path):
    path, _ = _dinov2_pth_source(tmp_path, "mlp")
    overrides = [*CONTINUE, f"student.pretrained_weights={path}", "student.ffn_layer=swiglufused"]
    with pytest.raises(ConfigError, match=r"student.ffn_layer=swiglufused conflicts .* whose ffn_layer is mlp"):
        resolve_pretrained_architecture(_quiet_config("demo", overrides), {o.split("=")[0] for o in overrides})
    overrides = [f"student.pretrained_weights={path}", "student.arch=vit_base", "data.source=[digits]"]
    with pytest.raises(ConfigError, match=r"student.arch=vit_base \(embed_dim 768\) conflicts .* is 384"):
        resolve_pretrained_architecture(_quiet_config("vitl14", overrides), {o.split("=")[0] for o in overrides})
    overrides = [*CONTINUE, f"student.pretrained_weights={path}", "student.num_register_tokens=4"]
    with pytest.raises(ConfigError, match=r"student.num_register_tokens=4 conflicts .* is 0"):
        resolve_pretrained_architecture(_quiet_config("demo", overrides), {o.split("=")[0] for o in overrides})


def test_a_preset_field_is_read_from_the_weights(tmp_path):
    # vitl14 says SwiGLU; the released ViT-L/14 has an MLP (here a 1-block ViT-L-wide stand-in)
    torch.manual_seed(4)
    model = DinoVisionTransformer(img_size=SIZE, patch_size=14, embed_dim=1024, depth=1, num_heads=16, init_values=1e-5)
    torch.save(model.state_dict(), tmp_path / "dinov2_vitl14_pretrain.pth")
    overrides = [f"student.pretrained_weights={tmp_path / 'dinov2_vitl14_pretrain.pth'}", "data.source=[digits]"]
    cfg, read = resolve_pretrained_architecture(_quiet_config("vitl14", overrides), {"student.pretrained_weights"})
    assert (cfg.student.ffn_layer, cfg.student.depth, cfg.student.arch) == ("mlp", 1, "vit_large")
    assert "student.ffn_layer=mlp from student.pretrained_weights (the config said swiglu)" in read


def test_building_an_unresolved_config_names_the_field_and_both_values(tmp_path):
    path, _ = _dinov2_pth_source(tmp_path, "mlp")
    cfg = _quiet_config("demo", [*CONTINUE, f"student.pretrained_weights={path}"])
    with pytest.raises(ConfigError, match=r"student.embed_dim=96 conflicts .* whose embed_dim is 384"):
        get_method("dinov2").build_objective(cfg)


# ------------------------------------------------------------------ the documented recipes, as written
DOCS = Path(__file__).resolve().parents[2] / "docs"


def _documented_command(page: str, starts: str) -> list[str]:
    """The one command of ``page`` that starts with ``starts`` and names pretrained weights: a code-block
    line (continuations joined) or inline code (wrapped lines joined)."""
    text = re.sub(r"\\\n\s*", " ", (DOCS / page).read_text())
    candidates = re.findall(r"^((?:dinolite-train|python launch/local.py) .+)$", text, re.M)
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    candidates += [" ".join(code.split()) for code in re.findall(r"`([^`]+)`", prose)]
    (line,) = {c for c in candidates if c.startswith(starts) and "pretrained_weights" in c}
    words = shlex.split(line)
    return words[2:] if words[0] == "python" else words[1:]


def test_the_interop_recipe_runs_as_written(tmp_path, monkeypatch, capsys):
    pytest.importorskip("huggingface_hub")
    args = _documented_command("interop.md", "dinolite-train --config vits14_continue")
    repo_id = next(a for a in args if "hf-hub:" in a).split("hf-hub:")[1].split("@")[0]
    folder, _ = _timm_source(tmp_path, registers=True)  # a 2-block stand-in for the 12-block release
    cache_repository(tmp_path / "cache", repo_id, folder)
    read_cache_offline(tmp_path / "cache", monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert train_command.main([*args, "--dry-run", "--output-dir", str(tmp_path / "run")]) == 0
    captured = capsys.readouterr()
    assert "student.num_register_tokens=4 from student.pretrained_weights" in captured.err
    assert "arch: vit_small" in captured.out and "ffn_layer: mlp" in captured.out


def test_the_export_recipe_runs_as_written(tmp_path, capsys):
    args = _documented_command("export.md", "python launch/local.py --config vitl14")
    # a 1-block ViT-L-wide stand-in for the 24-block release, where the recipe names the release
    torch.manual_seed(5)
    model = DinoVisionTransformer(img_size=SIZE, patch_size=14, embed_dim=1024, depth=1, num_heads=16, init_values=1e-5)
    torch.save(model.state_dict(), tmp_path / "dinov2_vitl14_pretrain.pth")
    args = [a.replace("/path/dinov2_vitl14_pretrain.pth", str(tmp_path / "dinov2_vitl14_pretrain.pth")) for a in args]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert train_command.main([*args, "--dry-run", "--output-dir", str(tmp_path / "run")]) == 0
    assert "student.ffn_layer=mlp from student.pretrained_weights (the config said swiglu)" in capsys.readouterr().err


@pytest.mark.parametrize(("preset", "width", "heads"), [("vits14_continue", 384, 6), ("vitb14_continue", 768, 12)])
def test_each_continue_preset_starts_from_its_release(tmp_path, preset, width, heads, capsys):
    # a 1-block stand-in of the release's width, saved at 518 px as DINOv2's .pth files are
    torch.manual_seed(6)
    model = DinoVisionTransformer(
        img_size=SIZE, patch_size=14, embed_dim=width, depth=1, num_heads=heads, init_values=1e-5
    )
    torch.save(model.state_dict(), tmp_path / "release.pth")
    args = ["--config", preset, f"student.pretrained_weights={tmp_path / 'release.pth'}", "data.source=[DATA/train]"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert train_command.main([*args, "--dry-run", "--output-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "depth: 1" in out and "ffn_layer: mlp" in out and "global_crops_size: 224" in out
    cfg = _quiet_config(preset, [])
    assert (cfg.ema.momentum, cfg.ema.final_momentum, cfg.optim.base_lr, cfg.optim.epochs) == (0.999, 0.999, 5e-5, 30)


@pytest.mark.parametrize("preset", ["vitl14_continue", "vitg14_continue"])
def test_the_large_continue_presets_pass_the_start_up_checks(preset, capsys):
    assert train_command.main(["--config", preset, "data.source=[DATA/train]", "--dry-run"]) == 0


@pytest.mark.parametrize("preset", ["vits14_continue", "vitb14_continue", "vitl14_continue", "vitg14_continue"])
def test_the_continue_presets_hold_dinov3s_rate_after_the_ramp(preset):
    """DINOv3's high-resolution adaptation schedule: the rate rises from 0 over 10 of 30 epochs to 5e-5 at a
    global batch of 1024, then stays; the weight decay stays at 0.04."""
    from dinolite.train.schedules import build_schedules

    cfg = load_config(preset)
    schedules = build_schedules(cfg.optim, cfg.train.iterations_per_epoch, 1024)
    lr = [schedules.lr(it) for it in (0, 5_000, 10_000, 20_000, 29_999)]
    assert lr == pytest.approx([0.0, 2.5e-5, 5e-5, 5e-5, 5e-5])
    assert {schedules.weight_decay(it) for it in (0, 15_000, 29_999)} == {0.04}


def test_cls_free_weights_set_student_cls_token_and_are_refused_where_the_method_reads_it(tmp_path):
    """A CLS-free backbone (the released I-JEPA encoder's layout) continues an I-JEPA run as CLS-free; a method
    that reads the CLS token refuses it, naming the key and the weights."""
    torch.manual_seed(5)
    model = DinoVisionTransformer(img_size=32, patch_size=4, embed_dim=384, depth=1, num_heads=6, cls_token=False)
    torch.save(model.state_dict(), tmp_path / "ijepa_encoder.pth")
    overrides = [f"student.pretrained_weights={tmp_path / 'ijepa_encoder.pth'}", "student.arch=vit_small"]
    cfg, read = resolve_pretrained_architecture(_quiet_config("demo_ijepa", overrides), {"student.arch"})
    assert cfg.student.cls_token is False
    assert "student.cls_token=False from student.pretrained_weights (the config said True)" in read
    with pytest.raises(ConfigError, match=r"'student.cls_token': false, but train.method='dinov2' reads"):
        resolve_pretrained_architecture(_quiet_config("demo", overrides), {"student.arch"})
