"""Class tensors sized by the labels present, never by the largest label value.

A label is whatever integer a shard's ``cls`` holds. Sizing vote tables or linear heads by
``max(label) + 1`` lets one sample labelled 99999999 allocate gigabytes (a (batch, 10^8) vote table in
kNN, a 10^8-output head in the linear probe). :class:`ClassIndex` maps the distinct labels of the data to
``0..C-1`` in increasing order, so every class tensor has ``C`` = the number of distinct labels; the
mapping is monotone, so class order, ties and few-shot subsets are the same as with the original ids,
and results are reported in the original ids.
"""

from __future__ import annotations

import torch


class ClassIndex:
    """The sorted distinct labels of some label tensors, and positions ``0..C-1`` for them."""

    def __init__(self, *labels: torch.Tensor) -> None:
        present = [t.detach().long().flatten().cpu() for t in labels if t.numel()]
        self.classes = torch.unique(torch.cat(present)) if present else torch.zeros(0, dtype=torch.long)

    @property
    def num_classes(self) -> int:
        return int(self.classes.numel())

    @property
    def is_identity(self) -> bool:
        """The labels are exactly ``0..C-1`` (positions equal the labels)."""
        return bool(torch.equal(self.classes, torch.arange(self.num_classes)))

    def positions(self, labels: torch.Tensor, what: str, of: str = "the data") -> torch.Tensor:
        """``labels`` as positions in :attr:`classes` (same device); a label not among them is an error
        (``of`` says where the classes came from)."""
        flat = labels.long()
        if flat.numel() == 0:
            return flat
        if self.num_classes == 0:
            raise ValueError(f"{what}: label {int(flat.flatten()[0])} but {of} has no classes")
        classes = self.classes.to(flat.device)
        found = torch.searchsorted(classes, flat).clamp_(max=self.num_classes - 1)
        unknown = classes[found] != flat
        if bool(unknown.any()):
            raise ValueError(
                f"{what}: label {int(flat[unknown][0])} is not among the {self.num_classes} classes of {of} "
                f"({self.describe()})"
            )
        return found

    def describe(self, shown: int = 5) -> str:
        """``labels 0..9`` or ``labels 0, 3, 99999999`` (the first few)."""
        if self.num_classes == 0:
            return "no labels"
        if self.is_identity:
            return f"labels 0..{self.num_classes - 1}"
        values = [str(v) for v in self.classes[:shown].tolist()]
        return "labels " + ", ".join(values) + (", ..." if self.num_classes > shown else "")
