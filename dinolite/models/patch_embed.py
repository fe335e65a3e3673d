"""Image to patch tokens: a ``patch_size`` strided convolution (keys ``proj.{weight,bias}``)."""

from __future__ import annotations

from torch import Tensor, nn


class PatchEmbed(nn.Module):
    """``(B, C, H, W)`` -> ``(B, (H/p) * (W/p), D)``, row-major over the patch grid."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} is not a multiple of patch_size={patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(x.shape)}")
        H, W = x.shape[-2:]
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"image size {H}x{W} is not a multiple of patch_size={self.patch_size}")
        return self.proj(x).flatten(2).transpose(1, 2)
