"""Hostile weight files and records (issue 24, items 4 and 7): every case is one row of a table.

Each row plants one hostile input next to a tiny honest backbone and names the loader that reads it and
the fragments the refusal must hold (``{path}`` is the planted file or folder). A refusal must come
before any model is built (the ``no_real_model`` guard fails the row otherwise, which also keeps the old
code from allocating what the file claims). The next case is one more row.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from dinolite.eval.backbone import load_any_backbone
from dinolite.export import load as load_module
from dinolite.export.hub import write_timm_hub_folder, write_transformers_folder
from dinolite.export.load import SPEC_METADATA_KEY, load_backbone, load_pretrained
from dinolite.export.spec import ExportFormatError, spec_from_backbone
from dinolite.models import DinoVisionTransformer


def tiny() -> DinoVisionTransformer:
    torch.manual_seed(0)
    return DinoVisionTransformer(img_size=28, patch_size=14, embed_dim=64, depth=2, num_heads=4, init_values=1e-5)


def record(**changes: Any) -> dict:
    return {**json.loads(spec_from_backbone(tiny(), train_img_size=28).to_json()), **changes}


@pytest.fixture
def no_real_model(monkeypatch):
    """Fail the row if a backbone is built anywhere but on the meta device (nothing allocated there)."""

    class Guarded(DinoVisionTransformer):
        def __init__(self, **kwargs):
            if torch.empty(0).device.type != "meta":
                raise AssertionError(f"a real model of width {kwargs['embed_dim']} was built before any refusal")
            super().__init__(**kwargs)

    monkeypatch.setattr(load_module, "DinoVisionTransformer", Guarded)


# ---------------------------------------------------------------------------------------------- planters


def claimed_vit(width: int = 384, depth: int = 12) -> dict[str, torch.Size]:
    """The state-dict shapes of a DINOv2 ViT of ``width`` (ViT-S: 22M parameters), on meta."""
    with torch.device("meta"):
        model = DinoVisionTransformer(img_size=224, patch_size=14, embed_dim=width, depth=depth, num_heads=6)
    return {key: value.shape for key, value in model.state_dict().items()}


def expanded_pth(tmp: Path, name: str = "expanded.pth") -> Path:
    """Every tensor a stride-0 view of one stored float: a few KB posing as a ViT-S."""
    one = torch.zeros(1)
    torch.save({key: one.expand(shape) for key, shape in claimed_vit().items()}, tmp / name)
    return tmp / name


def shared_storage_pth(tmp: Path) -> Path:
    """Every tensor a plain view of one shared storage (as large as the largest tensor only)."""
    shapes = claimed_vit()
    base = torch.zeros(max(s.numel() for s in shapes.values()))
    torch.save({key: base[: shape.numel()].view(shape) for key, shape in shapes.items()}, tmp / "shared.pth")
    return tmp / "shared.pth"


def transformers_bin(tmp: Path) -> Path:
    """The tiny backbone's honest weights in transformers' layout, pickled as hub folders used to."""
    from dinolite.export.transformers_format import to_transformers_state_dict

    torch.save(to_transformers_state_dict(tiny().state_dict(), spec_from_backbone(tiny())), tmp / "honest.bin")
    return tmp / "honest.bin"


def bin_only_folder(tmp: Path, weights: Callable[[Path], Path] = expanded_pth) -> Path:
    """A transformers hub folder whose weights are only ``pytorch_model.bin``."""
    folder = tmp / "hf"
    write_transformers_folder(tiny().state_dict(), spec_from_backbone(tiny()), folder)
    (folder / "model.safetensors").unlink()
    weights(tmp).rename(folder / "pytorch_model.bin")
    return folder


def in_header(data: Any = None, **changes: Any) -> Callable[[Path], Path]:
    """An export whose header record is ``data`` (default: the honest record with ``changes``)."""

    def plant(tmp: Path) -> Path:
        path = tmp / "m.safetensors"
        text = json.dumps(record(**changes) if data is None else data)
        save_file(tiny().state_dict(), str(path), metadata={SPEC_METADATA_KEY: text})
        return path

    return plant


def in_sidecar(**changes: Any) -> Callable[[Path], Path]:
    """An export without a header record, its sidecar JSON the honest record with ``changes``."""

    def plant(tmp: Path) -> Path:
        path = tmp / "s.safetensors"
        save_file(tiny().state_dict(), str(path))
        (tmp / "s.safetensors.json").write_text(json.dumps(record(**changes)))
        return path

    return plant


def _edit(data: dict, changes: dict[str, Any]) -> None:
    """``{"a.b": v}`` sets ``data["a"]["b"]``; the value ``...`` deletes the key."""
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        target = data
        for parent in parents:
            target = target[parent]
        if value is ...:
            del target[leaf]
        else:
            target[leaf] = value


def in_folder(fmt: str, config: dict | None = None, processor: dict | None = None) -> Callable[[Path], Path]:
    """A timm / transformers folder without dinolite's record (read from its own configs), edited."""

    def plant(tmp: Path) -> Path:
        folder = tmp / fmt
        writer = write_timm_hub_folder if fmt == "timm" else write_transformers_folder
        writer(tiny().state_dict(), spec_from_backbone(tiny(), train_img_size=28), folder)
        for name, changes in (("config.json", config or {}), ("preprocessor_config.json", processor or {})):
            if (folder / name).is_file():
                data = json.loads((folder / name).read_text())
                data.pop("dinolite_backbone", None)
                _edit(data, changes)
                (folder / name).write_text(json.dumps(data))
        return folder

    return plant


# ---------------------------------------------------------------------------------------------- table


@dataclasses.dataclass(frozen=True)
class Case:
    plant: Callable[[Path], Path]
    load: Callable[[Path], Any]
    message: tuple[str, ...]


CASES = {
    # item 4: tensors larger than the file (stride-0 views, shared storage), on every path that reads weights
    "pth of stride-0 tensors: load_backbone": Case(expanded_pth, load_backbone, ("'cls_token'", "claims shape")),
    "pth of stride-0 tensors: pretrained_weights": Case(expanded_pth, load_pretrained, ("claims shape",)),
    "pth of stride-0 tensors: eval --backbone": Case(expanded_pth, load_any_backbone, ("claims shape",)),
    "pth of views of one storage": Case(shared_storage_pth, load_backbone, ("share storages",)),
    "hub folder, stride-0 pytorch_model.bin": Case(bin_only_folder, load_backbone, ("pytorch_model.bin", "claims")),
    # items 4 and 7: every record field typed and ranged, the file and key named
    "train_img_size 40000": Case(in_header(train_img_size=40000), load_backbone,
                                 ("m.safetensors", "train_img_size=40000", "from 1 to 4096")),
    "train_img_size -32": Case(in_header(train_img_size=-32), load_backbone, ("train_img_size=-32",)),
    "mean 'abc'": Case(in_header(mean="abc"), load_backbone, ("mean='abc'", "three finite numbers")),
    "std 0": Case(in_header(std=[0, 0, 0]), load_backbone, ("std=[0, 0, 0]", "> 0")),
    "qkv_bias 'no'": Case(in_header(qkv_bias="no"), load_backbone, ("qkv_bias='no'", "true or false")),
    "format_version 'zz'": Case(in_header(format_version="zz"), load_backbone, ("format_version='zz'",)),
    "interpolate_offset 5": Case(in_header(interpolate_offset=5.0), load_backbone, ("interpolate_offset=5.0",)),
    "a record that is a list": Case(in_header([record()]), load_backbone, ("m.safetensors", "a JSON list")),
    "sidecar mlp_ratio NaN": Case(in_sidecar(mlp_ratio=float("nan")), load_backbone,
                                  ("s.safetensors.json", "mlp_ratio=nan")),
    # foreign configs: timm's input_size, transformers' crop_size, std and heads
    "timm input_size 40000": Case(in_folder("timm", {"pretrained_cfg.input_size": [3, 40000, 40000]}),
                                  load_backbone, ("config.json", "pretrained_cfg.input_size=40000")),
    "transformers crop_size 40000": Case(in_folder("transformers", processor={"crop_size.height": 40000}),
                                         load_backbone, ("preprocessor_config.json", "crop_size.height=40000")),
    "transformers image_std 0": Case(in_folder("transformers", processor={"image_std": [0.2, 0, 0.2]}),
                                     load_backbone, ("preprocessor_config.json", "image_std=[0.2, 0, 0.2]")),
    "transformers num_attention_heads 0": Case(in_folder("transformers", {"num_attention_heads": 0}),
                                               load_backbone, ("config.json", "num_attention_heads=0")),
    "transformers num_attention_heads missing": Case(in_folder("transformers", {"num_attention_heads": ...}),
                                                     load_backbone, ("config.json", "no num_attention_heads")),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_weights_are_refused_before_any_model_is_built(tmp_path, no_real_model, name):
    case = CASES[name]
    path = case.plant(tmp_path)
    with pytest.raises(ExportFormatError) as info:
        case.load(path)
    message = str(info.value)
    assert str(path) in message or any(str(p) in message for p in Path(path).glob("*")), message
    for fragment in case.message:
        assert fragment in message, message


# ---------------------------------------------------------------------------------------------- held inputs


@pytest.mark.parametrize("load", [load_backbone, load_any_backbone], ids=["load_backbone", "eval --backbone"])
def test_a_hub_folder_with_only_pytorch_model_bin_loads(tmp_path, load):
    """Older hub folders hold ``pytorch_model.bin`` only: read with weights_only and the storage checks."""
    folder = bin_only_folder(tmp_path, weights=transformers_bin)
    images = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(load(folder)(images), tiny().eval()(images), rtol=0, atol=0)


def test_a_pickle_payload_in_pytorch_model_bin_never_runs(tmp_path):
    import pickle

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    folder = bin_only_folder(tmp_path, weights=transformers_bin)
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"x": Payload()}))
    with pytest.raises(ExportFormatError, match="pytorch_model.bin: cannot load with weights_only=True"):
        load_backbone(folder)
    assert not marker.exists()
