"""Settled folders: what lets a no-change run skip reading the ledger.

A folder is *settled* when a run has reconciled all of its own files (none left `failed`). The
`folders` table keeps, per settled folder, the digest of its files' names and stats as that run
scanned them, and how many of them are live items or skipped. A later scan whose digest matches
needs nothing from the ledger for that folder (`plan.plan_folders`).

The writer forgets a folder before it changes any of its files (`forget`, before the first
publish), settles the folders it compared once the run's last publish committed (`settle`), and
rollback forgets them all (it rewrites ledger rows). A run killed in between leaves those folders
forgotten: the next run compares them file by file.

Light on purpose (sqlite3 only): planning workers use it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator

from indexer.plan import StoredFolder

ROW_COLUMNS = "path, state, reason, size, mtime_ns, CASE WHEN state = 'embedded' THEN item_id END"
FETCH_ROWS = 8192


def _direct(prefix: str) -> tuple[str, dict]:
    """WHERE clause and parameters selecting the ledger paths of the files directly in `prefix`."""
    if not prefix:
        return "instr(path, '/') = 0", {}
    hi = prefix[:-1] + chr(ord(prefix[-1]) + 1)  # "a/b/" -> "a/b0": just past everything under a/b/
    return "path >= :lo AND path < :hi AND instr(substr(path, :start), '/') = 0", {
        "lo": prefix,
        "hi": hi,
        "start": len(prefix) + 1,
    }


def rows_in(db: sqlite3.Connection, prefix: str) -> Iterator[tuple]:
    """The ledger rows (laid out as `plan.LedgerRow`) of the files directly in folder `prefix`."""
    where, params = _direct(prefix)
    cursor = db.execute(f"SELECT {ROW_COLUMNS} FROM ledger WHERE {where} ORDER BY path", params)
    while rows := cursor.fetchmany(FETCH_ROWS):
        yield from rows


def stored_folders(db: sqlite3.Connection, lo: str | None, hi: str | None) -> dict[str, StoredFolder]:
    """The settled folders whose path is in [lo, hi) (None: unbounded)."""
    cursor = db.execute(
        "SELECT path, digest, live, skipped FROM folders "
        "WHERE (:lo IS NULL OR path >= :lo) AND (:hi IS NULL OR path < :hi)",
        {"lo": lo, "hi": hi},
    )
    return {path: StoredFolder(digest, live, skipped) for path, digest, live, skipped in cursor}


def forget(db: sqlite3.Connection, prefixes: Iterable[str]) -> None:
    """Unsettle folders (call in the writer's transaction)."""
    db.executemany("DELETE FROM folders WHERE path = ?", [(p,) for p in prefixes])


def forget_all(db: sqlite3.Connection) -> None:
    db.execute("DELETE FROM folders")


def settle(db: sqlite3.Connection, digests: dict[str, str]) -> int:
    """Record folders whose files the run reconciled, with their counts from the ledger; a folder
    with a `failed` file stays unsettled (it is retried every run). Returns how many settled."""
    settled = 0
    for prefix, digest in digests.items():
        where, params = _direct(prefix)
        counts = dict(
            db.execute(f"SELECT state, count(*) FROM ledger WHERE {where} GROUP BY state", params).fetchall()
        )
        if counts.get("failed"):
            db.execute("DELETE FROM folders WHERE path = ?", (prefix,))
            continue
        db.execute(
            "INSERT INTO folders (path, digest, live, skipped) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (path) DO UPDATE SET digest = excluded.digest, live = excluded.live, "
            "skipped = excluded.skipped",
            (prefix, digest, counts.get("embedded", 0), counts.get("skipped", 0)),
        )
        settled += 1
    return settled
