"""Segment files: building, checked writing, deletion sets and id checksums.

A segment is an immutable FAISS file, `segments/SSSSSS.faiss`: an `IndexIDMap2` whose ids are
item ids, stored in ascending id order, over a flat, ivf or hnsw index. A generation is a list of
segments, each with a deletion set (the sorted item ids masked in it), kept in SQLite.

    index = build_segment(xb, ids, metric, "flat")     # sorted by id, prepared for the metric
    written = write_checked(index, path)                # temp, fsync, rename, fsync dir -> size, sha256

Every byte is checked on the way to disk (`faiss_index.write_index_atomic`): FAISS writes through
`faiss.PyCallbackIOWriter` into a Python file object, so a failed write (ENOSPC, EIO) raises
instead of being printed by FAISS and ignored; the sha256 is computed from the same bytes; flush,
fsync and close are checked; only then is the temp file renamed into place and the directory
fsynced. A failure removes the temp file and raises `StorageWriteError`.
"""

from __future__ import annotations

import errno
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from indexer import faiss_index

logger = logging.getLogger(__name__)

SEGMENTS_DIR = "segments"


class StorageWriteError(OSError):
    """Writing the index to disk failed (disk full, I/O error); nothing was published.

    `errno` says why (ENOSPC: disk full); `strerror` is the one line to show.
    """


@dataclass(frozen=True)
class WrittenFile:
    byte_size: int
    sha256: str


def segment_file(segment_id: int) -> str:
    """The segment's path relative to the index dir."""
    return f"{SEGMENTS_DIR}/{segment_id:06d}.faiss"


def build_segment(xb: np.ndarray, ids: np.ndarray, metric: str, index_type: str = "flat") -> faiss.Index:
    """An `IndexIDMap2` of `index_type` holding `xb` under `ids`, in ascending id order.

    Approximate types are trained on `xb` itself.
    """
    ids = np.asarray(ids, np.int64)
    order = np.argsort(ids, kind="stable")
    xb = faiss_index.sanitize(xb)[order]
    index = faiss_index.build_index(xb.shape[1], metric, index_type, xt=xb if index_type != "flat" else None)
    faiss_index.add(index, ids[order], xb, metric)
    return index


def write_checked(index: faiss.Index, path: str | Path) -> WrittenFile:
    """Write `index` to `path` so that it is complete and durable, or raise `StorageWriteError`."""
    path = Path(path)
    try:
        size, sha256 = faiss_index.write_index_atomic(index, path)
    except OSError as e:
        raise _storage_error(e, path) from e
    except RuntimeError as e:  # faiss's own failures
        raise StorageWriteError(errno.EIO, f"cannot write {path.parent.name}/{path.name}: {e}") from e
    return WrittenFile(size, sha256)


def _storage_error(e: OSError, path: Path) -> StorageWriteError:
    code = e.errno or errno.EIO
    what = "disk full" if code in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
    return StorageWriteError(code, f"{what} while writing {path.parent.name}/{path.name}")


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (the check `imgrec verify` runs against the segment row)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# --- deletion sets -------------------------------------------------------------------------------


def encode_ids(ids: np.ndarray) -> bytes:
    """A deletion set as stored: sorted unique little-endian int64."""
    return np.unique(np.asarray(ids, np.int64)).astype("<i8").tobytes()


def decode_ids(blob: bytes | None) -> np.ndarray:
    """The sorted int64 ids of a stored deletion set (read-only)."""
    return np.frombuffer(blob or b"", dtype="<i8").astype(np.int64, copy=False)


def union_ids(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sorted union of two id arrays."""
    if not len(b):
        return a
    return np.union1d(a, np.asarray(b, np.int64))


# --- checksums -----------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def mix_ids(ids: np.ndarray) -> np.ndarray:
    """splitmix64 of each id (uint64): the terms of `ids_checksum`."""
    z = np.asarray(ids, np.int64).view(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def ids_sum(ids: np.ndarray) -> int:
    """Sum of `mix_ids(ids)` modulo 2**64 (an order-independent digest of a set of ids)."""
    ids = np.asarray(ids, np.int64)
    return int(mix_ids(ids).sum(dtype=np.uint64)) if len(ids) else 0


def checksum_hex(total: int) -> str:
    return f"{total & _MASK64:016x}"


def ids_checksum(ids: np.ndarray) -> str:
    """The generation's `ids_checksum` of a set of live ids.

    A sum of hashes, so the writer updates it from the parent's (plus added, minus removed ids)
    and a reader recomputes it from segment sums minus deletion sets, both without sorting.
    """
    return checksum_hex(ids_sum(ids))


def add_checksum(checksum: str | None, added: np.ndarray, removed: np.ndarray) -> str | None:
    """`checksum` of a set, updated for ids added to and removed from it (None stays unknown)."""
    if checksum is None:
        return None
    return checksum_hex(int(checksum, 16) + ids_sum(added) - ids_sum(removed))


# --- catalog records -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentInfo:
    """A `segments` row, as readers and the compaction policy see it."""

    id: int
    file: str
    item_count: int
    dim: int
    metric: str
    index_type: str
    byte_size: int
    sha256: str
    ids_sha256: str

    @classmethod
    def from_row(cls, s) -> SegmentInfo:  # noqa: ANN001 - a Segment row (ORM or Core)
        return cls(
            s.id, s.file, s.item_count, s.dim, s.metric, s.index_type, s.byte_size, s.sha256, s.ids_sha256
        )
