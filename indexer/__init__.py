"""Indexing: scan an inventory, embed it with an `encoder`, publish generations of FAISS segments + SQLite.

Depends on `encoder`; `search_api` builds on it. The names below load on first use (PEP 562), so
importing a light submodule (`indexer.scan`, `indexer.plan_workers`) does not import torch or FAISS.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_WHERE = {
    "Hit": "indexer.store",
    "InconsistentIndexError": "indexer.store",
    "IndexLockedError": "indexer.generations",
    "IndexNotFoundError": "indexer.store",
    "IndexOptions": "indexer.job",
    "ItemInfo": "indexer.store",
    "JobSummary": "indexer.job",
    "ModelMismatchError": "indexer.job",
    "RollbackError": "indexer.generations",
    "Snapshot": "indexer.store",
    "StorageWriteError": "indexer.segments",
    "current_generation_id": "indexer.store",
    "open_snapshot": "indexer.store",
    "run_index": "indexer.job",
}
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

if TYPE_CHECKING:
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


def __getattr__(name: str):  # noqa: ANN202 - whatever the named attribute is
    if name not in _WHERE:
        raise AttributeError(f"module 'indexer' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value
