"""torch.hub entrypoints for backbones exported by dinolite (local files; nothing is downloaded).

    model = torch.hub.load("/path/to/dinolite", "backbone", path="teacher.safetensors", source="local")
    model = torch.hub.load("/path/to/dinolite", "dinov2_vitl14", path="dinov2_vitl14_pretrain.pth", source="local")
"""

dependencies = ["torch", "safetensors"]


def backbone(path: str, map_location: str = "cpu"):
    """A frozen, eval-mode backbone from a dinolite export (``.safetensors``) or a DINOv2 ``.pth``."""
    from dinolite.export.load import load_backbone

    return load_backbone(path, map_location=map_location)


def _dinov2(expected_arch: str, path: str, map_location: str):
    model = backbone(path, map_location=map_location)
    if model.spec.arch != expected_arch or model.spec.patch_size != 14:
        raise ValueError(f"{path} holds a {model.spec.arch}/{model.spec.patch_size}, not a {expected_arch}/14")
    return model


def dinov2_vits14(path: str, map_location: str = "cpu"):
    """DINOv2 ViT-S/14 from a local ``dinov2_vits14[_reg4]_pretrain.pth``."""
    return _dinov2("vit_small", path, map_location)


def dinov2_vitb14(path: str, map_location: str = "cpu"):
    """DINOv2 ViT-B/14 from a local ``dinov2_vitb14[_reg4]_pretrain.pth``."""
    return _dinov2("vit_base", path, map_location)


def dinov2_vitl14(path: str, map_location: str = "cpu"):
    """DINOv2 ViT-L/14 from a local ``dinov2_vitl14[_reg4]_pretrain.pth``."""
    return _dinov2("vit_large", path, map_location)


def dinov2_vitg14(path: str, map_location: str = "cpu"):
    """DINOv2 ViT-g/14 from a local ``dinov2_vitg14[_reg4]_pretrain.pth``."""
    return _dinov2("vit_giant2", path, map_location)
