"""Crash-safe generations: publishing, pruning, rollback, orphan clean-up and the writer lock.

INDEX_DIR/
    catalog.sqlite          items, ledger, generations, index_state (WAL, synchronous=FULL)
    generations/NNNNNN.faiss  one immutable FAISS file per generation
    models/<fingerprint>/   the model that built the index (queries use it)
    indexer.lock            held by the one indexer run allowed at a time

A generation becomes visible only when the SQLite transaction that points `index_state` at it
commits; its FAISS file was written to a temporary name, fsynced and renamed into place before.
A run killed at any moment leaves the previous generation current and at worst an orphan file,
which the next run deletes.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from indexer.db import DATABASE_FILE, Generation, GenerationChange, IndexState, Item, LedgerEntry, utcnow
from indexer.store import GenerationInfo

logger = logging.getLogger(__name__)

GENERATIONS_DIR = "generations"
LOCK_FILE = "indexer.lock"


class IndexLockedError(RuntimeError):
    """Another indexer run holds the index."""


class RollbackError(RuntimeError):
    """There is no earlier generation to go back to."""


@contextmanager
def index_lock(index_dir: str | Path, wait: float = 0.0) -> Iterator[None]:
    """Hold the index's writer lock; wait up to `wait` seconds for it, then refuse.

    :raise IndexLockedError: another run holds it.
    """
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(index_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                    raise IndexLockedError(
                        f"{index_dir} is being updated by {holder}; wait for it to finish (or pass --wait)"
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"indexer pid {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def generation_path(index_dir: str | Path, generation_id: int) -> Path:
    return Path(index_dir) / GENERATIONS_DIR / f"{generation_id:06d}.faiss"


def current_generation(session: Session) -> Generation | None:
    state = session.get(IndexState, 1)
    if state is None or state.current_generation_id is None:
        return None
    return session.get(Generation, state.current_generation_id)


def make_current(session: Session, generation: Generation) -> None:
    """Point readers at `generation` (takes effect when the caller's transaction commits)."""
    previous = current_generation(session)
    if previous is not None and previous.id != generation.id:
        previous.status = "kept"
    generation.status = "current"
    state = session.get(IndexState, 1)
    if state is None:
        session.add(IndexState(id=1, current_generation_id=generation.id))
    else:
        state.current_generation_id = generation.id
        state.updated_at = utcnow()


def cleanup_orphans(index_dir: str | Path, engine: Engine) -> list[str]:
    """Delete temporary files and FAISS files no current or kept generation points to.

    Call with the writer lock held: a file being written by a live run looks like an orphan.
    """
    index_dir = Path(index_dir)
    with Session(engine) as session:
        live = set(
            session.scalars(select(Generation.faiss_file).where(Generation.status.in_(("current", "kept"))))
        )
    gen_dir = index_dir / GENERATIONS_DIR
    removed = []
    for path in sorted(gen_dir.iterdir()) if gen_dir.is_dir() else []:
        rel = f"{GENERATIONS_DIR}/{path.name}"
        if rel not in live:
            path.unlink(missing_ok=True)
            removed.append(rel)
    for path in (index_dir / "models").glob("*.tmp-*"):  # a model copy cut short
        shutil.rmtree(path, ignore_errors=True)
        removed.append(f"models/{path.name}")
    for path in index_dir.glob(f"{DATABASE_FILE}.tmp-*"):  # a catalog creation cut short
        path.unlink(missing_ok=True)
        removed.append(path.name)
    if removed:
        logger.info("removed %d orphan file(s): %s", len(removed), ", ".join(removed))
    return removed


def prune(index_dir: str | Path, engine: Engine, keep: int) -> list[int]:
    """Keep the current generation and the `keep - 1` newest others; delete older files."""
    with Session(engine) as session, session.begin():
        kept = session.scalars(
            select(Generation).where(Generation.status == "kept").order_by(Generation.id.desc())
        ).all()
        doomed = kept[max(0, keep - 1) :]
        for g in doomed:
            g.status = "pruned"
        ids = [g.id for g in doomed]
    for gid in ids:  # after the commit: a crash here leaves orphans, cleaned next run
        generation_path(index_dir, gid).unlink(missing_ok=True)
    return ids


def rollback(index_dir: str | Path, engine: Engine) -> GenerationInfo:
    """Make the previous kept generation current again, undoing the current one's item changes.

    :raise RollbackError: no earlier generation is kept.
    """
    with Session(engine) as session, session.begin():
        cur = current_generation(session)
        if cur is None:
            raise RollbackError(f"{index_dir} has no published generation")
        target = session.scalars(
            select(Generation)
            .where(Generation.status == "kept", Generation.id < cur.id)
            .order_by(Generation.id.desc())
            .limit(1)
        ).first()
        if target is None:
            raise RollbackError(f"generation {cur.id} is the oldest kept; there is nothing to roll back to")
        if not (Path(index_dir) / target.faiss_file).is_file():
            raise RollbackError(f"the file of generation {target.id} ({target.faiss_file}) is missing")
        _undo_changes(session, cur, target)
        make_current(session, target)  # marks `cur` kept ...
        cur.status = "rolled_back"  # ... but it is undone: never a rollback target, its file an orphan
        session.flush()
        return GenerationInfo.from_row(target)


def _undo_changes(session: Session, undone: Generation, target: Generation) -> None:
    """Restore items and ledger to what generations newer than `target` changed, newest first."""
    changes = session.scalars(
        select(GenerationChange)
        .join(Generation, Generation.id == GenerationChange.generation_id)
        .where(GenerationChange.generation_id > target.id, Generation.status.in_(("current", "kept")))
        .order_by(GenerationChange.id.desc())
    ).all()
    for ch in changes:
        item = session.get(Item, ch.item_id)
        ledger = session.scalars(select(LedgerEntry).where(LedgerEntry.path == item.path)).first()
        for key, value in (ch.previous or {}).items():  # updated, or added back after a delete
            setattr(item, key, value)
        if ch.change == "added":
            item.deleted_generation = undone.id
            if ledger is not None:
                session.delete(ledger)  # unknown again: the next run re-examines the file
            continue
        if ch.change == "deleted":
            item.deleted_generation = None
        if ledger is not None:  # as the target has it; the next run compares with the file
            ledger.state, ledger.reason, ledger.item_id = "embedded", "restored by rollback", item.id
            ledger.size, ledger.mtime_ns = item.size, item.mtime_ns
