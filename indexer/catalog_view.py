"""One snapshot's products and filters: what search needs from the product tables, cached per snapshot.

    view = snap.catalog_view()
    expr = view.parse("color = \"red\" AND price < 50")   # FilterError: bad filter (API 400, CLI exit 2)
    ids = view.filter_ids(expr)                            # sorted item ids of the snapshot that match
    view.products_of([item ids]) / view.images_of([products.id]) / view.facets()

The filter columns (`filter_columns.ItemColumns`) are read once per snapshot, on the first filter,
and the ids of the last `FILTER_CACHE` filters are kept (a shop's filters repeat). Product records
are read by id in chunks and cached. Like `Snapshot.items`, records are the catalog's current rows.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy.orm import Session

from indexer.bulk import chunk_size, chunks
from indexer.db import read_snapshot
from indexer.filter_columns import ItemColumns, evaluate, read_item_columns
from indexer.filter_sql import attribute_types_of
from indexer.filters import Expr, parse_filter, to_text
from indexer.products import ProductRecord, attribute_facets, product_records

if TYPE_CHECKING:
    from indexer.store import Snapshot

FILTER_CACHE = 64  # filters whose matching ids a snapshot keeps
RECORD_CACHE = 100_000  # product records and item -> product links kept per snapshot


class CatalogView:
    """Products, attribute types and filters of one snapshot (thread-safe; built lazily)."""

    def __init__(self, snap: Snapshot):
        self.snap = snap
        self._lock = threading.Lock()
        self._types: dict[str, str] | None = None
        self._columns: ItemColumns | None = None
        self._filters: OrderedDict[str, np.ndarray] = OrderedDict()
        self._product_of: dict[int, int | None] = {}
        self._records: dict[int, ProductRecord] = {}
        self._images: dict[int, list[tuple[int, str]]] = {}

    @property
    def has_catalog(self) -> bool:
        """Whether the generation has products, from a catalog file or uploads (search groups by
        product then)."""
        summary = self.snap.generation.summary or {}
        return "catalog" in summary or "api_attribute_types" in summary

    @property
    def attribute_types(self) -> dict[str, str]:
        """The attributes (name -> string | number | boolean): the catalog file's and the uploads'."""
        if self._types is None:
            summary = self.snap.generation.summary or {}
            stored = (summary.get("catalog") or {}).get("attribute_types")
            api = summary.get("api_attribute_types")
            if stored is None and api is None:
                with Session(self.snap.engine) as session:
                    self._types = attribute_types_of(session)
            else:
                self._types = {**(api or {}), **(stored or {})}
        return self._types

    def parse(self, text: str) -> Expr:
        """:raise FilterError: bad syntax, unknown name or wrong type (points at the position)."""
        return parse_filter(text, self.attribute_types)

    # --- filters -----------------------------------------------------------------------------

    def columns(self) -> ItemColumns:
        """The snapshot's filter columns (read on first use: seconds at 1M items)."""
        with self._lock:
            if self._columns is None:
                with read_snapshot(self.snap.engine) as session:
                    self._columns = read_item_columns(session, self.snap.live_ids())
            return self._columns

    def filter_ids(self, expr: Expr) -> np.ndarray:
        """Sorted ids of this snapshot's items that match `expr`."""
        key = to_text(expr)
        with self._lock:
            hit = self._filters.get(key)
            if hit is not None:
                self._filters.move_to_end(key)
                return hit
        cols = self.columns()
        ids = cols.ids[evaluate(expr, cols)]
        ids.flags.writeable = False
        with self._lock:
            self._filters[key] = ids
            while len(self._filters) > FILTER_CACHE:
                self._filters.popitem(last=False)
        return ids

    # --- products ----------------------------------------------------------------------------

    def product_ids_of(self, item_ids: list[int]) -> dict[int, int | None]:
        """products.id of each item (None: the item has none); cached."""
        wanted = list(dict.fromkeys(int(i) for i in item_ids))
        missing = [i for i in wanted if i not in self._product_of]
        if missing:
            found: dict[int, int | None] = dict.fromkeys(missing)
            found.update(self._rows("SELECT id, product_id FROM items WHERE id IN ({})", missing))
            self._remember(self._product_of, found)
        return {i: self._product_of.get(i) for i in wanted}

    def products_of(self, item_ids: list[int]) -> dict[int, ProductRecord | None]:
        """The product of each item (None: the item has none)."""
        links = self.product_ids_of(item_ids)
        records = self.records([p for p in links.values() if p is not None])
        return {i: records.get(p) if p is not None else None for i, p in links.items()}

    def records(self, product_ids: list[int]) -> dict[int, ProductRecord]:
        """Product records by products.id (cached)."""
        missing = [p for p in dict.fromkeys(product_ids) if p not in self._records]
        if missing:
            with Session(self.snap.engine) as session:
                self._remember(self._records, product_records(session, missing))
        return {p: self._records[p] for p in product_ids if p in self._records}

    def images_of(self, product_ids: list[int]) -> dict[int, list[tuple[int, str]]]:
        """Each product's images in this snapshot: [(item id, path)] in item id order (cached)."""
        missing = [p for p in dict.fromkeys(product_ids) if p not in self._images]
        if missing:
            got: dict[int, list[tuple[int, str]]] = {p: [] for p in missing}
            sql = "SELECT product_id, id, path FROM items WHERE product_id IN ({}) ORDER BY id"
            for pid, i, path in self._rows(sql, missing):
                got[pid].append((i, path))
            self._remember(self._images, self._in_snapshot(got))
        return {p: self._images.get(p, []) for p in product_ids}

    def _rows(self, sql: str, ids: list[int]) -> list[tuple]:
        """Rows of `sql` (its `IN ({})` filled with one placeholder per id, in chunks): these look-ups
        run for every query, so they skip the ORM (its statement building costs more than SQLite)."""
        out: list[tuple] = []
        with Session(self.snap.engine) as session:
            conn = session.connection()
            for chunk in chunks(ids, chunk_size(session)):
                out += conn.exec_driver_sql(sql.format(", ".join("?" * len(chunk))), tuple(chunk)).all()
        return out

    def _in_snapshot(self, images: dict[int, list[tuple[int, str]]]) -> dict[int, list[tuple[int, str]]]:
        """Only the images live in this snapshot (the catalog's rows may be newer)."""
        live = self.snap.live_ids()
        out = {}
        for p, pairs in images.items():
            ids = np.asarray([i for i, _ in pairs], np.int64)
            keep = (
                live[np.minimum(np.searchsorted(live, ids), len(live) - 1)] == ids if len(live) else ids < 0
            )
            out[p] = [pair for pair, k in zip(pairs, keep, strict=True) if k]
        return out

    def facets(self) -> list[dict]:
        """The generation's attribute facets (stored by the indexer; computed for older generations)."""
        stored = (self.snap.generation.summary or {}).get("facets")
        if stored is not None:
            return stored
        with Session(self.snap.engine) as session:
            return attribute_facets(session)

    def _remember(self, cache: dict, found: dict) -> None:
        with self._lock:
            if len(cache) + len(found) > RECORD_CACHE:
                cache.clear()
            cache.update(found)
