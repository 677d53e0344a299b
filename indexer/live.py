"""A live batch: queued API writes and changed folders, applied as one generation publish.

    result = apply_batch(inventory, model_dir, index_dir, dirty, full=False, options=..., encoder=...)

A batch takes the queued jobs (`indexer.jobs`; a `patch` job changes a product's metadata in the
same publish, no folder planned, no segment written), adds the folders of their uploads and of the items
to delete to the `dirty` folders reported by the watcher, plans only those folders (`plan_live`:
each folder's own files merge-joined with its ledger rows, the settled-folder digests re-used, a
vanished folder's ledger rows read by path range; no scan of the rest of the inventory), runs the
ordinary index job on that plan (one publish), then settles each job from the catalog
(`jobs.resolve_jobs`).

Deleting an item over the API: an upload (under `_uploads/`) is unlinked, and the plan deletes its
item as for any removed file. Any other inventory file is not the API's to remove: its ledger row
becomes `skipped` with the reason "deleted over the API" and its stat, so later scans leave it out
until the file itself changes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from indexer import jobs as queue
from indexer.db import Item, Job
from indexer.folders import ROW_COLUMNS, rows_in, stored_folders
from indexer.plan import Plan, merge_into, plan_folders
from indexer.plan_workers import join_plans
from indexer.scan import ScannedFile, scan_folder

logger = logging.getLogger(__name__)


@dataclass
class LiveChanges:
    """What a batch plans instead of the whole inventory, and the items the API deletes."""

    folders: dict[str, bool] | None  # folder prefix ("a/b/", "" = root) -> recursive; None: everything
    tombstones: list[int] = field(default_factory=list)  # live items deleted over the API, file kept
    force: set[str] = field(default_factory=set)  # folders compared file by file even if settled
    patches: list[queue.JobRecord] = field(default_factory=list)  # product metadata changes (kind patch)
    uploads: list[queue.JobRecord] = field(default_factory=list)  # add jobs with a product_id


@dataclass
class BatchResult:
    jobs: int = 0  # jobs taken
    states: dict[int, str] = field(default_factory=dict)  # job id -> indexed | failed (the settled)
    summary: object = None  # indexer.job.JobSummary


def folder_of(rel_path: str) -> str:
    """'a/b/c.jpg' -> 'a/b/'; 'c.jpg' -> ''."""
    cut = rel_path.rfind("/")
    return rel_path[: cut + 1]


def normalized(folders: dict[str, bool]) -> dict[str, bool]:
    """Drop folders already covered by a recursive one (so no folder is planned twice)."""
    recursive = sorted(p for p, r in folders.items() if r)
    out = {}
    for prefix, rec in sorted(folders.items()):
        if any(prefix != r and prefix.startswith(r) for r in recursive):
            continue
        out[prefix] = rec
    return out


def _under(prefix: str) -> tuple[str, str | None]:
    """[lo, hi) of every path beneath folder `prefix`."""
    if not prefix:
        return "", None
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


def plan_live(
    inventory: str | Path, catalog: Path, folders: dict[str, bool], force: Iterable[str] = ()
) -> Plan:
    """The plan of a few folders: each existing one's own files (and with `recursive` its
    subfolders) against their ledger rows, settled unchanged folders skipped unless in `force`;
    a folder gone from disk loses every ledger path beneath it."""
    force = set(force)
    db = sqlite3.connect(f"file:{Path(catalog).resolve()}?mode=ro", uri=True, timeout=30)
    try:
        parts = []
        for prefix, recursive in normalized(folders).items():
            lo, hi = _under(prefix)
            stored = stored_folders(db, lo, hi) if recursive else stored_folders(db, prefix, prefix + "\0")
            stored = {p: s for p, s in stored.items() if p not in force}
            scanned = list(scan_folder(inventory, prefix, recursive))
            if scanned:
                parts.append(plan_folders(scanned, stored, lambda p: rows_in(db, p)))
                continue
            part = Plan(vanished=sorted(stored))  # gone: everything the ledger has beneath it
            where = "path >= :lo" + ("" if hi is None else " AND path < :hi")
            rows = db.execute(
                f"SELECT {ROW_COLUMNS} FROM ledger WHERE {where} ORDER BY path", {"lo": lo, "hi": hi}
            )
            merge_into(part, [], rows, False)
            parts.append(part.sort())
        return join_plans(parts) if parts else Plan()
    finally:
        db.close()


def add_tombstones(plan: Plan, engine: Engine, inventory_root: str, item_ids: list[int]) -> None:
    """Delete these live items whose files stay: each becomes a skipped ledger row with its stat."""
    if not item_ids:
        return
    with Session(engine) as session:
        rows = session.execute(
            select(Item.id, Item.path, Item.label).where(
                Item.id.in_(item_ids), Item.deleted_generation.is_(None)
            )
        ).all()
    doomed = {r.path for r in rows}
    plan.embed = [f for f in plan.embed if f.rel_path not in doomed]
    plan.touch = [(f, i) for f, i in plan.touch if f.rel_path not in doomed]
    plan.newly_skipped = [f for f in plan.newly_skipped if f.rel_path not in doomed]
    for r in rows:
        plan.live_at_path.pop(r.path, None)
        if r.id not in plan.delete:
            plan.delete.append(r.id)
        path = os.path.join(inventory_root, r.path)
        try:
            st = os.stat(path)
        except OSError:
            continue  # gone meanwhile: the deletion alone will do
        plan.newly_skipped.append(
            ScannedFile(r.path, path, r.label, st.st_size, st.st_mtime_ns, queue.DELETED_OVER_API)
        )
    plan.sort()


def take_deletes(
    engine: Engine, inventory_root: str, jobs: list[queue.JobRecord]
) -> tuple[list[int], set[str]]:
    """For the batch's delete jobs: unlink uploads (their folder is then planned), the rest become
    tombstones. Returns (tombstone item ids, folders to compare)."""
    ids = [j.item_id for j in jobs if j.kind == "delete" and j.item_id is not None]
    if not ids:
        return [], set()
    with Session(engine) as session:
        rows = session.execute(
            select(Item.id, Item.path).where(Item.id.in_(ids), Item.deleted_generation.is_(None))
        ).all()
    tombstones, folders = [], set()
    for r in rows:
        folders.add(folder_of(r.path))
        if r.path.startswith(queue.UPLOADS + "/"):
            try:
                os.unlink(os.path.join(inventory_root, r.path))
                continue
            except FileNotFoundError:
                continue
            except OSError as e:  # e.g. a read-only inventory: keep the file, drop the item
                logger.warning("cannot remove upload %s (%s): deleting its item only", r.path, e)
        tombstones.append(r.id)
    return tombstones, folders


@dataclass(frozen=True)
class Patch:
    """A patch job that applies: its product (products.id) and checked changes."""

    job_id: int
    product_key: str
    pid: int
    changes: dict


def patch_problem(session: Session, product_key: str, changes: dict) -> tuple[int | None, str | None]:
    """(products.id, None) when the change applies to the catalog as it is now, else (None, why)."""
    from indexer.filter_sql import attribute_types_of
    from indexer.products import PatchError, check_patch, product_id_of

    pid = product_id_of(session, product_key)
    if pid is None:
        return None, f"product {product_key!r} is no longer in the catalog"
    try:
        check_patch(changes, attribute_types_of(session))
    except PatchError as e:
        return None, f"the catalog changed since the request: {e}"
    return pid, None


def prepare_patches(engine: Engine, jobs: list[queue.JobRecord]) -> list[Patch]:
    """The patches that apply; the others are failed now (the run holds the index lock, so what
    the catalog says cannot change before the publish)."""
    out = []
    with Session(engine) as session, session.begin():
        for j in jobs:
            key, changes = j.payload.get("product_id"), j.payload.get("changes") or {}
            pid, why = patch_problem(session, key, changes)
            if pid is None:
                queue.settle_in(session, j.id, state="failed", reason=why)
            else:
                out.append(Patch(j.id, key, pid, changes))
    return out


def prepare_uploads(
    engine: Engine,
    jobs: list[queue.JobRecord],
    catalog_types: dict[str, str] | None,
    plan: Plan,
    inventory_root: str,
) -> list:
    """The uploads whose product fields apply (`indexer.uploads.Upload`), checked against the
    attribute types this run's publish will have (`catalog_types`: the run's catalog file's, None
    without one). An upload that no longer fits is not indexed at all: its file is removed (it is
    the API's), its item too if a scan indexed it already (unless an earlier job of the same file
    made it), and its job fails with the reason."""
    from indexer.bulk import chunk_size, chunks
    from indexer.uploads import check_uploads, effective_types

    with Session(engine) as session:
        ready, failed = check_uploads(jobs, effective_types(session, catalog_types))
        paths = [j.path for j in jobs if j.path]
        live: dict[str, int] = {}
        for chunk in chunks(paths, chunk_size(session)):
            live.update(
                session.execute(
                    select(Item.path, Item.id).where(Item.path.in_(chunk), Item.deleted_generation.is_(None))
                ).all()
            )
    ready = [dataclasses.replace(u, live_item=live.get(u.path)) for u in ready]
    if failed:
        why = dict(failed)
        doomed = {j.path for j in jobs if j.id in why} - {u.path for u in ready}
        with Session(engine) as session:  # an earlier upload of the same file made its item: it stays
            for chunk in chunks(sorted(doomed), chunk_size(session)):
                query = select(Job.path).where(Job.path.in_(chunk), Job.state == "indexed")
                doomed -= set(session.scalars(query))
        for path in doomed:  # first: a kill after this leaves the job queued, its file gone (failed)
            Path(inventory_root, path).unlink(missing_ok=True)
        plan.embed = [f for f in plan.embed if f.rel_path not in doomed]
        plan.delete.extend(live[p] for p in doomed if p in live and live[p] not in plan.delete)
        with Session(engine) as session, session.begin():
            for job_id, reason in failed:
                queue.settle_in(session, job_id, state="failed", reason=reason)
    return ready


def apply_batch(
    inventory: str | Path,
    model_dir: str | Path,
    index_dir: str | Path,
    dirty: dict[str, bool] | None,
    *,
    options=None,  # noqa: ANN001 - indexer.job.IndexOptions
    encoder=None,  # noqa: ANN001 - an Encoder to re-use across batches
    engine: Engine | None = None,
    embedder=None,  # noqa: ANN001 - as for run_index
) -> BatchResult:
    """One batch: queued jobs + `dirty` folders (None: the whole inventory) -> one publish."""
    from indexer.db import open_database
    from indexer.job import run_index

    index_dir = Path(index_dir)
    own = engine is None
    engine = engine or open_database(index_dir)
    try:
        root = str(Path(inventory).resolve())
        jobs = queue.queued_jobs(engine)
        tombstones, force = take_deletes(engine, root, jobs)
        folders = None
        if dirty is not None:
            folders = dict(dirty)
            for j in jobs:
                if j.kind == "add" and j.path:
                    folders.setdefault(folder_of(j.path), False)
            for prefix in force:
                folders.setdefault(prefix, False)
        patches = [j for j in jobs if j.kind == "patch"]
        uploads = [j for j in jobs if j.kind == "add" and j.payload.get("product_id")]
        changes = LiveChanges(folders, tombstones, force, patches, uploads)
        summary = run_index(
            inventory, model_dir, index_dir, options, live=changes, encoder=encoder, embedder=embedder
        )
        states = queue.resolve_jobs(engine, jobs, root) if jobs else {}
        return BatchResult(len(jobs), states, summary)
    finally:
        if own:
            engine.dispose()
