"""Reading the ingest ledger: what happened to each file, for `imgrec status`."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from indexer.db import Generation, LedgerEntry, open_database, read_snapshot
from indexer.generations import current_generation
from indexer.store import IndexNotFoundError, has_catalog


def ledger_report(index_dir: str | Path, limit: int = 50) -> dict:
    """Counts per state, the generations on disk, and up to `limit` skipped or failed files.

    :raise IndexNotFoundError: the folder has no catalog.
    """
    if not has_catalog(index_dir):
        raise IndexNotFoundError(f"no index in {index_dir}")
    engine = open_database(index_dir, migrate=False)
    try:
        with read_snapshot(engine) as session:  # one consistent view
            states = dict(
                session.execute(select(LedgerEntry.state, func.count()).group_by(LedgerEntry.state)).all()
            )
            where = LedgerEntry.state.in_(("skipped", "failed"))
            n_problems = session.scalar(select(func.count()).select_from(LedgerEntry).where(where))
            problems = session.scalars(
                select(LedgerEntry).where(where).order_by(LedgerEntry.state, LedgerEntry.path).limit(limit)
            ).all()
            gen = current_generation(session)
            kept = session.scalars(
                select(Generation)
                .where(Generation.status.in_(("current", "kept")))
                .order_by(Generation.id.desc())
            ).all()
            return {
                "generation": None if gen is None else _generation(gen),
                "generations": [_generation(g) for g in kept],
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
                "problems_not_listed": n_problems - len(problems),
            }
    finally:
        engine.dispose()


def _generation(g: Generation) -> dict:
    return {
        "id": g.id,
        "status": g.status,
        "created_at": g.created_at.isoformat(timespec="seconds"),
        "item_count": g.item_count,
        "metric": g.metric,
        "index_type": g.index_type,
        "model_fingerprint": g.model_fingerprint,
    }
