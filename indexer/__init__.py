"""Indexing: scan an inventory, embed it with an `encoder`, publish generations of FAISS segments + SQLite.

Depends on `encoder`; `search_api` builds on it.
"""

from indexer.generations import IndexLockedError, RollbackError
from indexer.job import IndexOptions, JobSummary, ModelMismatchError, run_index
from indexer.segments import StorageWriteError
from indexer.store import (
    Hit,
    InconsistentIndexError,
    IndexNotFoundError,
    ItemInfo,
    Snapshot,
    current_generation_id,
    open_snapshot,
)

__all__ = [
    "Hit",
    "InconsistentIndexError",
    "IndexLockedError",
    "IndexNotFoundError",
    "IndexOptions",
    "ItemInfo",
    "JobSummary",
    "ModelMismatchError",
    "RollbackError",
    "Snapshot",
    "StorageWriteError",
    "current_generation_id",
    "open_snapshot",
    "run_index",
]
