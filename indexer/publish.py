"""Publishing a generation: staged changes -> one new small segment, deletion sets, one transaction.

    pub = Publisher(index_dir, engine, encoder, settings, inventory_root, parent_id, summary)
    pub.stage_plan(plan); pub.stage_batch(batch) ...; pub.publish()

A publish writes at most one new segment file (the new and re-embedded vectors) and never
rewrites an existing one: an update masks the item's old vector in its segment's deletion set and
adds the new vector under the same item id. The order is: begin the SQLite transaction, write the
segment file (checked: temp name, fsync, rename, fsync the directory), record items, ledger,
deletion sets, label counts and the generation, point `index_state` at it, commit. A failure
anywhere before the commit leaves the previous generation current (and at worst an orphan file).

A rebuild (`full` over an existing index) drops the parent's segments: its one publish holds
every vector, in a segment of the index's type.
"""

from __future__ import annotations

import errno
import logging
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from encoder import Encoder
from indexer.bulk import chunk_size, chunks
from indexer.catalog_file import Catalog
from indexer.db import (
    Generation,
    GenerationChange,
    GenerationSegment,
    Item,
    LedgerEntry,
    Product,
    Segment,
    utcnow,
)
from indexer.generations import make_current
from indexer.ingest import Decoded, EmbeddedBatch
from indexer.plan import Plan
from indexer.products import api_attribute_types, attribute_facets, catalog_summary, store_catalog
from indexer.scan import ScannedFile
from indexer.segments import (
    StorageWriteError,
    add_checksum,
    build_segment,
    decode_ids,
    encode_ids,
    ids_checksum,
    segment_file,
    union_ids,
    write_checked,
)
from indexer.store import live_item_ids

logger = logging.getLogger(__name__)

ROLLBACK_FIELDS = ("sha256", "size", "mtime_ns", "width", "height")
GONE = "file no longer in the inventory"


@dataclass(frozen=True)
class BuildSettings:
    metric: str
    index_type: str  # the index's configured type: flat, ivf or hnsw
    ann_min_items: int  # a segment smaller than this is flat whatever the type


class Publisher:
    """Accumulates changes and publishes them as generations, one transaction each."""

    def __init__(
        self,
        index_dir: Path,
        engine: Engine,
        encoder: Encoder,
        settings: BuildSettings,
        inventory_root: str,
        parent_id: int | None,
        summary,  # noqa: ANN001 - indexer.job.JobSummary
        *,
        rebuild: bool = False,
        record_changes: bool = True,
    ):
        self.index_dir, self.engine, self.encoder = index_dir, engine, encoder
        self.settings, self.inventory_root, self.summary = settings, inventory_root, summary
        self.parent_id = parent_id
        self.rebuild = rebuild  # the next publish replaces every segment of the parent
        self.record_changes = record_changes  # False on a first build: nothing to roll back to
        self.delete_ids: list[int] = []
        self.ledger_only: list[
            tuple[ScannedFile, str, str | None, int | None]
        ] = []  # (file, state, reason, item)
        self.embedded: list[Decoded] = []
        self.vectors: list[np.ndarray] = []
        self.live_at_path: dict[
            str, int
        ] = {}  # path -> live item, for files of the plan that may be rejected
        self._written: Path | None = None  # the segment file of the publish in progress
        self.before_first_commit: Callable[[Session], None] | None = (
            None  # run in the run's first transaction
        )
        self.catalog: Catalog | None = None  # the run's product catalog: stored with every publish
        self.catalog_pending = (
            False  # the catalog differs from the parent's: publish even with no image change
        )
        self.patches: list = []  # indexer.live.Patch: product metadata changes (API PATCH jobs)
        self.uploads: list = []  # indexer.uploads.Upload: product fields of uploads, applied with their item
        self._uploads_applied: set[int] = set()  # job ids applied by the publish in progress

    @property
    def staged_embeddings(self) -> int:
        return len(self.embedded)

    def has_staged(self) -> bool:
        return bool(
            self.delete_ids
            or self.ledger_only
            or self.embedded
            or self.catalog_pending
            or self.patches
            or self._linking()
        )

    def _linking(self) -> bool:
        """Whether an upload's product fields wait for an item that is indexed already."""
        return any(u.live_item is not None for u in self.uploads)

    def stage_plan(self, plan: Plan, live_at_path: dict[str, int]) -> None:
        """Stage the plan's deletions and ledger-only changes; `live_at_path`: live items of files
        to embed (if such a file is rejected now, its item leaves the index)."""
        self.live_at_path = live_at_path
        self.delete_ids.extend(plan.delete)
        self.ledger_only.extend((f, "skipped", f.reason, None) for f in plan.newly_skipped)
        self.summary.skipped += len(plan.newly_skipped)
        self.summary.problems.extend((f.rel_path, f.reason or "skipped") for f in plan.newly_skipped)
        self.ledger_only.extend((f, "embedded", None, item_id) for f, item_id in plan.touch)
        self.ledger_only.extend((ScannedFile(p, "", ""), "deleted", GONE, None) for p in plan.gone)

    def stage_batch(self, batch: EmbeddedBatch) -> None:
        self.embedded.extend(batch.ok)
        if len(batch.ok):
            self.vectors.append(batch.vectors)
        for d in batch.rejected:
            self.ledger_only.append((d.file, d.outcome, d.reason, None))
            if d.file.rel_path in self.live_at_path:  # its old vector no longer describes the file
                self.delete_ids.append(self.live_at_path[d.file.rel_path])
            if d.outcome == "skipped":
                self.summary.skipped += 1
            else:
                self.summary.failed += 1
            self.summary.problems.append((d.file.rel_path, d.reason or d.outcome))

    def publish(self) -> int | None:
        """Write everything staged as a new current generation; returns its id.

        Ledger-only changes (a file touched, skipped, failed again, or gone) are recorded without
        a new generation: readers would see nothing new.

        :raise StorageWriteError: the segment or the catalog could not be written (disk full...);
            the previous generation stays current.
        """
        if (
            self.parent_id is not None
            and not self.embedded
            and not self.delete_ids
            and not self.rebuild
            and not self.catalog_pending
            and not self.patches
            and not self._linking()
        ):
            with Session(self.engine) as session, session.begin():
                self._first_transaction(session)
                self._write_ledger(session, self.parent_id, {}, {})
            self.ledger_only, self.before_first_commit = [], None
            return self.parent_id
        self._written = None
        self._uploads_applied = set()
        try:
            with Session(self.engine) as session, session.begin():
                gen_id = self._publish(session)
        except BaseException as e:
            if self._written is not None:  # not committed: nothing lists it
                self._written.unlink(missing_ok=True)
            if isinstance(e, StorageWriteError):
                raise self._not_published(e) from e
            if isinstance(e, OperationalError) and "full" in str(e.orig).lower():
                full = StorageWriteError(errno.ENOSPC, "disk full while writing the catalog")
                raise self._not_published(full) from e
            raise
        # committed: this generation is now what readers open
        self.before_first_commit = None
        self.summary.published.append(gen_id)
        self.parent_id = gen_id
        self.rebuild = False
        self.catalog_pending = False
        self.patches = []
        self.uploads = [u for u in self.uploads if u.job_id not in self._uploads_applied]
        self.delete_ids, self.ledger_only, self.embedded, self.vectors = [], [], [], []
        return gen_id

    def _first_transaction(self, session: Session) -> None:
        """Run `before_first_commit` in this transaction, until one of the run's commits succeeds."""
        if self.before_first_commit is not None:
            self.before_first_commit(session)

    def _not_published(self, e: StorageWriteError) -> StorageWriteError:
        still = (
            f"previous generation {self.parent_id} stays current"
            if self.parent_id
            else "nothing was published"
        )
        return StorageWriteError(e.errno, f"{e.strerror}: {still}")

    # --- one publish ----------------------------------------------------------------------------

    def _publish(self, session: Session) -> int:
        parent = session.get(Generation, self.parent_id) if self.parent_id is not None else None
        incremental = parent is not None and not self.rebuild
        labels = Counter(_parent_labels(session, parent) if incremental else {})
        checksum = (parent.ids_checksum or ids_checksum(live_item_ids(session))) if incremental else None
        enc, st = self.encoder, self.settings
        gen = Generation(
            status="building", faiss_file="", item_count=0, ids_sha256="",
            model_fingerprint=enc.fingerprint, model_config=enc.config, dim=enc.dim, metric=st.metric,
            index_type=st.index_type, inventory_root=self.inventory_root, parent_id=self.parent_id,
            run_summary={},
        )  # fmt: skip
        session.add(gen)
        seg = None
        if self.embedded:
            seg = Segment(
                file="", item_count=len(self.embedded), dim=enc.dim, metric=st.metric, index_type="flat",
                byte_size=0, sha256="", ids_sha256="",
            )  # fmt: skip
            session.add(seg)
        session.flush()
        now = utcnow()
        changes = _Changes()
        vector_ids = self._apply_embedded(session, gen.id, seg.id if seg else None, changes, now)
        self._apply_deletions(session, gen.id, set(vector_ids), changes, now)

        if seg is not None:
            xb = np.concatenate(self.vectors)
            kind = st.index_type if (self.rebuild and len(xb) >= st.ann_min_items) else "flat"
            index = build_segment(xb, np.asarray(vector_ids, np.int64), st.metric, kind)
            seg.file = segment_file(seg.id)
            path = self.index_dir / seg.file
            path.parent.mkdir(parents=True, exist_ok=True)
            done = write_checked(index, path)
            self._written = path
            seg.index_type, seg.byte_size, seg.sha256 = kind, done.byte_size, done.sha256
            seg.ids_sha256 = _sorted_ids_sha256(vector_ids)

        self._first_transaction(session)
        if self.record_changes and changes.rows:
            session.execute(insert(GenerationChange), changes.rows)
        self._write_ledger(session, gen.id, changes.ledger_items, changes.deleted_paths)
        parts = self._deletion_sets(session, parent, changes.masked)
        if seg is not None:
            parts.append((seg.id, np.zeros(0, np.int64)))
        if parts:
            rows = [
                dict(generation_id=gen.id, segment_id=s, deleted=encode_ids(d), n_deleted=len(d))
                for s, d in parts
            ]
            session.execute(insert(GenerationSegment), rows)

        added = np.asarray(changes.added, np.int64)
        removed = np.asarray(changes.removed, np.int64)
        if parent is None or self.rebuild:
            gen.item_count = len(vector_ids)
            gen.ids_checksum = ids_checksum(np.asarray(vector_ids, np.int64))
            gen.summary = {"labels": _positive(Counter(d.file.label for d in self.embedded))}
        else:
            gen.item_count = parent.item_count + len(added) - len(removed)
            gen.ids_checksum = add_checksum(checksum, added, removed)
            labels.update(changes.labels)
            gen.summary = {"labels": _positive(labels)}
        self._store_products(session, gen, parent if incremental else None, vector_ids)
        gen.run_summary = {k: v for k, v in self.summary.as_dict().items() if k != "problems"}
        make_current(session, gen, supersede=self.parent_id in self.summary.published)
        logger.info("publishing generation %d (%d items, %d segments)", gen.id, gen.item_count, len(parts))
        return gen.id

    def _store_products(
        self, session: Session, gen: Generation, parent: Generation | None, embedded_ids: list[int]
    ) -> None:
        """With a catalog: store it and link the items (metadata-only changes need no segment); then
        the uploads' product fields and the patches (the API's changes are newer than the file).
        The generation's summary carries the catalog's description, the attribute types made by
        uploads and the attribute facets."""
        entry = (parent.summary or {}).get("catalog") if parent is not None else None
        if self.catalog is not None:
            only = (
                None if self.catalog_pending or parent is None else embedded_ids
            )  # unchanged: new images only
            store_catalog(session, self.catalog, gen.id, record_changes=self.record_changes, only=only)
            entry = catalog_summary(self.catalog)
        self._apply_uploads(session, gen.id)
        self._apply_patches(session, gen.id)  # after the file: the API's change is the newer one
        api_types = api_attribute_types(session)
        from_api = bool(api_types) or session.scalar(
            select(Product.id).where(Product.origin == "api").limit(1)
        )
        if entry is not None or from_api:  # products exist: their images or they changed, so may the facets
            extra = {"facets": attribute_facets(session)}
            if entry is not None:
                extra["catalog"] = entry
            if from_api:
                extra["api_attribute_types"] = api_types
            gen.summary = {**gen.summary, **extra}

    def _apply_uploads(self, session: Session, gen_id: int) -> None:
        """Create or update the products of the uploads whose item is live now (embedded by this
        publish or an earlier one) and link them; settle their jobs in this transaction. Uploads
        indexed before and embedded again (after a rollback) get their product back."""
        from indexer.jobs import UPLOADS, settle_in
        from indexer.uploads import apply_upload, embedded_again

        mine = {u.path for u in self.uploads}
        again = [
            d.file.rel_path
            for d in self.embedded
            if d.file.rel_path.startswith(UPLOADS + "/") and d.file.rel_path not in mine
        ]
        for up in embedded_again(session, again) if again else ():
            item_id = session.scalar(
                select(Item.id).where(Item.path == up.path, Item.deleted_generation.is_(None))
            )
            if item_id is not None:
                apply_upload(session, up, item_id, gen_id)
        for up in self.uploads:
            item_id = session.scalar(
                select(Item.id).where(Item.path == up.path, Item.deleted_generation.is_(None))
            )
            if item_id is None:  # not embedded (yet): a later checkpoint, or the file failed
                continue
            apply_upload(session, up, item_id, gen_id)
            settle_in(session, up.job_id, state="indexed", item_id=item_id, generation_id=gen_id)
            self._uploads_applied.add(up.job_id)

    def _apply_patches(self, session: Session, gen_id: int) -> None:
        """Apply the staged product patches (recorded for rollback) and settle their jobs in this
        transaction: a kill before the commit leaves them queued, after it settled."""
        from indexer.jobs import settle_in
        from indexer.live import patch_problem
        from indexer.products import patch_product

        for p in self.patches:
            pid, why = patch_problem(session, p.product_key, p.changes)  # the file may have changed
            if pid is None:
                settle_in(session, p.job_id, state="failed", reason=why)
                continue
            patch_product(session, pid, p.changes, gen_id)
            settle_in(session, p.job_id, state="indexed", generation_id=gen_id)
            self.summary.products_patched += 1

    def _apply_embedded(
        self, session: Session, gen_id: int, seg_id: int | None, changes: _Changes, now
    ) -> list[int]:  # noqa: ANN001
        """Insert or update the item of each embedded file; returns the item id of each vector."""
        paths = [d.file.rel_path for d in self.embedded]
        cols = (Item.id, Item.path, Item.label, Item.deleted_generation, Item.segment_id) + tuple(
            getattr(Item, k) for k in ROLLBACK_FIELDS
        )
        existing = {}
        for chunk in chunks(paths, chunk_size(session)):
            existing.update((r.path, r) for r in session.execute(select(*cols).where(Item.path.in_(chunk))))
        next_id = (session.scalar(select(func.max(Item.id))) or 0) + 1
        new_rows, updates, vector_ids = [], [], []
        for d in self.embedded:
            row = existing.get(d.file.rel_path)
            values = dict(
                label=d.file.label, sha256=d.sha256, size=d.size, mtime_ns=d.mtime_ns, width=d.width,
                height=d.height, segment_id=seg_id, updated_at=now,
            )  # fmt: skip
            if row is not None and row.deleted_generation is None:  # live: re-embed under the same id
                previous = {k: getattr(row, k) for k in ROLLBACK_FIELDS}
                changes.change(gen_id, row.id, "updated", previous)
                changes.mask(row.segment_id, row.id)
                changes.labels[row.label] -= 1
                changes.labels[d.file.label] += 1
                if not self.rebuild:  # a rebuild starts from nothing: every vector is "added"
                    changes.removed.append(row.id)
                changes.added.append(row.id)
                updates.append(dict(id=row.id, **values))
                self.summary.updated += 1
                item_id = row.id
            elif row is not None:  # deleted earlier and back: rollback restores the deleted row as it was
                changes.change(gen_id, row.id, "added", {k: getattr(row, k) for k in ROLLBACK_FIELDS})
                updates.append(dict(id=row.id, deleted_generation=None, added_generation=gen_id, **values))
                item_id = row.id
                self._added(changes, item_id, d.file.label)
            else:
                item_id, next_id = next_id, next_id + 1
                new_rows.append(
                    dict(
                        id=item_id,
                        path=d.file.rel_path,
                        added_generation=gen_id,
                        deleted_generation=None,
                        created_at=now,
                        **values,
                    )  # fmt: skip
                )
                changes.change(gen_id, item_id, "added", None)
                self._added(changes, item_id, d.file.label)
            changes.ledger_items[d.file.rel_path] = item_id
            vector_ids.append(item_id)
        if new_rows:
            session.execute(insert(Item), new_rows)
        for same_keys in (
            [u for u in updates if "added_generation" not in u],
            [u for u in updates if "added_generation" in u],
        ):
            if same_keys:
                session.execute(update(Item), same_keys)
        return vector_ids

    def _added(self, changes: _Changes, item_id: int, label: str) -> None:
        changes.added.append(item_id)
        changes.labels[label] += 1
        self.summary.added += 1

    def _apply_deletions(
        self, session: Session, gen_id: int, embedded_ids: set[int], changes: _Changes, now
    ) -> None:  # noqa: ANN001
        """Mark deleted the live items staged for deletion (not those just re-embedded)."""
        doomed = [i for i in dict.fromkeys(self.delete_ids) if i not in embedded_ids]
        rows = []
        for chunk in chunks(doomed, chunk_size(session)):
            rows += session.execute(
                select(Item.id, Item.path, Item.label, Item.segment_id).where(
                    Item.id.in_(chunk), Item.deleted_generation.is_(None)
                )
            ).all()
        if self.rebuild:  # live items the rebuild did not re-embed leave too
            rows += self._not_rebuilt(session, embedded_ids | {r.id for r in rows})
        for r in rows:
            changes.change(gen_id, r.id, "deleted", None)
            changes.mask(r.segment_id, r.id)
            changes.labels[r.label] -= 1
            if not self.rebuild:
                changes.removed.append(r.id)
            changes.deleted_paths[r.path] = r.id
            self.summary.deleted += 1
        if rows:
            session.execute(
                update(Item), [dict(id=r.id, deleted_generation=gen_id, updated_at=now) for r in rows]
            )

    def _not_rebuilt(self, session: Session, keep: set[int]) -> list:
        live = session.execute(
            select(Item.id, Item.path, Item.label, Item.segment_id).where(Item.deleted_generation.is_(None))
        ).all()
        return [r for r in live if r.id not in keep]

    def _deletion_sets(
        self, session: Session, parent: Generation | None, masked: dict[int | None, list[int]]
    ) -> list[tuple[int, np.ndarray]]:
        """The parent's segments with the newly masked ids added (segments left empty are dropped)."""
        if parent is None or self.rebuild:
            return []
        rows = session.execute(
            select(GenerationSegment.segment_id, GenerationSegment.deleted, Segment.item_count)
            .join(Segment, Segment.id == GenerationSegment.segment_id)
            .where(GenerationSegment.generation_id == parent.id)
        ).all()
        unknown = set(masked) - {r.segment_id for r in rows}
        if unknown:
            raise RuntimeError(
                f"items to mask are in segments {sorted(map(str, unknown))} that generation {parent.id} "
                "does not list; the catalog is inconsistent (run `imgrec index --full`)"
            )
        parts = []
        for r in rows:
            deleted = union_ids(decode_ids(r.deleted), np.asarray(masked.get(r.segment_id, []), np.int64))
            if len(deleted) < r.item_count:
                parts.append((r.segment_id, deleted))
        return parts

    def _write_ledger(
        self, session: Session, gen_id: int, embedded: dict[str, int], deleted: dict[str, int]
    ) -> None:
        """Record each staged file's outcome in the ledger (one upsert per file, executemany)."""
        now = utcnow()
        rows: dict[str, dict] = {}
        for path, item_id in deleted.items():
            rows[path] = dict(
                path=path, state="deleted", reason=GONE, size=None, mtime_ns=None, item_id=item_id
            )
        for d in self.embedded:
            rows[d.file.rel_path] = dict(
                path=d.file.rel_path, state="embedded", reason=None, size=d.size, mtime_ns=d.mtime_ns,
                item_id=embedded[d.file.rel_path],
            )  # fmt: skip
        for f, state, reason, item_id in self.ledger_only:  # a file still there but unusable: its reason
            rows[f.rel_path] = dict(
                path=f.rel_path, state=state, reason=reason, size=f.size, mtime_ns=f.mtime_ns, item_id=item_id
            )
        if not rows:
            return
        for r in rows.values():
            r.update(generation_id=gen_id, updated_at=now)
        stmt = sqlite_insert(LedgerEntry)
        stmt = stmt.on_conflict_do_update(
            index_elements=[LedgerEntry.path],
            set_={
                c: stmt.excluded[c]
                for c in ("state", "reason", "size", "mtime_ns", "item_id", "generation_id", "updated_at")
            },
        )
        for chunk in chunks(rows.values(), 10_000):
            session.execute(stmt, chunk)


class _Changes:
    """What one publish does to items: rows for generation_changes, masks, label and id deltas."""

    def __init__(self):
        self.rows: list[dict] = []
        self.masked: dict[int | None, list[int]] = defaultdict(list)
        self.labels: Counter = Counter()
        self.added: list[int] = []
        self.removed: list[int] = []
        self.ledger_items: dict[str, int] = {}
        self.deleted_paths: dict[str, int] = {}

    def change(self, gen_id: int, item_id: int, change: str, previous: dict | None) -> None:
        self.rows.append(dict(generation_id=gen_id, item_id=item_id, change=change, previous=previous))

    def mask(self, segment_id: int | None, item_id: int) -> None:
        self.masked[segment_id].append(item_id)


def _parent_labels(session: Session, parent: Generation) -> dict[str, int]:
    """The parent's label counts: its summary, or (a generation from schema 0001) counted once."""
    if parent.summary is not None and "labels" in parent.summary:
        return dict(parent.summary["labels"])
    rows = session.execute(
        select(Item.label, func.count()).where(Item.deleted_generation.is_(None)).group_by(Item.label)
    ).all()
    return {label: n for label, n in rows}


def _positive(counts: Counter) -> dict[str, int]:
    return {label: n for label, n in sorted(counts.items()) if n > 0}


def _sorted_ids_sha256(ids: list[int]) -> str:
    from indexer.faiss_index import ids_sha256

    return ids_sha256(np.asarray(ids, np.int64))
