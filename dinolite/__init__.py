"""dinolite: distributed self-supervised pretraining of Vision Transformers (DINOv2 recipe)."""

__version__ = "0.1.0"


def load_backbone(path, map_location="cpu"):
    """Load an exported backbone (safetensors + JSON, or a DINOv2 ``.pth``), frozen and in eval mode.

    Imported lazily so that ``import dinolite`` stays light and free of trainer dependencies.
    """
    # Lazy: `import dinolite` (e.g. reading __version__) must not import torch and the models.
    from dinolite.export.load import load_backbone as _load_backbone

    return _load_backbone(path, map_location=map_location)


__all__ = ["__version__", "load_backbone"]
