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
import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.bulk import chunk_size, chunks
from indexer.db import Item, read_snapshot
from indexer.filter_columns import ItemColumns, evaluate, read_item_columns
from indexer.filter_sql import attribute_types_of
from indexer.filters import Expr, parse_filter, to_text
from indexer.products import ProductRecord, attribute_facets, product_images, product_records

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
        """Whether the generation was built with a product catalog (search groups by product then)."""
        return "catalog" in (self.snap.generation.summary or {})

    @property
    def attribute_types(self) -> dict[str, str]:
        """The catalog's attributes (name -> string | number | boolean)."""
        if self._types is None:
            stored = ((self.snap.generation.summary or {}).get("catalog") or {}).get("attribute_types")
            if stored is None:
                with Session(self.snap.engine) as session:
                    stored = attribute_types_of(session)
            self._types = dict(stored)
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

    def products_of(self, item_ids: list[int], with_images: bool = False) -> dict[int, ProductRecord | None]:
        """The product of each item (None: the item has none); with `with_images`, each product's
        images are looked up in the same round trip (for grouped answers: `images_of`)."""
        wanted = list(dict.fromkeys(int(i) for i in item_ids))
        missing = [i for i in wanted if i not in self._product_of]
        if missing:
            with Session(self.snap.engine) as session:
                found: dict[int, int | None] = dict.fromkeys(missing)
                images: dict[int, list[tuple[int, str]]] = {}
                for chunk in chunks(missing, chunk_size(session)):
                    if with_images:  # every image of the hits' products: gives the hits' products too
                        of_hits = sa.select(Item.product_id).where(
                            Item.id.in_(chunk), Item.product_id.is_not(None)
                        )
                        query = (
                            sa.select(Item.product_id, Item.id, Item.path)
                            .where(Item.product_id.in_(of_hits))  # live ones kept by _in_snapshot
                            .order_by(Item.id)
                        )
                        for pid, i, path in session.execute(query):
                            images.setdefault(pid, []).append((i, path))
                            if i in found:
                                found[i] = pid
                    else:
                        query = sa.select(Item.id, Item.product_id).where(Item.id.in_(chunk))
                        found.update((i, p) for i, p in session.execute(query))
                pids = [p for p in dict.fromkeys(found.values()) if p is not None and p not in self._records]
                records = product_records(session, pids) if pids else {}
            self._remember(self._product_of, found)
            self._remember(self._records, records)
            if images:
                self._remember(self._images, self._in_snapshot(images))
        links = {i: self._product_of.get(i) for i in wanted}
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
        """Each product's images in this snapshot: [(item id, path)] in item id order."""
        missing = [p for p in dict.fromkeys(product_ids) if p not in self._images]
        if missing:
            with Session(self.snap.engine) as session:
                got = product_images(session, missing)
            self._remember(self._images, self._in_snapshot({p: got.get(p, []) for p in missing}))
        return {p: self._images.get(p, []) for p in product_ids}

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
