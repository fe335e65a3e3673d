"""PIRL's two views of an image (Misra & van der Maaten 2020, Sec. 3.3 and 4.1) and their collate.

* the original view ``v_I``: a crop made by one :class:`~dinolite.data.augment.CropRecipe` (the usual
  random resized crop, flip and colour augmentation);
* the jigsaw view ``v_I^t``: a square crop of ``grid x cell`` pixels (another recipe) cut into a ``grid x
  grid`` array of cells (3 x 3 in the paper), one ``tile x tile`` tile taken at a random position inside each
  cell (the random gap between tiles keeps the network from matching tile borders), the tiles put in a random
  order. The release (facebookresearch/vissl, ``ImgPilToPatchesAndImage``) crops 255 px, cells of 85 px and
  tiles of 64 px, and colour-augments every tile on its own; here the colour augmentation is the jigsaw
  crop's, shared by its tiles (docs/methods_joint_embedding.md, PIRL).

Every sample also carries ``image_id``: a 63-bit hash of the decoded image's pixels, the key under which the
memory bank keeps the image's embedding (the loader streams images without a dataset index; the same pixels
give the same key on every rank and after a resume). Identical images share a key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from dinolite.data.augment import IMAGENET_MEAN, IMAGENET_STD, CropRecipe, augment_crop, to_uint8_chw


def image_key(image: torch.Tensor) -> int:
    """A 63-bit key of a uint8 CHW image's size and pixels (blake2b), >= 0."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(str(tuple(image.shape)).encode())
    digest.update(image.contiguous().numpy().tobytes())
    return int.from_bytes(digest.digest(), "little") & (2**63 - 1)


def cut_tiles(crop: torch.Tensor, grid: int, tile: int, generator: torch.Generator | None) -> torch.Tensor:
    """``(grid * grid, C, tile, tile)`` tiles of a ``(C, grid * cell, grid * cell)`` crop, row-major, each at a
    random offset inside its cell (two draws per cell: row, column)."""
    cell = crop.shape[-1] // grid
    tiles = []
    for row in range(grid):
        for col in range(grid):
            dy, dx = (int(v) for v in torch.randint(0, cell - tile + 1, (2,), generator=generator))
            top, left = row * cell + dy, col * cell + dx
            tiles.append(crop[:, top : top + tile, left : left + tile])
    return torch.stack(tiles)


class JigsawViews:
    """Image -> ``{"image": (3, S, S), "tiles": (grid^2, 3, t, t) in permuted order, "permutation": (grid^2,)
    (tile ``i`` of the output is cell ``permutation[i]``, row-major), "image_id": int}``, normalised.

    Args:
        image_view: the original view's recipe.
        jigsaw_view: the jigsaw crop's recipe; its ``size`` must be ``grid x cell`` with ``cell >= tile``.
        grid: tiles per side (3 in the paper).
        tile: the tile side in pixels.
    """

    def __init__(
        self,
        image_view: CropRecipe,
        jigsaw_view: CropRecipe,
        grid: int = 3,
        tile: int = 64,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if grid < 1 or tile < 1:
            raise ValueError(f"grid and tile must be >= 1, got {grid}, {tile}")
        if jigsaw_view.size % grid or jigsaw_view.size // grid < tile:
            raise ValueError(
                f"the jigsaw crop ({jigsaw_view.size} px) must split into {grid} x {grid} cells of at least the "
                f"tile's {tile} px"
            )
        self.image_view, self.jigsaw_view, self.grid, self.tile = image_view, jigsaw_view, int(grid), int(tile)
        self._mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, img: Any, generator: torch.Generator | None = None) -> dict[str, Any]:
        image = to_uint8_chw(img)
        view = (augment_crop(image, self.image_view, generator) - self._mean) / self._std
        crop = (augment_crop(image, self.jigsaw_view, generator) - self._mean) / self._std
        tiles = cut_tiles(crop, self.grid, self.tile, generator)
        permutation = torch.randperm(self.grid * self.grid, generator=generator)
        return {"image": view, "tiles": tiles[permutation], "permutation": permutation, "image_id": image_key(image)}


def collate_jigsaw(samples: Sequence[Mapping[str, Any]], generator: Any = None) -> dict[str, Any]:
    """``collated_images`` (B, 3, S, S), ``collated_tiles`` (B, T, 3, t, t), ``permutations`` (B, T) and
    ``image_ids`` (B,) int64. ``generator`` is the loader's interface, unused (no batch-level draws)."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    return {
        "collated_images": torch.stack([s["image"] for s in samples]),
        "collated_tiles": torch.stack([s["tiles"] for s in samples]),
        "permutations": torch.stack([s["permutation"] for s in samples]),
        "image_ids": torch.tensor([s["image_id"] for s in samples], dtype=torch.int64),
    }
