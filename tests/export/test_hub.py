"""HuggingFace layouts both ways: our exports load in timm (``local-dir:``) and transformers
(``from_pretrained``) with identical features and the right preprocessing; timm's and transformers' own
DINOv2 checkpoints (with and without registers) load into dinolite with identical features and serve as
``student.pretrained_weights``; ``hf-hub:`` sources and ``--push-to-hub`` work offline."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dinolite.export.hub import (
    push_folder_to_hub,
    write_timm_hub_folder,
    write_transformers_folder,
)
from dinolite.export.load import load_backbone, load_pretrained
from dinolite.export.spec import ExportFormatError, spec_from_backbone
from dinolite.models import DinoVisionTransformer
from tests.offline_hub import cache_repository, read_cache_offline, record_uploads

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _backbone(**overrides) -> DinoVisionTransformer:
    kwargs = dict(img_size=28, patch_size=14, embed_dim=384, depth=2, num_heads=6, init_values=1e-5)
    kwargs.update(overrides)
    torch.manual_seed(0)
    model = DinoVisionTransformer(**kwargs).eval()
    with torch.no_grad():  # LayerScale at 1e-5 would hide a wrongly mapped block: make the blocks matter
        for name, param in model.named_parameters():
            if name.endswith("gamma"):
                param.uniform_(0.3, 0.7)
    return model


def _trained_size(model) -> int:
    return int(round((model.pos_embed.shape[1] - 1) ** 0.5)) * model.patch_size


def _ours(model, images):
    with torch.no_grad():
        out = model.forward_features(images)
    return out["x_norm_clstoken"], out["x_norm_regtokens"], out["x_norm_patchtokens"]


# a DINOv2 ViT-S/14 shape, a register model, and the demo's shape (width 96, patch 4, no LayerScale)
EXPORTED = {
    "vits14": dict(),
    "vits14_reg4": dict(num_register_tokens=4),
    "demo_like": dict(img_size=32, patch_size=4, embed_dim=96, num_heads=3, init_values=None),
}


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_timm_hub_folder_loads_with_local_dir_and_the_training_preprocessing(tmp_path, name):
    model = _backbone(**EXPORTED[name])
    size = _trained_size(model)
    spec = spec_from_backbone(model, train_img_size=size, mean=MEAN, std=STD, iteration=7)
    written = write_timm_hub_folder(model.state_dict(), spec, tmp_path / "hub")
    assert sorted(p.name for p in written) == ["config.json", "model.safetensors"]

    theirs = timm.create_model(f"local-dir:{tmp_path / 'hub'}", pretrained=True).eval()
    config = timm.data.resolve_data_config(model=theirs)
    assert config["input_size"] == (3, size, size) and config["interpolation"] == "bicubic"
    assert (
        tuple(config["mean"]) == MEAN and tuple(config["std"]) == STD and config["crop_pct"] == pytest.approx(224 / 256)
    )

    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        tokens = theirs.forward_features(images)
    cls, regs, patches = _ours(model, images)
    torch.testing.assert_close(tokens[:, 0], cls, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tokens[:, 1 + regs.shape[1] :], patches, rtol=1e-4, atol=1e-5)

    back = load_backbone(tmp_path / "hub")  # and dinolite reads its own folder back exactly
    assert back.spec == spec
    for a, b in zip(_ours(back, images), _ours(model, images)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_timm_hub_folder_refuses_what_its_config_cannot_name(tmp_path):
    model = _backbone(ffn_layer="swiglu")
    with pytest.raises(ExportFormatError, match="SwiGLU"):
        write_timm_hub_folder(model.state_dict(), spec_from_backbone(model), tmp_path / "hub")
    assert not (tmp_path / "hub" / "model.safetensors").exists()


@pytest.mark.parametrize("name", sorted(EXPORTED) + ["swiglu_no_biases"])
def test_transformers_folder_from_pretrained_gives_the_same_features(tmp_path, name):
    overrides = EXPORTED.get(name) or dict(ffn_layer="swiglu", proj_bias=False, ffn_bias=False)
    model = _backbone(**overrides)
    size = _trained_size(model)
    spec = spec_from_backbone(model, train_img_size=size, mean=MEAN, std=STD)
    write_transformers_folder(model.state_dict(), spec, tmp_path / "hf")

    theirs = transformers.AutoModel.from_pretrained(str(tmp_path / "hf")).eval()
    expected_class = "Dinov2WithRegistersModel" if spec.num_register_tokens else "Dinov2Model"
    assert type(theirs).__name__ == expected_class
    processor = transformers.AutoImageProcessor.from_pretrained(str(tmp_path / "hf"))
    assert processor.crop_size == {"height": size, "width": size}
    assert tuple(processor.image_mean) == MEAN and tuple(processor.image_std) == STD

    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        hidden = theirs(pixel_values=images).last_hidden_state
    cls, regs, patches = _ours(model, images)
    torch.testing.assert_close(hidden[:, 0], cls, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(hidden[:, 1 + regs.shape[1] :], patches, rtol=1e-4, atol=1e-5)

    back = load_backbone(tmp_path / "hf")  # the padding (LayerScale 1, zero biases) is dropped again
    assert back.spec == spec
    assert set(back.state_dict()) == set(model.state_dict())
    for a, b in zip(_ours(back, images), _ours(model, images)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# Their DINOv2 checkpoints into dinolite
# --------------------------------------------------------------------------------------------------


def _timm_dinov2(registers: bool, depth: int = 2):
    name = "vit_small_patch14_reg4_dinov2" if registers else "vit_small_patch14_dinov2"
    torch.manual_seed(1)
    model = timm.create_model(name, pretrained=False, img_size=42, depth=depth, num_classes=0).eval()
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if pname.endswith("gamma"):
                param.uniform_(0.3, 0.7)
            elif pname in ("pos_embed", "cls_token", "reg_token"):
                param.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("registers", [False, True])
def test_timm_dinov2_weights_load_with_identical_features(tmp_path, registers):
    theirs = _timm_dinov2(registers)
    images = torch.randn(2, 3, 42, 42)
    with torch.no_grad():
        tokens = theirs.forward_features(images)
    n_prefix = 1 + (4 if registers else 0)

    # the single file people download (timm's layout: no mask_token; reg_token, patch-only pos_embed)
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, str(tmp_path / "timm.safetensors"))
    # and timm's own hub folder (timm writes it: config.json + model.safetensors)
    timm.models.save_for_hf(theirs, str(tmp_path / "folder"), safe_serialization=True)
    for source in (tmp_path / "timm.safetensors", tmp_path / "folder"):
        ours = load_backbone(source)
        assert ours.spec.num_register_tokens == (4 if registers else 0) and ours.spec.patch_size == 14
        cls, regs, patches = _ours(ours, images)
        torch.testing.assert_close(cls, tokens[:, 0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(regs, tokens[:, 1:n_prefix], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(patches, tokens[:, n_prefix:], rtol=1e-4, atol=1e-5)
    assert load_backbone(tmp_path / "folder").spec.source == "timm"


def _transformers_dinov2(registers: bool, tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    common = dict(
        hidden_size=384, num_hidden_layers=2, num_attention_heads=6, image_size=42, patch_size=14, layerscale_value=0.5
    )
    torch.manual_seed(2)
    if registers:
        model = transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(num_register_tokens=4, **common)
        )
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**common))
    folder = tmp_path / "transformers"
    model.eval().save_pretrained(str(folder))
    return model, folder


@pytest.mark.parametrize("registers", [False, True])
def test_transformers_dinov2_weights_load_with_identical_features(tmp_path, registers):
    theirs, folder = _transformers_dinov2(registers, tmp_path)
    images = torch.randn(2, 3, 42, 42)
    with torch.no_grad():
        hidden = theirs(pixel_values=images).last_hidden_state
    ours = load_backbone(folder)
    assert ours.spec.source == "transformers" and ours.spec.num_heads == 6
    n_prefix = 1 + (4 if registers else 0)
    cls, regs, patches = _ours(ours, images)
    torch.testing.assert_close(cls, hidden[:, 0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(regs, hidden[:, 1:n_prefix], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(patches, hidden[:, n_prefix:], rtol=1e-4, atol=1e-5)


def test_timm_and_transformers_weights_serve_as_student_pretrained_weights(tmp_path):
    from dinolite.config import load_config
    from dinolite.train.methods.dinov2 import build_objective

    theirs = _timm_dinov2(registers=True)
    timm.models.save_for_hf(theirs, str(tmp_path / "timm"), safe_serialization=True)
    _, hf_folder = _transformers_dinov2(registers=True, tmp_path=tmp_path)
    arch = [
        "student.arch=vit_small",
        "student.embed_dim=384",
        "student.num_heads=6",
        "student.layerscale=1e-5",
        "student.patch_size=14",
        "student.depth=2",
        "student.num_register_tokens=4",
        "crops.global_crops_size=42",
        "crops.local_crops_size=14",
        "dino.head_n_prototypes=16",
        "ibot.head_n_prototypes=16",
    ]
    for source in (tmp_path / "timm", hf_folder):
        expected = load_pretrained(source).backbone
        assert "mask_token" in expected  # absent from timm's layout: DINOv2's zero init
        objective = build_objective(load_config("demo", [*arch, f"student.pretrained_weights={source}"]))
        for which in (objective.student, objective.teacher):
            for key, value in which["backbone"].state_dict().items():
                torch.testing.assert_close(value, expected[key], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# The hub itself, offline
# --------------------------------------------------------------------------------------------------


def test_hf_hub_source_reads_the_offline_cache(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    model = _backbone(num_register_tokens=4)
    spec = spec_from_backbone(model, train_img_size=28)
    write_transformers_folder(model.state_dict(), spec, tmp_path / "hf")
    cache_repository(tmp_path / "cache", "someone/tiny-dinolite", tmp_path / "hf")
    read_cache_offline(tmp_path / "cache", monkeypatch)

    loaded = load_backbone("hf-hub:someone/tiny-dinolite")
    images = torch.randn(1, 3, 28, 28)
    for a, b in zip(_ours(loaded, images), _ours(model, images)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="hf-hub:someone/absent"):
        load_backbone("hf-hub:someone/absent")


def test_push_to_hub_creates_the_repository_and_uploads_the_folder(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    calls = record_uploads(monkeypatch)
    model = _backbone()
    write_timm_hub_folder(model.state_dict(), spec_from_backbone(model), tmp_path / "hub")
    push_folder_to_hub(tmp_path / "hub", "someone/vits", private=True)
    assert calls[0] == ("create_repo", dict(repo_id="someone/vits", repo_type="model", private=True, exist_ok=True))
    assert calls[1][0] == "upload_folder" and calls[1][1]["folder_path"] == str(tmp_path / "hub")
    assert calls[1][1]["repo_id"] == "someone/vits"


def test_torch_hub_dinov2_names_take_local_files_folders_and_registers(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    theirs = _timm_dinov2(registers=True, depth=12)  # the entries take only their own depth
    timm.models.save_for_hf(theirs, str(tmp_path / "timm"), safe_serialization=True)
    reg = torch.hub.load(str(repo), "dinov2_vits14_reg", path=str(tmp_path / "timm"), source="local")
    assert reg.spec.num_register_tokens == 4
    with pytest.raises(ValueError, match="registers"):
        torch.hub.load(str(repo), "dinov2_vits14", path=str(tmp_path / "timm"), source="local")
    with pytest.raises(ValueError, match="path="):  # DINOv2's call without weights: nothing to download here
        torch.hub.load(str(repo), "dinov2_vits14", source="local")
    random_init = torch.hub.load(str(repo), "dinov2_vits14_reg", pretrained=False, source="local")
    assert (random_init.spec.img_size, random_init.spec.num_register_tokens, random_init.interpolate_offset) == (
        518,
        4,
        0.0,
    )


def test_torch_hub_dinov3_names_build_its_rope_vits_and_take_its_pth(tmp_path):
    from dinolite.export.dinov3_format import to_dinov3_state_dict

    repo = Path(__file__).resolve().parents[2]
    random_init = torch.hub.load(str(repo), "dinov3_vits16", pretrained=False, source="local")
    spec = random_init.spec
    assert (spec.position, spec.patch_size, spec.img_size, spec.num_register_tokens) == ("rope", 16, 224, 4)
    assert random_init.norm.eps == 1e-5 and random_init.rope_embed.base == 100.0
    theirs = to_dinov3_state_dict(random_init.state_dict(), spec)  # the keys DINOv3's dinov3_vits16 loads
    assert theirs["storage_tokens"].shape == (1, 4, 384) and theirs["rope_embed.periods"].shape == (16,)
    torch.save(theirs, tmp_path / "dinov3_vits16_pretrain_lvd1689m.pth")
    loaded = torch.hub.load(
        str(repo), "dinov3_vits16", path=str(tmp_path / "dinov3_vits16_pretrain_lvd1689m.pth"), source="local"
    )
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(loaded(images), random_init(images))
    with pytest.raises(ValueError, match="not DINOv3's vit_base/16"):
        torch.hub.load(
            str(repo), "dinov3_vitb16", path=str(tmp_path / "dinov3_vits16_pretrain_lvd1689m.pth"), source="local"
        )
    with pytest.raises(ValueError, match="SAT493M"):
        torch.hub.load(str(repo), "dinov3_vits16", weights="LVD142M", pretrained=False, source="local")
    # a ViT-S-wide RoPE file of another depth is not DINOv3's ViT-S/16: the error names both values
    shallow_spec = dataclasses.replace(spec, depth=2)
    shallow = DinoVisionTransformer(**shallow_spec.backbone_kwargs())
    torch.save(to_dinov3_state_dict(shallow.state_dict(), shallow_spec), tmp_path / "shallow.pth")
    with pytest.raises(ValueError, match=r"not DINOv3's dinov3_vits16: depth 2 \(the entry: 12\)"):
        torch.hub.load(str(repo), "dinov3_vits16", path=str(tmp_path / "shallow.pth"), source="local")
