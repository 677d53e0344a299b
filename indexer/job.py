"""The index job: scan the inventory, embed what changed, publish a new generation, compact.

    run_index(inventory, model_dir, index_dir)  ->  JobSummary

Only this module (with `publish`, `compaction` and `generations`) writes to an index dir. The
work is: lock, migrate, clean orphans, stream the scan against the ledger (a merge-join in path
order: memory holds only what changed), embed (locally or through a pluggable `embedder`, e.g.
Dask), publish one generation per checkpoint (each adds one small segment), merge segments by
the size-tiered policy, prune.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from encoder.model_dir import copy_model_dir, read_model_dir
from indexer import folders
from indexer.catalog_file import read_catalog
from indexer.compaction import MergePolicy, compact
from indexer.damage import is_disk_full
from indexer.db import DATABASE_FILE, Generation, open_database
from indexer.generations import cleanup_orphans, current_generation, index_lock, prune
from indexer.ingest import EmbeddedBatch, IngestLimits
from indexer.ledger import item_sha256, ledger_joined_with_items
from indexer.plan import Plan, folder_digest, make_plan, resolve_touches
from indexer.plan_workers import available_cores, plan_in_parallel, plan_range
from indexer.products import catalog_summary
from indexer.publish import BuildSettings, Publisher
from indexer.scan import scan_folders
from indexer.segments import StorageWriteError
from indexer.store import current_generation_id

logger = logging.getLogger(__name__)

MODELS_DIR = "models"
PARALLEL_PLAN_ITEMS = 50_000  # from this many live items a no-change scan is worth splitting
MAX_PLAN_WORKERS = 8
Embedder = Callable[..., Iterator[EmbeddedBatch]]


class ModelMismatchError(ValueError):
    """The index was built with another model (or metric) than the one given."""


@dataclass
class IndexOptions:
    metric: str | None = None  # l2 | cosine; None: keep the index's (cosine for a new index)
    index_type: str | None = None  # flat (default) or an approximate type; None: keep the index's
    batch_size: int = 32  # images per encoder forward pass
    workers: int = 2  # decoding threads
    full: bool = False  # rebuild from scratch instead of updating
    keep_generations: int = 3  # generations whose files are kept for rollback (current included)
    checkpoint_every: int = 5000  # publish a generation after this many embedded files
    wait_for_lock: float = 0.0  # seconds to wait for another run to finish
    compact: bool = True  # merge segments by the size-tiered policy after publishing
    plan_workers: int | None = None  # processes comparing the folder with the ledger; None: the cores,
    # from PARALLEL_PLAN_ITEMS live items (below, one)
    merge_policy: MergePolicy = field(default_factory=MergePolicy)
    limits: IngestLimits = field(default_factory=IngestLimits)
    catalog: str | Path | None = None  # a product catalog (CSV or JSON Lines); None: images only


@dataclass
class JobSummary:
    added: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    skipped: int = 0  # unreadable or not images (this run and still from before)
    failed: int = 0  # could not be read this time (retried next run)
    decoded: int = 0  # files actually read and decoded
    generation_id: int | None = None  # the generation current after the run
    published: list[int] = field(default_factory=list)  # generations this run published (merges too)
    merged: int = 0  # merges (compactions) this run published
    seconds: float = 0.0
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) skipped or failed now
    warnings: list[str] = field(default_factory=list)  # e.g. a compaction skipped for lack of space
    restored: list[str] = field(default_factory=list)  # e.g. a missing model copy restored
    model_dir: str = ""  # the model dir given (`imgrec verify --repair` restores a model copy from it)
    products_patched: int = 0  # products changed over the API (PATCH jobs) this run
    catalog: dict | None = None  # products.catalog_summary of the run's catalog (its row problems too)

    def as_dict(self) -> dict:
        d = self.__dict__.copy()
        d["problems"] = [{"path": p, "reason": r} for p, r in self.problems]
        return d


def run_index(
    inventory: str | Path,
    model_dir: str | Path,
    index_dir: str | Path,
    options: IndexOptions | None = None,
    *,
    embedder: Embedder | None = None,
    on_total: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    live=None,  # noqa: ANN001 - indexer.live.LiveChanges: plan these folders only, delete these items
    encoder=None,  # noqa: ANN001 - a loaded Encoder of this model, re-used (the watcher's)
) -> JobSummary:
    """Build or update the index in `index_dir` from the images under `inventory`.

    :raise ModelMismatchError: the index was built with another model/metric and `full` is off.
    :raise IndexLockedError: another run holds the index.
    :raise StorageWriteError: a file could not be written (disk full...); the generation current
        before the failed publish stays current.
    """
    opts = options or IndexOptions()
    for name in ("batch_size", "keep_generations", "checkpoint_every"):
        if getattr(opts, name) < 1:
            raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {getattr(opts, name)}")
    t0 = time.perf_counter()
    index_dir = Path(index_dir)
    inventory_root = str(Path(inventory).resolve())
    with (
        index_lock(index_dir, wait=opts.wait_for_lock),
        disk_full_is_clear(index_dir),
        _catalog(index_dir) as engine,
    ):
        cleanup_orphans(index_dir, engine)
        _, _, fingerprint = read_model_dir(model_dir)  # checked now; the model is loaded only if needed
        with Session(engine) as session:
            cur = current_generation(session)
            metric, index_type = _settings(cur, fingerprint, opts)
            parent_id, live_count = (cur.id, cur.item_count) if cur is not None else (None, 0)
        summary_model_dir = str(Path(model_dir).resolve())
        restored = []
        if cur is not None and not opts.full:  # never build on damage (a --full rebuild replaces it)
            restored = _check_parent(index_dir, cur.id, fingerprint, model_dir)
        workers = opts.plan_workers or (
            min(MAX_PLAN_WORKERS, available_cores()) if live_count >= PARALLEL_PLAN_ITEMS else 1
        )
        if live is not None and live.folders is not None:
            plan = plan_live_changes(engine, index_dir, inventory, live)
        else:
            plan = plan_changes(engine, index_dir, inventory, opts.full, live_count, workers)
        if live is not None and live.tombstones:
            from indexer.live import add_tombstones

            add_tombstones(plan, engine, inventory_root, live.tombstones)
            plan.vanished = sorted({*plan.vanished, *(set(live.force) - set(plan.settle))})  # forgotten
        patches = []
        if live is not None and live.patches:
            from indexer.live import prepare_patches

            patches = prepare_patches(engine, live.patches)
        summary = JobSummary(unchanged=plan.unchanged, skipped=plan.still_skipped)
        summary.model_dir, summary.restored = summary_model_dir, restored
        catalog = read_catalog(opts.catalog, inventory) if opts.catalog is not None else None
        catalog_changed = False
        if catalog is not None:
            summary.catalog = catalog_summary(catalog)
            stored = ((cur.summary or {}).get("catalog") or {}) if cur is not None else {}
            catalog_changed = stored.get("sha256") != catalog.sha256
        uploads = []
        if live is not None and live.uploads:
            from indexer.live import prepare_uploads

            types = catalog.attribute_types if catalog is not None else None
            uploads = prepare_uploads(engine, live.uploads, types, plan, inventory_root)
        if on_total:
            on_total(len(plan.embed))
        linking = any(u.live_item is not None for u in uploads)  # indexed already: link only
        quiet = not plan.changes_anything and not catalog_changed and not patches and not linking
        if quiet and not (opts.full and cur is not None):
            settle_folders(engine, plan)  # compared and unchanged: settled as they are
            prune(index_dir, engine, opts.keep_generations)
            summary.generation_id = parent_id
            summary.seconds = time.perf_counter() - t0
            return summary

        from indexer.ingest import embed_files

        if cur is not None and not plan.changes_anything and not opts.full:  # only products changed
            encoder = StoredModel(cur.model_fingerprint, cur.model_config, cur.dim)
        else:
            from encoder import load_encoder  # torch work only when images changed

            if encoder is None or encoder.fingerprint != fingerprint:
                encoder = load_encoder(model_dir)
            copy_model_dir(model_dir, index_dir / MODELS_DIR / encoder.fingerprint)
        settings = BuildSettings(metric, index_type, opts.merge_policy.ann_min_items)
        rebuild = opts.full and cur is not None
        publisher = Publisher(
            index_dir, engine, encoder, settings, inventory_root, parent_id, summary,
            rebuild=rebuild, record_changes=cur is not None,
        )  # fmt: skip
        run = embedder or embed_files
        # A rebuild of a live index publishes once at the end; otherwise every checkpoint is a generation.
        checkpoint = None if rebuild else opts.checkpoint_every
        publisher.catalog, publisher.catalog_pending = catalog, catalog_changed
        publisher.patches = patches
        publisher.uploads = uploads
        publisher.stage_plan(plan, plan.live_at_path)
        publisher.before_first_commit = lambda session: forget_folders(session, plan)
        files, plan.embed = plan.embed, []
        batches = (
            run(files, encoder, batch_size=opts.batch_size, workers=opts.workers, limits=opts.limits)
            if files
            else ()  # only the catalog changed, or only deletions: nothing to embed
        )
        for batch in batches:
            summary.decoded += len(batch.ok) + sum(1 for d in batch.rejected if d.sha256 is not None)
            publisher.stage_batch(batch)
            if on_progress:
                on_progress(len(batch.ok) + len(batch.rejected))
            if checkpoint and publisher.staged_embeddings >= checkpoint:
                _publish_and_tidy(publisher, opts, summary)
        if publisher.has_staged() or rebuild:
            _publish_and_tidy(publisher, opts, summary, final=True)
        settle_folders(engine, plan)
        prune(index_dir, engine, opts.keep_generations)
        summary.generation_id = summary.published[-1] if summary.published else parent_id
        summary.seconds = time.perf_counter() - t0
        return summary


@dataclass(frozen=True)
class StoredModel:
    """What a publish records about the model, for a publish that embeds nothing (no model loaded)."""

    fingerprint: str
    config: dict
    dim: int


def _publish_and_tidy(
    publisher: Publisher, opts: IndexOptions, summary: JobSummary, final: bool = False
) -> None:
    """Publish the staged changes, merge segments by the policy, and free what is no longer listed.

    During a run, earlier checkpoints are superseded at once, so a first build never holds more
    than its live segments plus one merge's output on disk.
    """
    publisher.publish()
    if opts.compact:
        try:
            merged = compact(publisher.index_dir, publisher.engine, opts.merge_policy, summary=summary)
        except StorageWriteError as e:  # the publish stands; merging waits for space
            summary.warnings.append(f"compaction skipped: {e.strerror}")
            logger.warning("compaction skipped: %s", e.strerror)
            merged = []
        if merged:
            publisher.parent_id = merged[-1]
    prune(publisher.index_dir, publisher.engine, opts.keep_generations)


def _check_parent(index_dir: Path, generation_id: int, fingerprint: str, model_dir: str | Path) -> list[str]:
    """The generation a run builds on must be intact: its segment files (size, sha256) and its model
    copy, which is restored from `model_dir` (the same model: `_settings` checked) when missing.

    :raise SegmentDamagedError: a segment file is missing or damaged.
    """
    from indexer.damage import ModelCopyMissingError
    from indexer.repair import restore_model_copy
    from indexer.verify import check_generation

    try:
        check_generation(index_dir, generation_id)
    except ModelCopyMissingError:
        done = restore_model_copy(index_dir, fingerprint, model_dir)
        logger.warning("%s", done)
        return [done]
    return []


def plan_changes(
    engine: Engine, index_dir: Path, inventory: str | Path, full: bool, live_count: int, workers: int = 1
) -> Plan:
    """Compare the folder with the catalog, folder by folder (settled, unchanged folders cost their
    `stat`s only), in `workers` processes when more than one. If the ledger's live items disagree
    with the current generation's count, plan again against the ledger joined with the items
    (slower, thorough) and forget every settled folder."""
    catalog = index_dir / DATABASE_FILE
    plan = plan_in_parallel(inventory, catalog, full, workers) if workers > 1 else None
    if plan is None:
        plan = plan_range(inventory, catalog, None, None, full)
    if plan.ledger_live != live_count:
        logger.warning(
            "the ledger records %d live items, the current generation %d: checking against the items",
            plan.ledger_live, live_count,
        )  # fmt: skip
        digests, files = {}, []
        for prefix, own in scan_folders(inventory):
            digests[prefix] = folder_digest(own)
            files += own
        files.sort(key=lambda f: f.rel_path)
        plan = make_plan(files, ledger_joined_with_items(engine), full=full)
        plan.thorough, plan.settle = True, digests  # every folder compared: all settle afterwards
    resolve_touches(plan, lambda ids: item_sha256(engine, ids))
    return plan


def plan_live_changes(engine: Engine, index_dir: Path, inventory: str | Path, live) -> Plan:  # noqa: ANN001
    """The plan of the folders a live batch names (`indexer.live.plan_live`), touches resolved."""
    from indexer.live import plan_live

    plan = plan_live(inventory, index_dir / DATABASE_FILE, live.folders, live.force)
    resolve_touches(plan, lambda ids: item_sha256(engine, ids))
    return plan


def forget_folders(session: Session, plan: Plan) -> None:
    """In the run's first transaction: the folders it compares (or lost) are no longer settled."""
    db = session.connection().connection.dbapi_connection
    if plan.thorough:
        folders.forget_all(db)
    elif plan.settle or plan.vanished:
        folders.forget(db, [*plan.settle, *plan.vanished])


def settle_folders(engine: Engine, plan: Plan) -> None:
    """After the run's last publish: record the folders it compared, as the ledger now has them."""
    if not plan.settle:
        return
    with Session(engine) as session, session.begin():
        n = folders.settle(session.connection().connection.dbapi_connection, plan.settle)
    logger.info("settled %d of %d compared folders", n, len(plan.settle))


@contextmanager
def disk_full_is_clear(index_dir: Path) -> Iterator[None]:
    """Turn any failure caused by a full disk into one `StorageWriteError` that says what stays.

    Publishes and merges already say which segment failed. This catches the rest: the model copy,
    and SQLite, which reports "database or disk is full", or "disk I/O error" when it cannot even
    create its shared-memory file to open the catalog.
    """
    try:
        yield
    except StorageWriteError:
        raise
    except (OSError, OperationalError) as e:
        if not is_disk_full(e, index_dir):
            raise
        where = "writing the index"
        if isinstance(e, OperationalError):
            where = "opening the catalog" if "i/o error" in str(e.orig).lower() else "writing the catalog"
        raise StorageWriteError(errno.ENOSPC, f"disk full while {where}: {_stays_current(index_dir)}") from e


def _stays_current(index_dir: Path) -> str:
    """Which generation readers keep: read through SQLite, or when it cannot open the catalog (a
    full disk leaves no room for its WAL files, so none exist and the file itself is complete)
    straight from the file with `immutable=1`."""
    try:
        gen = current_generation_id(index_dir)
    except Exception:  # noqa: BLE001 - the catalog may not open on a full disk
        try:
            uri = f"file:{(index_dir / DATABASE_FILE).resolve()}?immutable=1"
            with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
                gen = db.execute("SELECT current_generation_id FROM index_state WHERE id = 1").fetchone()[0]
        except Exception:  # noqa: BLE001
            return "the current generation stays current"
    return f"previous generation {gen} stays current" if gen is not None else "nothing was published"


@contextmanager
def _catalog(index_dir: Path) -> Iterator[Engine]:
    """The index's catalog, created or migrated, disposed on the way out."""
    engine = open_database(index_dir)
    try:
        yield engine
    finally:
        engine.dispose()


def _settings(cur: Generation | None, fingerprint: str, opts: IndexOptions) -> tuple[str, str]:
    """The metric and index type to build with; refuse a model or metric change unless `full`."""
    if cur is None or opts.full:
        return opts.metric or (cur.metric if cur else "cosine"), opts.index_type or "flat"
    if cur.model_fingerprint != fingerprint:
        raise ModelMismatchError(
            f"the index was built with model {cur.model_fingerprint[:12]} but this model is "
            f"{fingerprint[:12]}; use the index's model, or pass --full to rebuild with the new one"
        )
    if opts.metric and opts.metric != cur.metric:
        raise ModelMismatchError(
            f"the index uses metric {cur.metric}; pass --full to rebuild it as {opts.metric}"
        )
    if opts.index_type and opts.index_type != cur.index_type:
        raise ModelMismatchError(
            f"the index is of type {cur.index_type}; pass --full to rebuild it as {opts.index_type}"
        )
    return cur.metric, cur.index_type
