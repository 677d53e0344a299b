"""Reading a published index: the current generation, checked, ready to search.

    snap = open_snapshot(INDEX_DIR)                    # segments + catalog of one consistent generation
    hits = snap.search_vectors(xq, k=5)                # list (per query) of Hit
    D, I = snap.search(xq, k, allowed=ids)             # raw (nq, k) arrays, exact across segments
    newer = open_snapshot(INDEX_DIR, reuse=snap)       # re-uses snap's open segments and encoder

A snapshot never changes under its reader: a newer generation is a new snapshot. Its segments
are shared with the snapshot it re-used them from (segment files never change).

Checks on open (`verify=True`, cheap enough for every reload): each segment file opened for the
first time has the size, count, dimension and ids the catalog records, and its live ids are
exactly the catalog's live items of that segment; the generation's live count and ids checksum
match its segments and deletion sets; with `checksums`, each segment file opened for the first time
has its recorded sha256 (before FAISS reads it). `verify="full"` also compares every live id with
the catalog. `indexer.verify` checks everything (`imgrec verify`).
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import faiss
import numpy as np
from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from encoder import Encoder, ModelDirError, load_encoder
from indexer.bulk import chunk_size, chunks
from indexer.damage import ModelCopyMissingError, SegmentDamagedError
from indexer.db import (
    DATABASE_FILE,
    SCHEMA_REVISION,
    Generation,
    GenerationSegment,
    IndexState,
    Item,
    Segment,
    catalog_revision,
    make_engine,
    read_snapshot,
)
from indexer.db import database_url as _database_url
from indexer.segment_search import OpenSegment, Part, SegmentFileError, search_parts
from indexer.segments import SegmentInfo, checksum_hex, decode_ids, ids_sum

ITEM_CACHE_SIZE = 100_000  # catalog records kept per snapshot
ITEM_COLUMNS = (Item.id, Item.path, Item.label, Item.width, Item.height, Item.sha256, Item.deleted_generation)


class IndexNotFoundError(FileNotFoundError):
    """No published index in the folder (yet)."""


class InconsistentIndexError(RuntimeError):
    """FAISS and SQLite disagree about a generation; the index must not be served."""


class DamagedGenerationError(InconsistentIndexError, SegmentDamagedError):
    """A segment file of the generation is missing or damaged (size, sha256, unreadable)."""

    def __init__(self, problem: str, index_dir: str | Path | None = None, file: str | None = None):
        SegmentDamagedError.__init__(self, problem, index_dir, file)


@dataclass(frozen=True)
class ItemInfo:
    id: int
    path: str
    label: str
    width: int
    height: int
    sha256: str
    deleted: bool

    @classmethod
    def from_row(cls, row) -> ItemInfo:  # noqa: ANN001 - an Item or a row of ITEM_COLUMNS
        return cls(
            row.id, row.path, row.label, row.width, row.height, row.sha256, row.deleted_generation is not None
        )


@dataclass(frozen=True)
class Hit:
    rank: int
    id: int
    score: float
    item: ItemInfo


@dataclass(frozen=True)
class GenerationInfo:
    id: int
    created_at: dt.datetime
    item_count: int
    model_fingerprint: str
    model_config: dict
    dim: int
    metric: str
    index_type: str  # the index's configured type; small segments are flat whatever it is
    inventory_root: str
    faiss_file: str  # schema 0001 generations only; "" for generations made of segments
    ids_sha256: str  # schema 0001 only
    eval_figures: dict | None
    run_summary: dict
    summary: dict | None = None  # {"labels": {label: live items}}; None for upgraded 0001 kept ones
    ids_checksum: str | None = None  # `segments.ids_checksum` of the live ids
    parent_id: int | None = None
    status: str = "current"

    @classmethod
    def from_row(cls, g: Generation) -> GenerationInfo:
        return cls(
            g.id, g.created_at, g.item_count, g.model_fingerprint, g.model_config, g.dim, g.metric,
            g.index_type, g.inventory_root, g.faiss_file, g.ids_sha256, g.eval_figures, g.run_summary or {},
            g.summary, g.ids_checksum, g.parent_id, g.status,
        )  # fmt: skip

    @property
    def score_kind(self) -> str:
        """`similarity` (cosine, higher is closer) or `distance` (squared L2, lower is closer)."""
        return "similarity" if self.metric == "cosine" else "distance"


@dataclass
class Snapshot:
    """One consistent, read-only generation of an index."""

    index_dir: Path
    engine: Engine
    generation: GenerationInfo
    parts: list[Part]  # the generation's segments, each with its deletion set
    item_cache_size: int = ITEM_CACHE_SIZE
    _encoder: Encoder | None = None
    _labels: dict[str, np.ndarray] = field(default_factory=dict)
    _item_cache: dict[int, ItemInfo] = field(default_factory=dict)
    _label_counts: dict[str, int] | None = None
    _live_ids: np.ndarray | None = None
    _catalog_view: object | None = None  # indexer.catalog_view.CatalogView, made on first use
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def encoder(self) -> Encoder:
        """The model that built this generation (loaded on first use, from the index's own copy)."""
        with self._lock:
            if self._encoder is None:
                self._encoder = load_model_copy(self.index_dir, self.generation.model_fingerprint)
            return self._encoder

    @property
    def inventory_root(self) -> Path:
        return Path(self.generation.inventory_root)

    @property
    def segments(self) -> list[SegmentInfo]:
        return [p.segment.info for p in self.parts]

    @property
    def index_bytes(self) -> int:
        """Bytes of the segment files this generation reads."""
        return sum(max(0, s.byte_size) for s in self.segments)

    # --- search ---------------------------------------------------------------------------------

    def search(
        self,
        xq: np.ndarray,
        k: int,
        *,
        allowed: np.ndarray | None = None,
        params: faiss.SearchParameters | None = None,
        label: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """k nearest live items of each query: (D, I) of shape (nq, k), missing results -1.

        Exact across segments (the same top-k as one index of the live vectors). `allowed`: sorted
        int64 item ids (or a boolean mask indexed by item id); only those can be returned.
        `params`: per-query knobs (`indexer.ann.search_params`).
        """
        if allowed is not None:
            allowed = _allowed_ids(allowed)
        restrict = None
        if label is not None:
            fetch = self._fetch_label_ids
            restrict = [p.segment.label_ids(label, fetch) for p in self.parts]
        return search_parts(self.parts, xq, k, self.generation.metric, allowed, params, restrict)

    def search_vectors(
        self,
        xq: np.ndarray,
        k: int = 10,
        label: str | None = None,
        params: faiss.SearchParameters | None = None,
        allowed: np.ndarray | None = None,
    ) -> list[list[Hit]]:
        """Nearest items of each query vector, best first."""
        D, I = self.search(xq, k, allowed=allowed, params=params, label=label)  # noqa: E741
        items = self.items(np.unique(I[I >= 0]).tolist())
        return [
            [
                Hit(rank, int(i), float(d), items[int(i)])
                for rank, (d, i) in enumerate(
                    ((d, i) for d, i in zip(drow, irow, strict=False) if i >= 0 and int(i) in items), 1
                )
            ]
            for drow, irow in zip(D, I, strict=False)
        ]

    def search_images(self, batch: np.ndarray, k: int = 10, label: str | None = None) -> list[list[Hit]]:
        """Embed a normalised image batch (B, 3, S, S) with the index's model, then search."""
        return self.search_vectors(self.encoder.embed(batch), k, label)

    # --- products and filters (issue 12) --------------------------------------------------------

    def catalog_view(self):  # noqa: ANN201 - indexer.catalog_view.CatalogView
        """This snapshot's products, attribute types and filters (cached per snapshot)."""
        from indexer.catalog_view import CatalogView

        with self._lock:
            if self._catalog_view is None:
                self._catalog_view = CatalogView(self)
            return self._catalog_view

    def filter_ids(self, expr) -> np.ndarray:  # noqa: ANN001 - indexer.filters.Expr
        """Sorted ids of this snapshot's items that match a parsed filter."""
        return self.catalog_view().filter_ids(expr)

    # --- stored vectors and ids ------------------------------------------------------------------

    def live_ids(self) -> np.ndarray:
        """Sorted item ids of this generation."""
        with self._lock:
            if self._live_ids is None:
                ids = [p.live_ids() for p in self.parts]
                self._live_ids = np.sort(np.concatenate(ids)) if ids else np.zeros(0, np.int64)
            return self._live_ids

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of `ids` (as indexed: normalised for cosine), float32 (n, d).

        :raise KeyError: an id is not live in this generation.
        """
        ids = np.asarray(ids, np.int64).reshape(-1)
        out = np.empty((len(ids), self.generation.dim), np.float32)
        found = np.zeros(len(ids), bool)
        for p in self.parts:
            rows = p.segment.rows_of(ids)
            here = (rows >= 0) & ~found
            if len(p.deleted):
                here &= ~np.isin(ids, p.deleted)
            if here.any():
                out[here] = p.segment.vectors_at(rows[here])
                found |= here
        if not found.all():
            raise KeyError(f"item {int(ids[~found][0])} is not in generation {self.generation.id}")
        return out

    def vector(self, item_id: int) -> np.ndarray:
        """The stored vector of an item (as indexed: normalised for cosine).

        :raise KeyError: the item is not live in this generation.
        """
        return self.vectors(np.asarray([item_id]))[0]

    def contains(self, item_id: int) -> bool:
        ids = np.asarray([item_id], np.int64)
        return any(p.segment.rows_of(ids)[0] >= 0 and not np.isin(ids, p.deleted)[0] for p in self.parts)

    # --- catalog records -------------------------------------------------------------------------

    def items(self, ids: list[int]) -> dict[int, ItemInfo]:
        """Catalog records of `ids` (cached per snapshot: hits repeat, the catalog is the slow part).

        Every known id is answered whatever the cache size: the answer is built from the cache and
        the rows just fetched, never from what the cache still holds after evicting.
        """
        cache = self._item_cache
        wanted = list(dict.fromkeys(int(i) for i in ids))
        found: dict[int, ItemInfo] = {}
        missing = []
        for i in wanted:
            info = cache.get(i)
            if info is None:
                missing.append(i)
            else:
                found[i] = info
        if missing:
            fetched: dict[int, ItemInfo] = {}
            with Session(self.engine) as session:
                for chunk in chunks(missing, chunk_size(session)):
                    for row in session.execute(select(*ITEM_COLUMNS).where(Item.id.in_(chunk))):
                        fetched[row.id] = ItemInfo.from_row(row)
            found.update(fetched)
            with self._lock:
                if len(cache) + len(fetched) > self.item_cache_size:
                    cache.clear()
                room = max(0, self.item_cache_size - len(cache))
                cache.update(list(fetched.items())[:room])
        return {i: found[i] for i in wanted if i in found}

    def item(self, item_id: int) -> ItemInfo | None:
        """An item of this generation, or None (unknown, or not in this generation)."""
        if not self.contains(item_id):
            return None
        return self.items([item_id]).get(item_id)

    def label_ids(self, label: str) -> np.ndarray:
        """Sorted ids of this generation's items with `label` (cached per snapshot)."""
        with self._lock:
            cached = self._labels.get(label)
        if cached is None:
            parts = []
            for p in self.parts:
                ids = p.segment.label_ids(label, self._fetch_label_ids)
                parts.append(ids[~np.isin(ids, p.deleted)] if len(p.deleted) else ids)
            cached = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
            with self._lock:
                self._labels[label] = cached
        return cached

    def labels(self) -> dict[str, int]:
        """Label -> number of live items: the generation's summary, computed by the indexer."""
        summary = self.generation.summary
        if summary is not None and "labels" in summary:
            return dict(summary["labels"])
        if self._label_counts is None:  # a generation upgraded from schema 0001, not current then
            with Session(self.engine) as session:
                rows = session.execute(
                    select(Item.label, func.count())
                    .where(Item.deleted_generation.is_(None))
                    .group_by(Item.label)
                ).all()
            self._label_counts = {label: n for label, n in rows}
        return dict(self._label_counts)

    def _fetch_label_ids(self, label: str, lo: int, hi: int) -> np.ndarray:
        with Session(self.engine) as session:
            ids = session.scalars(select(Item.id).where(Item.label == label, Item.id.between(lo, hi))).all()
        return np.asarray(ids, np.int64)

    def image_path(self, item: ItemInfo) -> Path:
        """Where the item's image is: always inside the inventory root (paths come from the catalog)."""
        root = self.inventory_root.resolve()
        path = (root / item.path).resolve()
        if not path.is_relative_to(root):
            raise PermissionError(f"item {item.id} points outside the inventory")
        return path

    def close(self) -> None:
        """Release the catalog connection (the segments stay open while another snapshot uses them)."""
        self.engine.dispose()


def _allowed_ids(allowed: np.ndarray) -> np.ndarray:
    """Sorted unique int64 ids from an id array or a boolean mask indexed by item id."""
    allowed = np.asarray(allowed)
    if allowed.dtype == bool:
        return np.flatnonzero(allowed).astype(np.int64)
    allowed = allowed.astype(np.int64, copy=False).reshape(-1)
    if len(allowed) > 1 and not bool(np.all(allowed[1:] > allowed[:-1])):
        allowed = np.unique(allowed)
    return allowed


def model_path(index_dir: str | Path, fingerprint: str) -> Path:
    return Path(index_dir) / "models" / fingerprint


def load_model_copy(index_dir: str | Path, fingerprint: str) -> Encoder:
    """The encoder from the index's own model copy.

    :raise ModelCopyMissingError: the copy is missing, incomplete or no longer matches `fingerprint`.
    """
    path = model_path(index_dir, fingerprint)
    if not path.is_dir():
        raise ModelCopyMissingError(f"the index's model copy models/{fingerprint[:12]} is missing", index_dir)
    try:
        encoder = load_encoder(path)
    except ModelDirError as e:
        raise ModelCopyMissingError(
            f"the index's model copy models/{fingerprint[:12]} is damaged: {e}", index_dir
        ) from e
    if encoder.fingerprint != fingerprint:
        raise ModelCopyMissingError(
            f"the index's model copy models/{fingerprint[:12]} holds another model ({encoder.fingerprint[:12]})",
            index_dir,
        )
    return encoder


def has_catalog(index_dir: str | Path) -> bool:
    return (Path(index_dir) / DATABASE_FILE).is_file()


def current_generation_id(index_dir: str | Path, engine: Engine | None = None) -> int | None:
    """The id of the current generation (cheap: one row), or None when nothing is published."""
    if not has_catalog(index_dir):
        return None
    own = engine is None
    engine = engine or make_engine(_database_url(index_dir))
    try:
        with Session(engine) as session:
            state = session.get(IndexState, 1)
            return state.current_generation_id if state else None
    finally:
        if own:
            engine.dispose()


Verify = bool | Literal["full"]


def open_snapshot(
    index_dir: str | Path,
    *,
    mmap: bool = True,
    verify: Verify = True,
    checksums: bool = True,
    retries: int = 3,
    reuse: Snapshot | None = None,
) -> Snapshot:
    """Open the current generation of the index in `index_dir`, checked for consistency.

    With `mmap`, flat segments are memory-mapped read-only (processes share one copy). With
    `reuse`, segments (same id and checksum) and the encoder (same model) of that snapshot are
    shared instead of opened again: a new generation costs only its new segments. Every segment
    opened (not re-used) is checked for its size and, with `checksums`, its sha256 before FAISS
    reads it (hashed once per process, `indexer.damage.file_digest`).

    :raise IndexNotFoundError: nothing published yet.
    :raise DamagedGenerationError: a segment file is missing or damaged.
    :raise InconsistentIndexError: segment files and SQLite disagree.
    """
    index_dir = Path(index_dir)
    if not has_catalog(index_dir):
        raise IndexNotFoundError(f"no index in {index_dir} (build one with `imgrec index`)")
    url = _database_url(index_dir)
    if catalog_revision(url) != SCHEMA_REVISION:
        raise IndexNotFoundError(f"{index_dir}: catalog schema is not up to date (run `imgrec index` once)")
    known: dict[tuple[int, str], OpenSegment] = {}
    if reuse is not None and reuse.index_dir.resolve() == index_dir.resolve():
        known = {(p.segment.info.id, p.segment.info.sha256): p.segment for p in reuse.parts}
    engine = make_engine(url)
    try:
        for attempt in range(retries):
            with read_snapshot(engine) as session:  # one read transaction = one snapshot
                state = session.get(IndexState, 1)
                if state is None or state.current_generation_id is None:
                    raise IndexNotFoundError(f"no generation published in {index_dir} yet")
                gen = GenerationInfo.from_row(session.get(Generation, state.current_generation_id))
                listed = generation_segments(session, gen.id)
                fresh = [info for info, _ in listed if (info.id, info.sha256) not in known]
                catalog = (
                    {info.id: segment_live_item_ids(session, info.id) for info in fresh} if verify else {}
                )
                live = live_item_ids(session) if verify == "full" else None
            try:
                parts = [
                    Part(
                        known.get((info.id, info.sha256))
                        or OpenSegment.open(index_dir, info, mmap, checksum=checksums),
                        deleted,
                    )
                    for info, deleted in listed
                ]
            except FileNotFoundError as e:
                if attempt + 1 < retries and current_generation_id(index_dir, engine) != gen.id:
                    continue  # pruned between our read and the open: a newer generation is current
                missing = f"segments/{Path(e.filename or '?').name}"
                raise DamagedGenerationError(
                    f"generation {gen.id}: segment {missing} is missing", index_dir, missing
                ) from e
            except SegmentFileError as e:
                raise DamagedGenerationError(f"generation {gen.id}: {e.problem}", index_dir, e.file) from e
            snap = Snapshot(index_dir, engine, gen, parts)
            if verify:
                check_snapshot(snap, catalog, live)
            if reuse is not None and reuse.generation.model_fingerprint == gen.model_fingerprint:
                snap._encoder = reuse._encoder  # None if it never loaded: loads on first use
            return snap
        raise InconsistentIndexError(f"{index_dir}: generations changed {retries} times while opening")
    except BaseException:
        engine.dispose()
        raise


def generation_segments(session: Session, generation_id: int) -> list[tuple[SegmentInfo, np.ndarray]]:
    """The segments of a generation (by id), each with its deletion set."""
    rows = session.execute(
        select(Segment, GenerationSegment.deleted)
        .join(GenerationSegment, GenerationSegment.segment_id == Segment.id)
        .where(GenerationSegment.generation_id == generation_id)
        .order_by(Segment.id)
    ).all()
    return [(SegmentInfo.from_row(s), decode_ids(blob)) for s, blob in rows]


def live_item_ids(session: Session) -> np.ndarray:
    """Ids of the catalog's live items, sorted (int64).

    On SQLite, one aggregated string parsed by numpy: ~20x faster than a million row objects
    (1M items: 0.5 s instead of 8 s; README, "Performance").
    """
    return _ids_where(session, "deleted_generation IS NULL", {})


def segment_live_item_ids(session: Session, segment_id: int) -> np.ndarray:
    """Sorted ids of the live items whose vector the catalog places in `segment_id`."""
    return _ids_where(session, "segment_id = :s AND deleted_generation IS NULL", {"s": segment_id})


def _ids_where(session: Session, where: str, params: dict) -> np.ndarray:
    if session.get_bind().dialect.name == "sqlite":
        joined = session.execute(
            text(f"SELECT group_concat(id) FROM (SELECT id FROM items WHERE {where} ORDER BY id)"), params
        ).scalar()
        ids = np.fromstring(joined, dtype=np.int64, sep=",") if joined else np.zeros(0, np.int64)
    else:
        ids = np.asarray(session.scalars(text(f"SELECT id FROM items WHERE {where}"), params).all(), np.int64)
    return _sorted(ids)  # never rely on group_concat's order


def _sorted(a: np.ndarray) -> np.ndarray:
    """`a` sorted (returned as is when it already is: the usual case, and an O(n) check)."""
    return a if len(a) < 2 or bool(np.all(a[1:] >= a[:-1])) else np.sort(a)


def check_snapshot(
    snap: Snapshot,
    catalog_segments: dict[int, np.ndarray] | None = None,
    catalog_live: np.ndarray | None = None,
) -> None:
    """Segments, deletion sets and catalog must agree about the generation's live items.

    Always: the live count and the ids checksum recorded for the generation, and every deletion
    set masks only ids its segment holds. `catalog_segments` (segment id -> the catalog's live
    items of that segment) and `catalog_live` (all live items) are compared when given.

    :raise InconsistentIndexError: they do not agree.
    """
    gen, problems = snap.generation, []
    live = sum(p.live_count for p in snap.parts)
    if live != gen.item_count:
        problems.append(f"its segments hold {live} live vectors, the catalog records {gen.item_count}")
    for p in snap.parts:
        if len(p.deleted) and not bool(np.all(p.segment.rows_of(p.deleted) >= 0)):
            problems.append(f"segment {p.segment.info.file} masks ids it does not hold")
    if gen.ids_checksum is not None:
        total = sum(p.segment.ids_sum - ids_sum(p.deleted) for p in snap.parts)
        if checksum_hex(total) != gen.ids_checksum:
            problems.append("the live ids of its segments differ from the ids recorded for it")
    for p in snap.parts:
        want = (catalog_segments or {}).get(p.segment.info.id)
        if want is not None:
            problems += _compare(p.live_ids(), want, f"segment {p.segment.info.file}")
    if catalog_live is not None:
        problems += _compare(snap.live_ids(), _sorted(np.asarray(catalog_live, np.int64)), "the index")
    if problems:
        raise InconsistentIndexError(f"generation {gen.id} is inconsistent: " + "; ".join(problems))


def _compare(have: np.ndarray, catalog: np.ndarray, where: str) -> list[str]:
    if np.array_equal(have, catalog):
        return []
    missing, extra = np.setdiff1d(catalog, have), np.setdiff1d(have, catalog)
    return [
        f"{len(missing)} catalog items not in {where}, {len(extra)} ids in {where} not live in the catalog"
    ]
