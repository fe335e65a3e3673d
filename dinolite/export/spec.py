"""The architecture record that travels with every exported backbone.

An export is ``NAME.safetensors`` (weights, DINOv2 key layout) with this record in its header metadata
(authoritative) and a readable copy in ``NAME.safetensors.json``; an ONNX export carries it in the
graph's ``metadata_props`` and ``NAME.onnx.json``. DINOv2's released ``.pth`` files carry no record: :func:`spec_from_state_dict` infers
one from the tensor shapes.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import torch

from dinolite import __version__
from dinolite.export.errors import ExportFormatError
from dinolite.export.spec_checks import RECORD_FORMAT_VERSION, check_record_fields
from dinolite.models.backbone_factory import ARCHITECTURES
from dinolite.models.pos_embed import pos_embed_layout

FORMAT_NAME = "dinolite-backbone"
FORMAT_VERSION = RECORD_FORMAT_VERSION

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

JSON_MAX_BYTES = 16 << 20  # a config or record is a few KB; a larger "JSON" is not read into memory

# Sizes are named by width (DINOv2's convention); the factories' table is the one source of truth.
ARCH_BY_WIDTH = {dims["embed_dim"]: arch for arch, dims in ARCHITECTURES.items()}


def read_json_file(path: Path) -> Any:
    """A small JSON file (config, record, preprocessor), or :class:`ExportFormatError` naming it."""
    try:
        size = path.stat().st_size
        if size > JSON_MAX_BYTES:
            raise ExportFormatError(f"{path}: {size} bytes; a JSON config or record is at most {JSON_MAX_BYTES}")
        return json.loads(path.read_bytes())
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of more than 4300 digits
        raise ExportFormatError(f"{path}: not valid JSON: {exc}") from exc


def _is_required(field_: dataclasses.Field) -> bool:
    return field_.default is dataclasses.MISSING and field_.default_factory is dataclasses.MISSING


@dataclass
class BackboneSpec:
    """Everything needed to rebuild a backbone without dinolite's trainer."""

    arch: str
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    img_size: int  # size the position embedding was trained for (sets its grid)
    num_register_tokens: int = 0
    ffn_layer: str = "mlp"
    mlp_ratio: float = 4.0
    layerscale: Optional[float] = 1.0e-5  # None when the blocks have no LayerScale
    qkv_bias: bool = True
    proj_bias: bool = True
    ffn_bias: bool = True
    interpolate_antialias: bool = False
    interpolate_offset: float = 0.1
    # false: no CLS token (a CLS-free encoder, the released I-JEPA's); the "cls" output is the mean patch token
    cls_token: bool = True
    # absolute: the pos_embed table; shared_rel_pos_bias: no absolute position, one relative position bias shared by
    # the blocks (SimMIM's ViT; key rel_pos_bias.relative_position_bias_table; safetensors / .pth only); rope: axial
    # rotary embedding in every block (DINOv3's ViT; key rope_embed.periods; pos_embed zero)
    position: str = "absolute"
    rope_normalize_coords: str = "separate"  # position=rope: how patch coordinates map to [-1, 1]
    layernorm_eps: float = 1.0e-6  # DINOv2's; DINOv3's released ViTs: 1e-5
    train_img_size: Optional[int] = None  # global crop size used in training (for eval transforms)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    iteration: Optional[int] = None
    source: str = "teacher"  # teacher | student | dinov2 | unknown
    dinolite_version: str = ""
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_mapping(cls, data: Any, origin: str = "spec") -> "BackboneSpec":
        """A record read from ``origin`` (a file, or a file and the key holding the record), every field
        checked in type and range (:mod:`dinolite.export.spec_checks`) with the file and key named."""
        if not isinstance(data, Mapping):
            raise ExportFormatError(f"{origin}: holds a JSON {type(data).__name__}, not a dinolite backbone record")
        if data.get("format") != FORMAT_NAME:
            raise ExportFormatError(f"{origin}: not a dinolite backbone record (format={data.get('format')!r})")
        version = data.get("format_version", FORMAT_VERSION)
        if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
            raise ExportFormatError(
                f"{origin}: format_version {version} is newer than this dinolite reads ({FORMAT_VERSION}); upgrade dinolite"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ExportFormatError(f"{origin}: unknown fields {unknown}")
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in data and _is_required(f))
        if missing:
            raise ExportFormatError(f"{origin}: incomplete backbone record: missing {missing}")
        return cls(**check_record_fields(data, origin))

    @classmethod
    def from_json_file(cls, path: str | Path) -> "BackboneSpec":
        path = Path(path)
        try:
            data = read_json_file(path)
        except OSError as exc:
            raise ExportFormatError(f"{path}: cannot read the architecture JSON: {exc}") from exc
        return cls.from_mapping(data, origin=str(path))

    def backbone_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`dinolite.models.DinoVisionTransformer`."""
        return dict(
            img_size=self.img_size,
            patch_size=self.patch_size,
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            qkv_bias=self.qkv_bias,
            proj_bias=self.proj_bias,
            ffn_bias=self.ffn_bias,
            init_values=self.layerscale,
            ffn_layer=self.ffn_layer,
            num_register_tokens=self.num_register_tokens,
            interpolate_antialias=self.interpolate_antialias,
            interpolate_offset=self.interpolate_offset,
            cls_token=self.cls_token,
            pos_embed_type={"absolute": "learned"}.get(self.position, self.position),
            rope={"normalize_coords": self.rope_normalize_coords} if self.position == "rope" else None,
            layernorm_eps=self.layernorm_eps,
        )


def spec_from_backbone(model: torch.nn.Module, **record: Any) -> BackboneSpec:
    """Record the architecture of a live :class:`DinoVisionTransformer` (``record`` adds metadata)."""

    embed_dim = int(model.embed_dim)
    first_block = model.blocks[0]
    ffn_layer = "swiglu" if hasattr(first_block.mlp, "w12") else "mlp"
    # Only the presence of LayerScale matters for rebuilding: the trained gammas come with the weights.
    has_layerscale = isinstance(getattr(getattr(first_block, "ls1", None), "gamma", None), torch.Tensor)
    patch = model.patch_embed.proj.kernel_size[0]
    _, grid = pos_embed_layout(int(model.pos_embed.shape[1]))
    spec = BackboneSpec(
        arch=ARCH_BY_WIDTH.get(embed_dim, "custom"),
        embed_dim=embed_dim,
        depth=len(model.blocks),
        num_heads=int(first_block.attn.num_heads),
        patch_size=int(patch),
        img_size=grid * int(patch),
        num_register_tokens=int(getattr(model, "num_register_tokens", 0)),
        ffn_layer=ffn_layer,
        mlp_ratio=_mlp_ratio(first_block, embed_dim, ffn_layer),
        layerscale=1.0e-5 if has_layerscale else None,
        qkv_bias=first_block.attn.qkv.bias is not None,
        proj_bias=first_block.attn.proj.bias is not None,
        ffn_bias=_ffn_bias(first_block, ffn_layer),
        interpolate_antialias=bool(getattr(model, "interpolate_antialias", False)),
        interpolate_offset=float(getattr(model, "interpolate_offset", 0.1)),
        cls_token=getattr(model, "cls_token", None) is not None,
        position=_position_of(model),
        rope_normalize_coords=getattr(getattr(model, "rope_embed", None), "normalize_coords", "separate"),
        layernorm_eps=float(model.norm.eps),
        dinolite_version=__version__,
    )
    return dataclasses.replace(spec, **record)


def _position_of(model: torch.nn.Module) -> str:
    if getattr(model, "rope_embed", None) is not None:
        return "rope"
    return "shared_rel_pos_bias" if getattr(model, "rel_pos_bias", None) is not None else "absolute"


def require_absolute_position(spec: BackboneSpec, layout: str) -> None:
    """Refuse a backbone with a shared relative position bias (SimMIM's ViT) for ``layout``, which cannot
    express it (timm / transformers: an absolute table only; ONNX: the bias index would be traced at one size)."""
    if spec.position != "absolute":
        kind = (
            "rotary position embedding (DINOv3's ViT)" if spec.position == "rope" else "shared relative position bias"
        )
        raise ExportFormatError(
            f"{layout} has an absolute position table only; this backbone has none and a {kind} (its record says "
            f"position={spec.position}): export it as safetensors or .pth instead"
        )


def require_cls_token(spec: BackboneSpec, layout: str) -> None:
    """Refuse a CLS-free backbone (``cls_token=False``) for ``layout``, whose DINOv2 models always have one."""
    if not spec.cls_token:
        raise ExportFormatError(
            f"{layout}'s DINOv2 models always have a CLS token; this backbone has none (its record says "
            "cls_token=false: the released I-JEPA encoder's layout): export it as safetensors or ONNX instead"
        )


def _mlp_ratio(block: torch.nn.Module, embed_dim: int, ffn_layer: str) -> float:
    if ffn_layer == "mlp":
        return block.mlp.fc1.out_features / embed_dim
    # SwiGLU stores a hidden size rounded from 2/3 of embed_dim * mlp_ratio; DINOv2 always uses ratio 4.
    return 4.0


def _ffn_bias(block: torch.nn.Module, ffn_layer: str) -> bool:
    layer = block.mlp.fc1 if ffn_layer == "mlp" else block.mlp.w12
    return layer.bias is not None


_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")


def spec_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], origin: str = "state dict", num_heads: Optional[int] = None
) -> BackboneSpec:
    """Infer the architecture of a DINOv2-layout backbone state dict (e.g. a released ``.pth``), with or without
    a ``cls_token`` (a CLS-free encoder's table has no CLS row: ``pos_embed_layout``).

    ``num_heads`` changes no shape: without it, the head count of the DINOv2 size of that width is used."""
    required = ("pos_embed", "patch_embed.proj.weight", "norm.weight")
    missing = [k for k in required if k not in state_dict]
    if missing:
        sample = ", ".join(list(state_dict)[:5])
        raise ExportFormatError(
            f"{origin}: not a DINOv2/dinolite backbone state dict: missing {missing} (found keys like: {sample})"
        )
    try:
        return _infer_spec(state_dict, origin, num_heads)
    except (IndexError, KeyError, ValueError) as exc:  # too few dimensions, a block without its FFN, a bad table
        raise ExportFormatError(
            f"{origin}: not a DINOv2/dinolite backbone state dict ({type(exc).__name__}: {exc})"
        ) from exc


def _block_count(keys: Iterable[str], origin: str) -> int:
    """The number of blocks ``blocks.N.*`` numbers: 0..depth-1, every one present (a lone ``blocks.99999999``
    must not make a 100M-block model, even on the meta device)."""
    indices = {int(m.group(1)) for key in keys if (m := _BLOCK_KEY.match(key))}
    if indices != set(range(len(indices))):
        missing = sorted(set(range(max(indices, default=-1) + 1)) - indices)
        raise ExportFormatError(f"{origin}: blocks are not numbered 0..N-1 (missing blocks {missing[:5]}...)")
    return len(indices)


def _infer_spec(state_dict: Mapping[str, torch.Tensor], origin: str, num_heads: Optional[int]) -> BackboneSpec:
    embed_dim = int(state_dict["pos_embed"].shape[-1])
    if embed_dim not in ARCH_BY_WIDTH and num_heads is None:
        raise ExportFormatError(
            f"{origin}: width {embed_dim} is not a DINOv2 size, so the number of heads cannot be inferred; "
            "load it from a dinolite export (.safetensors + .json) instead"
        )
    patch = int(state_dict["patch_embed.proj.weight"].shape[-1])
    cls_rows, grid = pos_embed_layout(int(state_dict["pos_embed"].shape[1]))
    if cls_rows != ("cls_token" in state_dict):
        raise ExportFormatError(
            f"{origin}: pos_embed has {'a' if cls_rows else 'no'} CLS row but the state dict has "
            f"{'no' if cls_rows else 'a'} cls_token"
        )
    depth = _block_count(state_dict, origin)
    if depth == 0:
        raise ExportFormatError(f"{origin}: no transformer blocks (blocks.N.*) in the state dict")
    swiglu = "blocks.0.mlp.w12.weight" in state_dict
    hidden = state_dict["blocks.0.mlp.w12.weight" if swiglu else "blocks.0.mlp.fc1.weight"].shape[0]
    return BackboneSpec(
        arch=ARCH_BY_WIDTH.get(embed_dim, "custom"),
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads or ARCHITECTURES[ARCH_BY_WIDTH[embed_dim]]["num_heads"],
        patch_size=patch,
        img_size=grid * patch,
        num_register_tokens=int(state_dict["register_tokens"].shape[1]) if "register_tokens" in state_dict else 0,
        ffn_layer="swiglu" if swiglu else "mlp",
        mlp_ratio=4.0 if swiglu else hidden / embed_dim,
        layerscale=1.0e-5 if "blocks.0.ls1.gamma" in state_dict else None,
        position="rope" if "rope_embed.periods" in state_dict else _table_position(state_dict),
        qkv_bias="blocks.0.attn.qkv.bias" in state_dict,
        proj_bias="blocks.0.attn.proj.bias" in state_dict,
        ffn_bias=("blocks.0.mlp.w12.bias" if swiglu else "blocks.0.mlp.fc1.bias") in state_dict,
        cls_token=bool(cls_rows),
        source="dinov2",
    )


def _table_position(state_dict: Mapping[str, torch.Tensor]) -> str:
    return "shared_rel_pos_bias" if "rel_pos_bias.relative_position_bias_table" in state_dict else "absolute"


def check_spec_against_shapes(
    spec: BackboneSpec, shapes: Mapping[str, tuple[int, ...]], spec_origin: str, weights_origin: str
) -> None:
    """Refuse a record that does not describe the tensors, from shapes alone (nothing is built).

    Checks the fields that decide how much a model built from ``spec`` would allocate (width, depth,
    patch size, position-embedding grid, register tokens, FFN type) against the tensor shapes, so a
    small tampered or stale JSON cannot make a loader allocate a model far larger than the weights.
    The error names the record, the field, its value and what the weights say. ``num_heads`` changes
    no shape; it can only be checked to divide the width.
    """

    def refuse(field_name: str, claimed: Any, actual: Any, evidence: str) -> None:
        raise ExportFormatError(
            f"{spec_origin}: {field_name}={claimed!r} but the weights in {weights_origin} have {actual} ({evidence}); "
            "this record does not describe these weights"
        )

    def shape(key: str) -> tuple[int, ...]:
        if key not in shapes:
            sample = ", ".join(list(shapes)[:5])
            raise ExportFormatError(
                f"{weights_origin}: not a DINOv2/dinolite backbone: no {key!r} tensor (found keys like: {sample})"
            )
        return tuple(shapes[key])

    for name in ("embed_dim", "depth", "num_heads", "patch_size", "img_size", "num_register_tokens"):
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "num_register_tokens" else 1):
            raise ExportFormatError(f"{spec_origin}: {name}={value!r} is not a valid size")
    pos_shape = shape("pos_embed")
    if spec.embed_dim != pos_shape[-1]:
        refuse("embed_dim", spec.embed_dim, f"width {pos_shape[-1]}", f"pos_embed shape {pos_shape}")
    if spec.cls_token != ("cls_token" in shapes):
        refuse("cls_token", spec.cls_token, "a cls_token" if "cls_token" in shapes else "no cls_token", "its keys")
    depth = _block_count(shapes, weights_origin)
    if spec.depth != depth:
        refuse("depth", spec.depth, f"{depth} blocks", "blocks.N.* tensors")
    patch_shape = shape("patch_embed.proj.weight")
    if spec.patch_size != patch_shape[-1]:
        refuse(
            "patch_size", spec.patch_size, f"{patch_shape[-1]}-pixel patches", f"patch_embed.proj.weight {patch_shape}"
        )
    tokens = pos_shape[1] - int(spec.cls_token)
    if (spec.img_size // spec.patch_size) ** 2 != tokens:
        refuse(
            "img_size", spec.img_size, f"{tokens} position-embedding patches", f"pos_embed shape {shape('pos_embed')}"
        )
    registers = shapes["register_tokens"][1] if "register_tokens" in shapes else 0
    if spec.num_register_tokens != registers:
        refuse(
            "num_register_tokens", spec.num_register_tokens, f"{registers} register tokens", "register_tokens tensor"
        )
    swiglu = "blocks.0.mlp.w12.weight" in shapes
    if (spec.ffn_layer == "swiglu") != swiglu and depth:
        refuse("ffn_layer", spec.ffn_layer, "a SwiGLU FFN" if swiglu else "an MLP FFN", "blocks.0.mlp.* tensors")
    if spec.embed_dim % spec.num_heads:
        raise ExportFormatError(f"{spec_origin}: num_heads={spec.num_heads} does not divide embed_dim={spec.embed_dim}")
