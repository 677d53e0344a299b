"""Damaging a real index at rest, the ways disks and people do (issue 10, items 6 and 7).

damage(index_dir, "segment-bytes")      # random bytes over the vectors of the newest segment
damage(index_dir, "segment-truncated")  # the newest segment cut to half its size
damage(index_dir, "catalog")            # random bytes over catalog.sqlite's first page
damage(index_dir, "model-missing")      # the index's model copy deleted
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from indexer import open_snapshot

KINDS = ("segment-bytes", "segment-truncated", "catalog", "model-missing")


def newest_segment(index_dir: Path) -> tuple[Path, np.ndarray]:
    """The current generation's newest segment file, and its stored vectors (storage order)."""
    snap = open_snapshot(index_dir, mmap=False)
    try:
        part = max(snap.parts, key=lambda p: p.segment.info.id)
        return index_dir / part.segment.info.file, part.segment.all_vectors()
    finally:
        snap.close()


def overwrite_vectors(index_dir: Path, seed: int = 0) -> Path:
    """Random bytes over the stored vectors of the newest segment: same size, ids intact."""
    path, xb = newest_segment(index_dir)
    data = bytearray(path.read_bytes())
    at = data.find(xb.tobytes())
    assert at > 0, "the vectors were not found in the file"
    noise = np.random.default_rng(seed).integers(0, 256, xb.nbytes, dtype=np.uint8).tobytes()
    data[at : at + xb.nbytes] = noise
    path.write_bytes(bytes(data))
    return path


def truncate_segment(index_dir: Path) -> Path:
    path, _ = newest_segment(index_dir)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    return path


def overwrite_catalog(index_dir: Path, seed: int = 0) -> Path:
    """Random bytes over the first 4 KiB of catalog.sqlite (its header and schema page)."""
    path = index_dir / "catalog.sqlite"
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    with open(path, "r+b") as f:
        f.write(np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def remove_model_copy(index_dir: Path) -> Path:
    (copy,) = (index_dir / "models").iterdir()
    shutil.rmtree(copy)
    return copy


def damage(index_dir: Path, kind: str) -> Path:
    """Damage `index_dir` (no process may have it open) in the way `kind` names; the file damaged."""
    return {
        "segment-bytes": overwrite_vectors,
        "segment-truncated": truncate_segment,
        "catalog": overwrite_catalog,
        "model-missing": remove_model_copy,
    }[kind](index_dir)
