"""dinolite: distributed self-supervised pretraining of Vision Transformers (DINOv2 recipe)."""

__version__ = "0.1.0"


def load_backbone(path, map_location="cpu", network=None):
    """Load a frozen backbone in eval mode from an export (safetensors + JSON, or a DINOv2 ``.pth``) or
    from a training run / checkpoint directory.

    ``network`` (``"teacher"`` or ``"student"``) picks the network of a checkpoint; by default the
    method's evaluated one (DINOv2: the EMA teacher; a method without a teacher: the student).
    """
    # Lazy: `import dinolite` (e.g. reading __version__) must not import torch and the models.
    from dinolite.eval.backbone import load_any_backbone

    return load_any_backbone(path, map_location=map_location, network=network)


__all__ = ["__version__", "load_backbone"]
