"""Reading the ingest ledger: what happened to each file, for `imgrec status` and for planning."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from indexer.bulk import chunk_size, chunks
from indexer.db import Generation, Item, LedgerEntry, open_database, read_snapshot
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
        "catalog": (g.summary or {}).get("catalog"),  # the product catalog it was built with, its problems
    }


# --- the ledger for planning (indexer.plan) -------------------------------------------------------

# Each row with the live item at its path, plus live items the ledger lacks. A live item behind a
# row that is not `embedded` shows as `failed`, so the plan re-examines its file.
LEDGER_JOINED_WITH_ITEMS = """
SELECT path, state, reason, size, mtime_ns, item_id FROM (
    SELECT l.path AS path, CASE WHEN i.id IS NOT NULL AND l.state != 'embedded' THEN 'failed'
           ELSE l.state END AS state, l.reason AS reason, l.size AS size, l.mtime_ns AS mtime_ns,
           i.id AS item_id
    FROM ledger l LEFT JOIN items i ON i.path = l.path AND i.deleted_generation IS NULL
    UNION ALL
    SELECT i.path, 'failed', NULL, NULL, NULL, i.id FROM items i
    WHERE i.deleted_generation IS NULL AND NOT EXISTS (SELECT 1 FROM ledger l WHERE l.path = i.path)
) ORDER BY path
"""
FETCH_ROWS = 8192


def ledger_joined_with_items(engine: Engine) -> Iterator[tuple]:
    """The whole ledger in path order, joined with the live items (the thorough plan's input), as
    tuples laid out like `plan.LedgerRow`, streamed from one SELECT through the DBAPI cursor."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(LEDGER_JOINED_WITH_ITEMS)
        while rows := cursor.fetchmany(FETCH_ROWS):
            yield from rows
        cursor.close()
    finally:
        raw.close()


def item_sha256(engine: Engine, ids: list[int]) -> dict[int, str]:
    """item id -> the catalog's sha256 of its file (chunked: no statement with one parameter per id)."""
    out: dict[int, str] = {}
    with Session(engine) as session:
        for chunk in chunks(ids, chunk_size(session)):
            out.update(
                (r.id, r.sha256)
                for r in session.execute(select(Item.id, Item.sha256).where(Item.id.in_(chunk)))
            )
    return out
