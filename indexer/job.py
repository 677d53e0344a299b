"""The index job: scan the inventory, embed what changed, publish a new generation.

    run_index(inventory, model_dir, index_dir)  ->  JobSummary

Only this module (with `generations`) writes to an index dir. The work is: lock, migrate, clean
orphans, plan against the ledger, embed (locally or through a pluggable `embedder`, e.g. Dask),
then publish in one SQLite transaction per checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from encoder import Encoder, load_encoder
from encoder.model_dir import copy_model_dir, read_model_dir
from indexer import faiss_index
from indexer.db import Generation, GenerationChange, Item, LedgerEntry, open_database, utcnow
from indexer.generations import (
    cleanup_orphans,
    current_generation,
    generation_path,
    index_lock,
    make_current,
    prune,
)
from indexer.ingest import Decoded, EmbeddedBatch, IngestLimits, embed_files
from indexer.plan import Plan, make_plan
from indexer.scan import ScannedFile, scan_inventory

logger = logging.getLogger(__name__)

MODELS_DIR = "models"
ROLLBACK_FIELDS = ("sha256", "size", "mtime_ns", "width", "height")
LEDGER_COLUMNS = (
    LedgerEntry.path,
    LedgerEntry.state,
    LedgerEntry.reason,
    LedgerEntry.size,
    LedgerEntry.mtime_ns,
)
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
    limits: IngestLimits = field(default_factory=IngestLimits)


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
    published: list[int] = field(default_factory=list)  # generations this run published
    seconds: float = 0.0
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) skipped or failed now

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
) -> JobSummary:
    """Build or update the index in `index_dir` from the images under `inventory`.

    :raise ModelMismatchError: the index was built with another model/metric and `full` is off.
    :raise IndexLockedError: another run holds the index.
    """
    opts = options or IndexOptions()
    for name in ("batch_size", "keep_generations", "checkpoint_every"):
        if getattr(opts, name) < 1:
            raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {getattr(opts, name)}")
    t0 = time.perf_counter()
    index_dir = Path(index_dir)
    inventory_root = str(Path(inventory).resolve())
    with index_lock(index_dir, wait=opts.wait_for_lock), _catalog(index_dir) as engine:
        cleanup_orphans(index_dir, engine)
        _, _, fingerprint = read_model_dir(model_dir)  # checked now; the model is loaded only if needed
        with Session(engine) as session:
            cur = current_generation(session)
            metric, index_type = _settings(cur, fingerprint, opts)
            # plain rows, not ORM objects: a no-change run over many files is dominated by this
            ledger = {e.path: e for e in session.execute(select(*LEDGER_COLUMNS))}
            live = select(Item.id, Item.path, Item.sha256).where(Item.deleted_generation.is_(None))
            items = {i.path: i for i in session.execute(live)}
            base_file = index_dir / cur.faiss_file if cur is not None else None
            parent_id = cur.id if cur is not None else None
        scanned = list(scan_inventory(inventory))
        plan = make_plan(scanned, ledger, items, full=opts.full)
        summary = JobSummary(unchanged=plan.unchanged, skipped=plan.still_skipped)
        if on_total:
            on_total(len(plan.embed))
        if not plan.changes_anything and not (opts.full and cur is not None):
            prune(index_dir, engine, opts.keep_generations)
            summary.generation_id = parent_id
            summary.seconds = time.perf_counter() - t0
            return summary

        encoder = load_encoder(model_dir)
        copy_model_dir(model_dir, index_dir / MODELS_DIR / encoder.fingerprint)
        # a new or rebuilt index is created at the first publish (approximate types train on its vectors)
        index = None if opts.full or base_file is None else faiss_index.read_index(base_file)

        publisher = _Publisher(
            index_dir, engine, encoder, metric, index_type, inventory_root, parent_id, index, summary
        )
        run = embedder or embed_files
        # A rebuild of a live index publishes once at the end; otherwise every checkpoint is a generation.
        checkpoint = opts.checkpoint_every if not (opts.full and cur is not None) else None
        publisher.stage_plan(plan, items, full=opts.full)
        for batch in run(
            plan.embed, encoder, batch_size=opts.batch_size, workers=opts.workers, limits=opts.limits
        ):
            summary.decoded += len(batch.ok) + sum(1 for d in batch.rejected if d.sha256 is not None)
            publisher.stage_batch(batch)
            if on_progress:
                on_progress(len(batch.ok) + len(batch.rejected))
            if checkpoint and publisher.staged_embeddings >= checkpoint:
                publisher.publish()
        if publisher.has_staged() or (opts.full and cur is not None):
            publisher.publish()
        prune(index_dir, engine, opts.keep_generations)
        summary.generation_id = summary.published[-1] if summary.published else parent_id
        summary.seconds = time.perf_counter() - t0
        return summary


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


class _Publisher:
    """Accumulates changes and publishes them as generations, one transaction each."""

    def __init__(
        self,
        index_dir: Path,
        engine,  # noqa: ANN001
        encoder: Encoder,
        metric: str,
        index_type: str,
        inventory_root: str,
        parent_id: int | None,
        index: faiss.Index | None,
        summary: JobSummary,
    ):
        self.index_dir, self.engine, self.encoder = index_dir, engine, encoder
        self.metric, self.index_type, self.inventory_root = metric, index_type, inventory_root
        self.parent_id, self.index, self.summary = parent_id, index, summary
        self.delete_ids: list[int] = []
        self.ledger_only: list[tuple[ScannedFile, str, str | None]] = []  # (file, state, reason)
        self.embedded: list[Decoded] = []
        self.vectors: list[np.ndarray] = []
        self.rebuild_leftovers: set[int] | None = None  # full rebuild: live items not re-embedded yet
        self.live_ids: dict[str, int] = {}  # path -> id of the items live when the run started

    @property
    def staged_embeddings(self) -> int:
        return len(self.embedded)

    def has_staged(self) -> bool:
        return bool(self.delete_ids or self.ledger_only or self.embedded)

    def stage_plan(self, plan: Plan, live_items: dict[str, Item], full: bool) -> None:
        self.live_ids = {path: item.id for path, item in live_items.items()}
        self.delete_ids.extend(plan.delete)
        self.ledger_only.extend((f, "skipped", f.reason) for f in plan.newly_skipped)
        self.summary.skipped += len(plan.newly_skipped)
        self.summary.problems.extend((f.rel_path, f.reason or "skipped") for f in plan.newly_skipped)
        self.ledger_only.extend((f, "embedded", None) for f in plan.touch)
        self.ledger_only.extend(
            (ScannedFile(p, "", ""), "deleted", "file no longer in the inventory") for p in plan.gone
        )
        if full:
            self.rebuild_leftovers = {i.id for i in live_items.values()}

    def stage_batch(self, batch: EmbeddedBatch) -> None:
        self.embedded.extend(batch.ok)
        if len(batch.ok):
            self.vectors.append(batch.vectors)
        for d in batch.rejected:
            self.ledger_only.append((d.file, d.outcome, d.reason))
            if d.file.rel_path in self.live_ids:  # its old vector no longer describes the file
                self.delete_ids.append(self.live_ids[d.file.rel_path])
            if d.outcome == "skipped":
                self.summary.skipped += 1
            else:
                self.summary.failed += 1
            self.summary.problems.append((d.file.rel_path, d.reason or d.outcome))

    def publish(self) -> int:
        """Write everything staged as a new current generation; returns its id.

        Ledger-only changes (a file touched, skipped, failed again, or gone) are recorded without
        a new generation: readers would see nothing new.
        """
        if self.index is not None and not self.embedded and not self.delete_ids:
            with Session(self.engine) as session, session.begin():
                self._apply_ledger(session, self.parent_id, [])
            self.ledger_only = []
            return self.parent_id
        xb = np.concatenate(self.vectors) if self.vectors else np.zeros((0, self.encoder.dim), np.float32)
        with Session(self.engine) as session, session.begin():
            gen = Generation(
                status="building",
                faiss_file="",
                item_count=0,
                ids_sha256="",
                model_fingerprint=self.encoder.fingerprint,
                model_config=self.encoder.config,
                dim=self.encoder.dim,
                metric=self.metric,
                index_type=self.index_type,
                inventory_root=self.inventory_root,
                parent_id=self.parent_id,
                run_summary={},
            )
            session.add(gen)
            session.flush()
            remove_ids, slots, changes = self._apply_items(session, gen.id)
            if self.index is None:
                self.index = faiss_index.build_index(self.encoder.dim, self.metric, self.index_type, xt=xb)
                remove_ids = []
            faiss_index.remove(self.index, np.asarray(remove_ids, np.int64))
            faiss_index.add(self.index, np.asarray([i.id for i in slots], np.int64), xb, self.metric)
            session.add_all(changes)
            self._apply_ledger(session, gen.id, slots)
            ids = faiss_index.ids_of(self.index)
            gen.item_count = int(self.index.ntotal)
            gen.ids_sha256 = faiss_index.ids_sha256(ids)
            gen.faiss_file = f"generations/{gen.id:06d}.faiss"
            gen.run_summary = {k: v for k, v in self.summary.as_dict().items() if k != "problems"}
            path = generation_path(self.index_dir, gen.id)
            path.parent.mkdir(parents=True, exist_ok=True)
            faiss_index.write_index_atomic(self.index, path)
            make_current(session, gen)
            gen_id = gen.id
        # committed: this generation is now what readers open
        self.summary.published.append(gen_id)
        self.parent_id = gen_id
        self.delete_ids, self.ledger_only, self.embedded, self.vectors = [], [], [], []
        logger.info("published generation %d (%d items)", gen_id, self.index.ntotal)
        return gen_id

    def _apply_items(
        self, session: Session, gen_id: int
    ) -> tuple[list[int], list[Item], list[GenerationChange]]:
        """Insert, update and delete item rows; return FAISS ids to remove and the item of each vector."""
        remove_ids: list[int] = []
        changes: list[GenerationChange] = []
        paths = [d.file.rel_path for d in self.embedded]
        by_path = {i.path: i for i in session.scalars(select(Item).where(Item.path.in_(paths)))}
        added: list[Item] = []
        slots: list[Item] = []  # the item of each staged vector, in order
        previous_of: dict[int, dict] = {}
        for d in self.embedded:
            item = by_path.get(d.file.rel_path)
            if item is not None and item.deleted_generation is None:  # live: re-embed under the same id
                previous = {k: getattr(item, k) for k in ROLLBACK_FIELDS}
                changes.append(
                    GenerationChange(
                        generation_id=gen_id, item_id=item.id, change="updated", previous=previous
                    )
                )
                remove_ids.append(item.id)
                self.summary.updated += 1
                if self.rebuild_leftovers is not None:
                    self.rebuild_leftovers.discard(item.id)
            else:
                if item is None:
                    item = Item(path=d.file.rel_path)
                    session.add(item)
                else:  # deleted earlier and back: rollback restores the deleted row as it was
                    previous_of[item.id] = {k: getattr(item, k) for k in ROLLBACK_FIELDS}
                item.deleted_generation, item.added_generation = None, gen_id
                added.append(item)
                self.summary.added += 1
            item.label, item.sha256, item.size, item.mtime_ns = d.file.label, d.sha256, d.size, d.mtime_ns
            item.width, item.height = d.width, d.height
            slots.append(item)
        session.flush()  # assigns ids to new items
        changes += [
            GenerationChange(
                generation_id=gen_id, item_id=i.id, change="added", previous=previous_of.get(i.id)
            )
            for i in added
        ]

        delete_ids = list(self.delete_ids)
        if self.rebuild_leftovers:  # a full rebuild drops live items it did not re-embed
            delete_ids += sorted(self.rebuild_leftovers)
            self.rebuild_leftovers = set()
        for item_id in dict.fromkeys(delete_ids):
            item = session.get(Item, item_id)
            if item is None or item.deleted_generation is not None:
                continue
            item.deleted_generation = gen_id
            remove_ids.append(item_id)
            changes.append(GenerationChange(generation_id=gen_id, item_id=item_id, change="deleted"))
            self.summary.deleted += 1
            entry = session.scalars(select(LedgerEntry).where(LedgerEntry.path == item.path)).first()
            if entry is not None:  # a file still there but now unusable gets its own reason below
                entry.state, entry.reason, entry.generation_id = (
                    "deleted",
                    "file no longer in the inventory",
                    gen_id,
                )
        return remove_ids, slots, changes

    def _apply_ledger(self, session: Session, gen_id: int, slots: list[Item]) -> None:
        """Record each staged file's outcome in the ledger."""
        rows: list[tuple[str, str, str | None, int | None, int | None, int | None]] = [
            (d.file.rel_path, "embedded", None, d.size, d.mtime_ns, item.id)
            for d, item in zip(self.embedded, slots, strict=False)
        ]
        for f, state, reason in self.ledger_only:
            item_id = None
            if state == "embedded":  # touched: same bytes, new stat
                item_id = session.scalars(select(Item.id).where(Item.path == f.rel_path)).first()
            rows.append((f.rel_path, state, reason, f.size, f.mtime_ns, item_id))
        existing = {
            e.path: e
            for e in session.scalars(select(LedgerEntry).where(LedgerEntry.path.in_([r[0] for r in rows])))
        }
        now = utcnow()
        for path, state, reason, size, mtime_ns, item_id in rows:
            entry = existing.get(path)
            if entry is None:
                entry = LedgerEntry(path=path)
                session.add(entry)
            entry.state, entry.reason, entry.size, entry.mtime_ns = state, reason, size, mtime_ns
            entry.item_id, entry.generation_id, entry.updated_at = item_id, gen_id, now
