"""A small VQ-VAE image tokenizer for BEiT (one discrete token per ViT patch), and its checkpoint format.

BEiT (Bao et al. 2022) predicts the tokens of a frozen image tokenizer; its release uses DALL-E's dVAE
(8192 tokens), which cannot be downloaded here. dinolite instead trains this VQ-VAE (van den Oord et al.
2017, "Neural Discrete Representation Learning") on the run's own data (``dinolite-train-tokenizer``):

- encoder: 3x3 conv -> ReLU -> a ``patch_size`` x ``patch_size`` conv with stride ``patch_size`` (one
  cell per ViT patch) -> ReLU -> 1x1 conv to ``code_dim``;
- codebook: ``vocab_size`` x ``code_dim``; encoder outputs and codes are L2-normalised (the factorised,
  normalised lookup of Yu et al. 2022, "Vector-quantized Image Modeling with Improved VQGAN", which BEiT v2's
  tokenizer also uses: it keeps the latent scale from drifting, which made plain VQ-VAE training diverge
  here); a cell's token is its nearest code;
- decoder: ``patch_size`` transposed conv with stride ``patch_size`` -> ReLU -> 3x3 conv to the image.

Checkpoint (one ``.safetensors`` file), what a user-provided tokenizer must have:

- metadata ``dinolite_tokenizer``: JSON ``{"kind": "vq", "patch_size": p, "vocab_size": V, "code_dim": d,
  "hidden_dim": h}``;
- tensors (float): ``encoder.0.weight`` (h, 3, 3, 3), ``encoder.0.bias`` (h), ``encoder.2.weight``
  (h, h, p, p), ``encoder.2.bias`` (h), ``encoder.4.weight`` (d, h, 1, 1), ``encoder.4.bias`` (d),
  ``codebook.weight`` (V, d), ``decoder.0.weight`` (d, h, p, p), ``decoder.0.bias`` (h), ``decoder.2.weight``
  (3, h, 3, 3), ``decoder.2.bias`` (3).

The images it tokenizes are the ones the ViT sees (normalised with ``crops.mean`` / ``crops.std``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor, nn

METADATA_KEY = "dinolite_tokenizer"
SHAPE_KEYS = ("patch_size", "vocab_size", "code_dim", "hidden_dim")


class VQTokenizer(nn.Module):
    """``tokenize(images (B,3,H,W)) -> (B, H/p * W/p) int64`` (row-major, as the ViT's patches)."""

    def __init__(self, patch_size: int, vocab_size: int, code_dim: int = 32, hidden_dim: int = 64) -> None:
        super().__init__()
        self.patch_size, self.vocab_size, self.code_dim, self.hidden_dim = patch_size, vocab_size, code_dim, hidden_dim
        p, h = patch_size, hidden_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(3, h, 3, padding=1), nn.ReLU(), nn.Conv2d(h, h, p, stride=p), nn.ReLU(), nn.Conv2d(h, code_dim, 1)
        )
        self.codebook = nn.Embedding(vocab_size, code_dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / vocab_size, 1.0 / vocab_size)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(code_dim, h, p, stride=p), nn.ReLU(), nn.Conv2d(h, 3, 3, padding=1)
        )

    def shape_record(self) -> dict[str, Any]:
        return {"kind": "vq", **{key: getattr(self, key) for key in SHAPE_KEYS}}

    def encode(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, H/p, W/p, code_dim) continuous codes on the unit sphere."""
        return F.normalize(self.encoder(images).permute(0, 2, 3, 1), dim=-1)

    def codes(self) -> Tensor:
        """The codebook on the unit sphere (V, code_dim)."""
        return F.normalize(self.codebook.weight, dim=-1)

    def nearest(self, z: Tensor) -> Tensor:
        """Index of the nearest code of each vector of ``z (..., code_dim)``."""
        flat = z.reshape(-1, self.code_dim).float()
        codes = self.codes().float()
        distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codes.t() + codes.pow(2).sum(1)[None]
        return distances.argmin(dim=1).reshape(z.shape[:-1])

    @torch.no_grad()
    def tokenize(self, images: Tensor) -> Tensor:
        return self.nearest(self.encode(images.float())).flatten(1)

    def forward(self, images: Tensor, beta: float = 0.25) -> tuple[Tensor, Tensor, Tensor]:
        """VQ-VAE training step: ``(loss, reconstruction, tokens)``. ``loss = ||x - x_hat||^2 +
        ||sg[z] - e||^2 + beta ||z - sg[e]||^2`` (means), the straight-through estimator for the encoder."""
        z = self.encode(images)
        tokens = self.nearest(z.detach())
        e = self.codes()[tokens]
        quantised = z + (e - z).detach()
        reconstruction = self.decoder(quantised.permute(0, 3, 1, 2))
        loss = F.mse_loss(reconstruction, images) + F.mse_loss(e, z.detach()) + beta * F.mse_loss(z, e.detach())
        return loss, reconstruction, tokens.flatten(1)


def save_tokenizer(tokenizer: VQTokenizer, path: str | Path) -> Path:
    """Write ``tokenizer`` in the format of the module docstring."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tokenizer.state_dict().items()}
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(tokenizer.shape_record())})
    return path


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _shape_record(path: Path) -> dict[str, Any]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"tokenizer {path}: not a readable .safetensors file ({exc})") from exc
    if METADATA_KEY not in metadata:
        raise ValueError(f"tokenizer {path}: metadata key {METADATA_KEY!r} missing (docs/methods_masked.md, BEiT)")
    try:
        record = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise ValueError(f"tokenizer {path}: metadata {METADATA_KEY!r} is not JSON ({exc})") from exc
    if record.get("kind") != "vq":
        raise ValueError(f"tokenizer {path}: {METADATA_KEY}.kind is {record.get('kind')!r}; only 'vq' is supported")
    for key in SHAPE_KEYS:
        if not isinstance(record.get(key), int) or record[key] < 1:
            raise ValueError(
                f"tokenizer {path}: {METADATA_KEY}.{key} must be a positive integer, got {record.get(key)!r}"
            )
    return record


def load_tokenizer(path: str | Path) -> VQTokenizer:
    """The frozen tokenizer in ``path`` (eval mode, no gradients); ``ValueError`` naming the file and key at fault."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"tokenizer {path}: no such file (train one with dinolite-train-tokenizer)")
    record = _shape_record(path)
    tokenizer = VQTokenizer(**{key: record[key] for key in SHAPE_KEYS})
    tensors = load_file(str(path))
    expected = tokenizer.state_dict()
    for key, value in expected.items():
        if key not in tensors:
            raise ValueError(f"tokenizer {path}: tensor {key!r} missing")
        if tuple(tensors[key].shape) != tuple(value.shape):
            raise ValueError(
                f"tokenizer {path}: tensor {key!r} has shape {tuple(tensors[key].shape)}, expected {tuple(value.shape)}"
            )
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise ValueError(f"tokenizer {path}: unexpected tensors {unexpected}")
    tokenizer.load_state_dict({k: v.float() for k, v in tensors.items()})
    return freeze(tokenizer)


def freeze(tokenizer: VQTokenizer) -> VQTokenizer:
    tokenizer.requires_grad_(False)
    return tokenizer.eval()
