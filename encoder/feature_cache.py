"""Features extracted at train time, kept so `imgrec index` does not decode and embed the same files again.

    MODEL_DIR/features/<trunk fingerprint>.npz    sha256 (N,), features (N, C) float32, size (N, 2)

Keyed by the sha256 of each file's bytes (what the indexer computes anyway) and by the trunk
fingerprint (weights, input size, pooling, runtime: everything the features depend on, not the
reducer), so a changed file, or a model with other trunks, never gets stale features. The cache is
beside the model, not part of it: not covered by the fingerprint, never copied into an index.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

FOLDER = "features"


def cache_path(model_dir: str | Path, trunk_fingerprint: str) -> Path:
    return Path(model_dir) / FOLDER / f"{trunk_fingerprint}.npz"


class FeatureCache:
    """Read-only look-up of cached features: `get(sha256)` -> (features (C,), width, height) or None."""

    def __init__(self, sha256: np.ndarray, features: np.ndarray, size: np.ndarray):
        self.features = features  # (N, C) float32
        self.size = size  # (N, 2) int: original (width, height)
        self.rows = {str(s): i for i, s in enumerate(sha256)}

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, sha256: str) -> tuple[np.ndarray, int, int] | None:
        i = self.rows.get(sha256)
        if i is None:
            return None
        return self.features[i], int(self.size[i, 0]), int(self.size[i, 1])

    @classmethod
    def open(cls, model_dir: str | Path, trunk_fingerprint: str) -> FeatureCache | None:
        """The cache for these trunks in `model_dir`, or None (absent or unreadable: nothing is reused)."""
        path = cache_path(model_dir, trunk_fingerprint)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["sha256"], np.ascontiguousarray(z["features"], np.float32), z["size"])
        except (OSError, ValueError, KeyError) as e:
            logger.warning("ignoring unreadable feature cache %s: %s", path, e)
            return None


def write_cache(
    model_dir: str | Path, trunk_fingerprint: str, sha256: list[str], features: np.ndarray, size: np.ndarray
) -> Path:
    """Write (replace) the cache for these trunks, atomically; caches of other trunks are removed."""
    path = cache_path(model_dir, trunk_fingerprint)
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob("*.npz"):
        if old != path:
            old.unlink()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
    np.savez(tmp, sha256=np.asarray(sha256, dtype="U64"), features=np.asarray(features, np.float32),
             size=np.asarray(size, np.int32).reshape(-1, 2))  # fmt: skip
    os.replace(tmp, path)
    return path
