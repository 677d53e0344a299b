"""Crash-safe generations: making one current, pruning, rollback, orphan clean-up, the writer lock.

INDEX_DIR/
    catalog.sqlite          items, ledger, segments, generations (+ their segments), index_state
    segments/SSSSSS.faiss   immutable segment files (generations/NNNNNN.faiss: from schema 0001)
    models/<fingerprint>/   the model that built the index (queries use it)
    indexer.lock            held by the one indexer run allowed at a time

A generation becomes visible only when the SQLite transaction that points `index_state` at it
commits; its new segment file was written to a temporary name, fsynced and renamed into place
before. A run killed at any moment leaves the previous generation current and at worst an orphan
file, which the next run deletes.

Generation statuses: `current`; `kept` (a rollback target, its segments stay on disk);
`superseded` (replaced within the run that made it: an earlier checkpoint, or the input of a
merge; never a rollback target, but its item changes are undone with the run's); `pruned`
(beyond keep-N); `rolled_back`. A segment file is deleted once no current or kept generation
lists it.
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

import numpy as np
from sqlalchemy import delete, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from indexer.bulk import chunk_size, chunks
from indexer.db import (
    DATABASE_FILE,
    Folder,
    Generation,
    GenerationChange,
    GenerationSegment,
    IndexState,
    Item,
    LedgerEntry,
    ProductChange,
    Segment,
    utcnow,
)
from indexer.segment_search import OpenSegment, SegmentFileError, check_segment_file
from indexer.segments import SEGMENTS_DIR
from indexer.store import GenerationInfo, generation_segments

logger = logging.getLogger(__name__)

GENERATIONS_DIR = "generations"  # schema 0001's one file per generation; upgraded, then pruned away
LOCK_FILE = "indexer.lock"
LIVE = ("current", "kept")  # generations whose segments stay on disk
UNDONE_WITH_THE_RUN = ("current", "kept", "superseded")  # whose changes a rollback may undo


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
        try:  # who holds it, for the message of a refused run (not needed for the lock itself)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"indexer pid {os.getpid()}".encode(), 0)
        except OSError as e:  # e.g. a full disk: the lock holds anyway
            logger.warning("cannot record the lock holder in %s: %s", LOCK_FILE, e)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def current_generation(session: Session) -> Generation | None:
    state = session.get(IndexState, 1)
    if state is None or state.current_generation_id is None:
        return None
    return session.get(Generation, state.current_generation_id)


def make_current(session: Session, generation: Generation, supersede: bool = False) -> None:
    """Point readers at `generation` (takes effect when the caller's transaction commits).

    The previous current generation becomes `kept` (a rollback target), or with `supersede`
    `superseded` (a checkpoint of the same run, or the input of a merge).
    """
    previous = current_generation(session)
    if previous is not None and previous.id != generation.id:
        previous.status = "superseded" if supersede else "kept"
    generation.status = "current"
    state = session.get(IndexState, 1)
    if state is None:
        session.add(IndexState(id=1, current_generation_id=generation.id))
    else:
        state.current_generation_id = generation.id
        state.updated_at = utcnow()


def live_segment_files(session: Session) -> set[str]:
    """Files of the segments some current or kept generation lists."""
    return set(
        session.scalars(
            select(Segment.file)
            .join(GenerationSegment, GenerationSegment.segment_id == Segment.id)
            .join(Generation, Generation.id == GenerationSegment.generation_id)
            .where(Generation.status.in_(LIVE))
            .distinct()
        )
    )


def cleanup_orphans(index_dir: str | Path, engine: Engine) -> list[str]:
    """Delete temporary files and segment files no current or kept generation lists.

    Call with the writer lock held: a file being written by a live run looks like an orphan.
    """
    index_dir = Path(index_dir)
    with Session(engine) as session:
        live = live_segment_files(session)
    removed = _remove_unlisted(index_dir, live)
    for path in (index_dir / "models").glob("*.tmp-*"):  # a model copy cut short
        shutil.rmtree(path, ignore_errors=True)
        removed.append(f"models/{path.name}")
    for path in index_dir.glob(f"{DATABASE_FILE}.tmp-*"):  # a catalog creation cut short
        path.unlink(missing_ok=True)
        removed.append(path.name)
    if removed:
        logger.info("removed %d orphan file(s): %s", len(removed), ", ".join(removed))
    return removed


def _remove_unlisted(index_dir: Path, live: set[str]) -> list[str]:
    """Delete the files of segments/ (and 0001's generations/) that are not in `live`."""
    removed = []
    for folder in (SEGMENTS_DIR, GENERATIONS_DIR):
        d = index_dir / folder
        for path in sorted(d.iterdir()) if d.is_dir() else []:
            rel = f"{folder}/{path.name}"
            if rel not in live:
                path.unlink(missing_ok=True)
                removed.append(rel)
    return removed


def prune(index_dir: str | Path, engine: Engine, keep: int) -> list[int]:
    """Keep the current generation and the `keep - 1` newest others; delete unlisted segment files.

    Superseded generations (checkpoints, merge inputs) go at once. Files are deleted after the
    commit: a crash in between leaves orphans, cleaned by the next run. A reader still mapping a
    deleted file keeps its copy (the inode lives until it is unmapped).
    """
    with Session(engine) as session, session.begin():
        kept = session.scalars(
            select(Generation).where(Generation.status == "kept").order_by(Generation.id.desc())
        ).all()
        doomed = kept[max(0, keep - 1) :]
        for g in doomed:
            g.status = "pruned"
        ids = [g.id for g in doomed]
        session.execute(
            delete(GenerationSegment).where(
                GenerationSegment.generation_id.in_(
                    select(Generation.id).where(Generation.status.not_in(LIVE))
                )
            )
        )
    with Session(engine) as session:
        live = live_segment_files(session)
    removed = _remove_unlisted(Path(index_dir), live)
    if removed:
        logger.info("pruned %d segment file(s)", len(removed))
    return ids


def rollback(index_dir: str | Path, engine: Engine, to: int | None = None) -> GenerationInfo:
    """Make the previous kept generation (or kept generation `to`) current again, undoing the item
    changes of every generation after it; those become `rolled_back`.

    The target is checked first: its segment files (size and sha256) and its model copy.

    :raise RollbackError: no earlier generation is kept (or `to` is not one).
    :raise DamagedGenerationError: a segment file of the target is missing or damaged.
    :raise ModelCopyMissingError: the target's model copy is missing (it could not be served).
    """
    from indexer.damage import ModelCopyMissingError
    from indexer.store import DamagedGenerationError
    from indexer.verify import model_problem

    with Session(engine) as session, session.begin():
        cur = current_generation(session)
        if cur is None:
            raise RollbackError(f"{index_dir} has no published generation")
        query = select(Generation).where(Generation.status == "kept", Generation.id < cur.id)
        if to is not None:
            query = query.where(Generation.id == to)
        target = session.scalars(query.order_by(Generation.id.desc()).limit(1)).first()
        if target is None:
            if to is not None:
                raise RollbackError(f"generation {to} is not a kept generation older than {cur.id}")
            raise RollbackError(f"generation {cur.id} is the oldest kept; there is nothing to roll back to")
        listed = generation_segments(session, target.id)
        for info, _ in listed:
            try:
                check_segment_file(index_dir, info, checksum=True)
            except FileNotFoundError:
                raise DamagedGenerationError(
                    f"segment {info.file} of generation {target.id} is missing", index_dir, info.file
                ) from None
            except SegmentFileError as e:
                raise DamagedGenerationError(f"generation {target.id}: {e.problem}", index_dir, e.file) from e
        if problem := model_problem(Path(index_dir), target.model_fingerprint):
            raise ModelCopyMissingError(f"generation {target.id}: {problem}", index_dir)
        _undo_changes(session, cur, target)
        _place_live_items(session, Path(index_dir), target.id, listed)
        session.execute(delete(Folder))  # ledger rows restored: no folder is settled any more
        make_current(session, target)  # marks `cur` kept ...
        cur.status = "rolled_back"  # ... but it is undone: never a rollback target, its files orphans
        session.execute(  # kept generations between the target and `cur` are undone with it
            update(Generation)
            .where(Generation.status == "kept", Generation.id > target.id, Generation.id < cur.id)
            .values(status="rolled_back")
        )
        session.flush()
        return GenerationInfo.from_row(target)


def _undo_changes(session: Session, undone: Generation, target: Generation) -> None:
    """Restore items and ledger to what generations newer than `target` changed, newest first."""
    changes = session.scalars(
        select(GenerationChange)
        .join(Generation, Generation.id == GenerationChange.generation_id)
        .where(GenerationChange.generation_id > target.id, Generation.status.in_(UNDONE_WITH_THE_RUN))
        .order_by(GenerationChange.id.desc())
    ).all()
    _undo_product_changes(session, undone, target)
    for ch in changes:
        item = session.get(Item, ch.item_id)
        for key, value in (ch.previous or {}).items():  # updated, relinked, or added back after a delete
            setattr(item, key, value)
        if ch.change == "relinked":  # only its product changed
            continue
        ledger = session.scalars(select(LedgerEntry).where(LedgerEntry.path == item.path)).first()
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


def _undo_product_changes(session: Session, undone: Generation, target: Generation) -> None:
    """Products and attribute types as the target has them (`products.undo_product_changes`)."""
    from indexer.products import restore_attribute_types, undo_product_changes

    gens = session.scalars(
        select(Generation.id).where(Generation.id > target.id, Generation.status.in_(UNDONE_WITH_THE_RUN))
    ).all()
    if not session.scalar(select(ProductChange.id).where(ProductChange.generation_id.in_(gens)).limit(1)):
        return
    summary = target.summary or {}
    restore_attribute_types(
        session,
        (summary.get("catalog") or {}).get("attribute_types", {}),
        summary.get("api_attribute_types", {}),
    )
    undo_product_changes(session, list(gens), undone.id)


def _place_live_items(session: Session, index_dir: Path, target_id: int, listed: list) -> None:
    """Set `items.segment_id` of the live items whose segment is not one of the target's.

    Items moved since the target (re-embedded into a newer segment, or merged) point at segments
    the target does not list; each is found in the target's segments (ids minus deletion sets).
    """
    of_target = select(GenerationSegment.segment_id).where(GenerationSegment.generation_id == target_id)
    stale = np.asarray(
        session.scalars(
            select(Item.id).where(
                Item.deleted_generation.is_(None),
                Item.segment_id.is_(None) | Item.segment_id.not_in(of_target),
            )
        ).all(),
        np.int64,
    )
    if not len(stale):
        return
    placed = np.zeros(len(stale), bool)
    size = chunk_size(session)
    for info, deleted in listed:
        seg = OpenSegment.open(index_dir, info, mmap=True)
        here = (seg.rows_of(stale) >= 0) & ~np.isin(stale, deleted) & ~placed
        for chunk in chunks(stale[here].tolist(), size):
            session.execute(
                update(Item)
                .where(Item.id.in_(chunk))
                .values(segment_id=info.id)
                .execution_options(synchronize_session=False)
            )
        placed |= here
    if not placed.all():
        raise RollbackError(
            f"{int((~placed).sum())} live items are in none of the target generation's segments"
        )
