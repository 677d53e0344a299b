"""Reading the ingest ledger: what happened to each file, for `imgrec status`."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from indexer.db import LedgerEntry, open_database
from indexer.generations import current_generation
from indexer.store import IndexNotFoundError, has_catalog


def ledger_report(index_dir: str | Path, limit: int = 50) -> dict:
    """Counts per state, the current generation, and up to `limit` skipped or failed files."""
    if not has_catalog(index_dir):
        raise IndexNotFoundError(f"no index in {index_dir}")
    engine = open_database(index_dir, migrate=False)
    try:
        with Session(engine) as session:
            states = dict(
                session.execute(select(LedgerEntry.state, func.count()).group_by(LedgerEntry.state)).all()
            )
            problems = session.scalars(
                select(LedgerEntry)
                .where(LedgerEntry.state.in_(("skipped", "failed")))
                .order_by(LedgerEntry.state, LedgerEntry.path)
                .limit(limit)
            ).all()
            gen = current_generation(session)
            return {
                "generation": None
                if gen is None
                else {
                    "id": gen.id,
                    "created_at": gen.created_at.isoformat(timespec="seconds"),
                    "item_count": gen.item_count,
                    "metric": gen.metric,
                    "index_type": gen.index_type,
                    "model_fingerprint": gen.model_fingerprint,
                },
                "states": states,
                "problems": [
                    {
                        "path": e.path,
                        "state": e.state,
                        "reason": e.reason,
                        "at": e.updated_at.isoformat(timespec="seconds"),
                    }
                    for e in problems
                ],
            }
    finally:
        engine.dispose()
