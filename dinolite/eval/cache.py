"""On-disk cache of extracted features, keyed by everything that determines them.

The key is a SHA-256 over (backbone fingerprint, data source, transform description, feature kind), so a
changed backbone file, data set or crop size never reads stale features. Entries are safetensors files
(no pickle) written atomically: temp file in the same directory, then rename.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

from safetensors.torch import load_file, save_file

from dinolite.eval.features import ExtractedFeatures
from dinolite.io import write_atomic


def cache_key(**parts: Any) -> str:
    """Stable hex key of JSON-serialisable parts (order of keyword arguments does not matter)."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class FeatureCache:
    """Directory of ``<name>-<key>.safetensors`` files holding features, labels and indices."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def path(self, name: str, key: str) -> Path:
        return self.directory / f"{name}-{key}.safetensors"

    def load(self, name: str, key: str) -> Optional[ExtractedFeatures]:
        path = self.path(name, key)
        if not path.is_file():
            return None
        tensors = load_file(str(path))
        return ExtractedFeatures(tensors["features"], tensors["labels"], tensors["indices"])

    def save(self, name: str, key: str, extracted: ExtractedFeatures) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(name, key)
        tensors = {
            "features": extracted.features.contiguous(),
            "labels": extracted.labels.contiguous(),
            "indices": extracted.indices.contiguous(),
        }
        return write_atomic(path, lambda tmp: save_file(tensors, str(tmp)))
