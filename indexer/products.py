"""Products in the catalog database: store a catalog file's products, link images, read and list them.

    sync = sync_products(session, catalog, generation_id)   # the indexer, inside its publish transaction
    changed = link_items(session, catalog.image_products, sync.ids)
    page = list_products(session, expr, types, limit=50, cursor=None)   # GET /v1/products
    facets = attribute_facets(session)                                  # GET /v1/attributes

"Live" products are those of the current catalog (`deleted_generation IS NULL`) with at least one
live image; listing and facets count those. No statement carries one parameter per product or
image: look-ups go in chunks of `CHUNK` ids, updates through executemany.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from indexer.catalog_file import Catalog, CatalogProduct
from indexer.db import (
    VALUE_COLUMNS,
    AttributeType,
    GenerationChange,
    Item,
    Product,
    ProductAttribute,
    ProductChange,
)
from indexer.filter_sql import product_condition
from indexer.filters import Expr

ITEMS = Item.__table__

CHUNK = 500  # ids per IN (...) look-up
MAX_FACET_VALUES = 100  # distinct values listed per string attribute (the most frequent)

products = Product.__table__
attributes = ProductAttribute.__table__
LIVE_ITEMS = ITEMS.c.deleted_generation.is_(None)


@dataclass(frozen=True)
class ProductRecord:
    """A product as results and the API show it."""

    id: int  # products.id
    product_id: str  # the catalog's product_id (SKU)
    title: str | None
    url: str | None
    price: float | None
    attributes: dict[str, str | float | bool]

    def as_dict(self) -> dict:
        """The `product` object of the API (its `id` is the catalog's product_id)."""
        return {
            "id": self.product_id,
            "title": self.title,
            "url": self.url,
            "price": self.price,
            "attributes": self.attributes,
        }


@dataclass
class ProductSync:
    """What `sync_products` changed."""

    ids: dict[str, int] = field(default_factory=dict)  # product_id -> products.id, every catalog product
    added: list[int] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)  # metadata changed (or a deleted product back)
    deleted: list[int] = field(default_factory=list)
    unchanged: int = 0
    types_changed: bool = False

    @property
    def changes_anything(self) -> bool:
        return bool(self.added or self.updated or self.deleted or self.types_changed)


# -- writing -----------------------------------------------------------------------------------


def sync_products(session: Session, catalog: Catalog, generation_id: int) -> ProductSync:
    """Make the product tables hold `catalog` (in the caller's transaction); record each change.

    A product whose `metadata_sha256` is unchanged is not touched. Changed and removed products get a
    `ProductChange` row whose `previous` holds what rollback restores; removed products are marked
    deleted (kept, so a rollback or a later catalog can bring them back under the same id).
    Products and attribute types made over the API (`origin` "api") are not the file's to remove:
    they stay until the file lists their product_id or attribute name, which then become the file's.
    """
    sync = ProductSync()
    stored = {
        key: (pid, digest, deleted)
        for pid, key, digest, deleted in session.execute(
            sa.select(
                products.c.id,
                products.c.product_key,
                products.c.metadata_sha256,
                products.c.deleted_generation,
            )
        )
    }
    origins = dict(session.execute(sa.select(products.c.id, products.c.origin)).all())
    old_types = {
        n: (t, o) for n, t, o in session.execute(sa.select(AttributeType.name, AttributeType.type, AttributeType.origin))
    }  # fmt: skip
    want_types = {n: (t, "catalog") for n, t in catalog.attribute_types.items()} | {
        n: (t, o) for n, (t, o) in old_types.items() if o == "api" and n not in catalog.attribute_types
    }
    if old_types != want_types:
        session.execute(sa.delete(AttributeType))
        if want_types:
            session.execute(
                sa.insert(AttributeType),
                [{"name": n, "type": t, "origin": o} for n, (t, o) in want_types.items()],
            )
        sync.types_changed = True

    new = [p for key, p in catalog.products.items() if key not in stored]
    if new:
        session.execute(
            sa.insert(products),
            [
                {
                    "product_key": p.product_id,
                    **_fields(p),
                    "added_generation": generation_id,
                    "deleted_generation": None,
                    "origin": "catalog",
                }
                for p in new
            ],  # fmt: skip
        )
        stored |= {
            key: (pid, digest, None)
            for pid, key, digest in session.execute(
                sa.select(products.c.id, products.c.product_key, products.c.metadata_sha256).where(
                    products.c.added_generation == generation_id
                )
            )
            if key not in stored
        }
        sync.added = [stored[p.product_id][0] for p in new]
    added = set(sync.added)
    changed: list[tuple[int, CatalogProduct]] = []
    for key, product in catalog.products.items():
        pid, digest, deleted = stored[key]
        sync.ids[key] = pid
        if pid in added:
            changed.append((pid, product))
        elif digest != product.metadata_sha256 or deleted is not None:
            sync.updated.append(pid)
            changed.append((pid, product))
        else:
            sync.unchanged += 1
    sync.deleted = [
        pid
        for key, (pid, _, deleted) in stored.items()
        if key not in catalog.products and deleted is None and origins.get(pid) != "api"
    ]

    # an attribute name the file now types otherwise (an upload's, or the file's own before): the
    # values of the old type that no synced row replaces are dropped, as an update of their product
    retyped = {n: t for n, (t, _) in want_types.items() if n in old_types and old_types[n][0] != t}
    skip = {pid for pid, _ in changed} | set(sync.deleted)
    stale = {n: [p for p in _other_typed(session, n, t) if p not in skip] for n, t in retyped.items()}
    sync.updated.extend(dict.fromkeys(p for pids in stale.values() for p in pids if p not in sync.updated))

    previous = product_records(session, sync.updated + sync.deleted)  # before any change
    stored_by_id = {pid: (digest, deleted) for pid, digest, deleted in stored.values()}
    updates = [
        {"pid": pid, **_fields(p), "deleted_generation": None, "origin": "catalog"}
        for pid, p in changed
        if pid not in added
    ]
    if updates:
        session.execute(sa.update(products).where(products.c.id == sa.bindparam("pid")), updates)
    for chunk in _chunks(pid for pid, _ in changed):
        session.execute(sa.delete(attributes).where(attributes.c.product_id.in_(chunk)))
    for name, pids in stale.items():
        for chunk in _chunks(pids):
            session.execute(
                sa.delete(attributes).where(attributes.c.name == name, attributes.c.product_id.in_(chunk))
            )
    rows = [
        {
            "product_id": pid,
            "name": name,
            **dict.fromkeys(VALUE_COLUMNS.values()),
            VALUE_COLUMNS[catalog.attribute_types[name]]: value,
        }  # fmt: skip
        for pid, p in changed
        for name, value in p.attributes.items()
    ]
    if rows:
        session.execute(sa.insert(attributes), rows)
    if sync.deleted:
        session.execute(
            sa.update(products).where(products.c.id == sa.bindparam("pid")),
            [{"pid": pid, "deleted_generation": generation_id} for pid in sync.deleted],
        )
    session.add_all(
        [ProductChange(generation_id=generation_id, product_id=pid, change="added") for pid in sync.added]
        + [
            ProductChange(
                generation_id=generation_id,
                product_id=pid,
                change=kind,
                previous=_previous(previous[pid], kind, *stored_by_id[pid], origins.get(pid, "catalog")),
            )
            for kind, pids in (("updated", sync.updated), ("deleted", sync.deleted))
            for pid in pids
        ]
    )
    return sync


def link_items(
    session: Session,
    image_products: dict[str, str],
    ids: dict[str, int],
    items: sa.Table = ITEMS,
    only: list[int] | None = None,
) -> dict[int, int | None]:
    """Point every live item (or the items `only`) at its product (`image_products`: path ->
    product_id; others: none, except an upload (under `_uploads/`) the file does not list: it keeps
    its product while that product is live, as `POST /v1/items` linked it).

    Returns {item id: previous products.id} for the items whose product changed (for rollback).
    """
    live = items.c.deleted_generation.is_(None)
    query = sa.select(items.c.id, items.c.path, items.c.product_id).where(live)
    if only is None:
        current = session.execute(query).all()
    else:
        current = [
            row for chunk in _chunks(only) for row in session.execute(query.where(items.c.id.in_(chunk)))
        ]
    kept = _live_products(session, [p for _, path, p in current if p is not None and _is_upload(path)])
    updates = []
    for item_id, path, product in current:
        key = image_products.get(path)
        want = ids[key] if key is not None else None
        if key is None and product in kept and _is_upload(path):
            want = product
        if want != product:
            updates.append({"iid": item_id, "pid": want, "was": product})
    if updates:
        session.execute(
            sa.update(items).where(items.c.id == sa.bindparam("iid")).values(product_id=sa.bindparam("pid")),
            [{"iid": u["iid"], "pid": u["pid"]} for u in updates],
        )
    return {u["iid"]: u["was"] for u in updates}


def _other_typed(session: Session, name: str, kind: str) -> list[int]:
    """Products holding a value of attribute `name` that is not of type `kind`."""
    column = attributes.c[VALUE_COLUMNS[kind]]
    query = sa.select(attributes.c.product_id).where(attributes.c.name == name, column.is_(None))
    return list(session.scalars(query))


def _is_upload(path: str) -> bool:
    from indexer.jobs import UPLOADS

    return path.startswith(UPLOADS + "/")


def _live_products(session: Session, ids: list[int]) -> set[int]:
    """The ids among `ids` of products not deleted."""
    live: set[int] = set()
    for chunk in _chunks(list(dict.fromkeys(ids))):
        live.update(
            session.scalars(
                sa.select(products.c.id).where(
                    products.c.id.in_(chunk), products.c.deleted_generation.is_(None)
                )
            )
        )
    return live


def _fields(p: CatalogProduct) -> dict:
    return {"title": p.title, "url": p.url, "price": p.price, "metadata_sha256": p.metadata_sha256}


def _previous(
    record: ProductRecord, kind: str, digest: str, deleted_generation: int | None, origin: str = "catalog"
) -> dict | None:
    """What rollback restores (a deleted product only needs un-deleting: None)."""
    if kind == "deleted":
        return None
    return {
        "title": record.title,
        "url": record.url,
        "price": record.price,
        "attributes": record.attributes,
        "metadata_sha256": digest,
        "deleted_generation": deleted_generation,
        "origin": origin,
    }


# -- reading -----------------------------------------------------------------------------------


def product_records(session: Session, ids: Iterable[int]) -> dict[int, ProductRecord]:
    """Products by products.id, with their attributes (absent ids are left out)."""
    ids = list(dict.fromkeys(ids))
    fields: dict[int, tuple] = {}
    attrs: dict[int, dict] = {}
    for chunk in _chunks(ids):
        for row in session.execute(
            sa.select(
                products.c.id, products.c.product_key, products.c.title, products.c.url, products.c.price
            ).where(products.c.id.in_(chunk))
        ):
            fields[row[0]] = tuple(row[1:])
        for pid, name, s, n, b in session.execute(
            sa.select(
                attributes.c.product_id, attributes.c.name, *(attributes.c[c] for c in VALUE_COLUMNS.values())
            )
            .where(attributes.c.product_id.in_(chunk))
            .order_by(attributes.c.product_id, attributes.c.name)
        ):
            attrs.setdefault(pid, {})[name] = next(v for v in (s, n, b) if v is not None)
    return {pid: ProductRecord(pid, *fields[pid], attrs.get(pid, {})) for pid in ids if pid in fields}


def product_id_of(session: Session, key: str) -> int | None:
    """products.id of a live catalog product_id, or None."""
    return session.scalar(
        sa.select(products.c.id).where(products.c.product_key == key, products.c.deleted_generation.is_(None))
    )


def product_images(
    session: Session, ids: Iterable[int], live: ColumnElement = LIVE_ITEMS
) -> dict[int, list[tuple[int, str]]]:
    """The live images of products: products.id -> [(item id, path)] in item id order."""
    out: dict[int, list[tuple[int, str]]] = {}
    for chunk in _chunks(list(dict.fromkeys(ids))):
        query = (
            sa.select(ITEMS.c.product_id, ITEMS.c.id, ITEMS.c.path)
            .where(ITEMS.c.product_id.in_(chunk), live)
            .order_by(ITEMS.c.id)
        )
        for pid, item_id, path in session.execute(query):
            out.setdefault(pid, []).append((item_id, path))
    return out


@dataclass(frozen=True)
class ProductPage:
    products: list[ProductRecord]
    next_cursor: str | None  # None: this was the last page


class BadCursorError(ValueError):
    """A cursor that `list_products` did not make (the API answers 400)."""


def list_products(
    session: Session,
    expr: Expr | None,
    attribute_types: dict[str, str],
    *,
    limit: int,
    cursor: str | None = None,
    live: ColumnElement = LIVE_ITEMS,
) -> ProductPage:
    """Live products matching `expr` (None: all), in products.id order, `limit` per page.

    The cursor is opaque to clients (it holds the last id shown): pages stay stable while the
    catalog changes, and a page never repeats or skips a product that stays.

    :raise BadCursorError: `cursor` was not made here.
    """
    after = _decode_cursor(cursor) if cursor else 0
    has_live = sa.select(ITEMS.c.id).where(ITEMS.c.product_id == products.c.id, live).exists()
    where = product_condition(expr, attribute_types, live) if expr is not None else has_live
    query = (
        sa.select(products.c.id)
        .where(products.c.deleted_generation.is_(None), products.c.id > after, where)
        .order_by(products.c.id)
        .limit(limit + 1)
    )
    ids = session.scalars(query).all()
    records = product_records(session, ids[:limit])
    more = len(ids) > limit
    return ProductPage([records[i] for i in ids[:limit]], _encode_cursor(ids[limit - 1]) if more else None)


def _encode_cursor(after: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": after}).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        after = data["after"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise BadCursorError("bad cursor: pass the next_cursor of a previous page") from None
    if not isinstance(after, int) or isinstance(after, bool) or after < 0:
        raise BadCursorError("bad cursor: pass the next_cursor of a previous page")
    return after


def attribute_facets(session: Session, live: ColumnElement = LIVE_ITEMS) -> list[dict]:
    """`price` and each attribute over live products: strings' and booleans' values with counts (most
    frequent first), numbers' min, max and count of products that have one. The reference for the
    per-generation facets the indexer stores."""
    live_products = (
        sa.select(products.c.id)
        .where(
            products.c.deleted_generation.is_(None),
            sa.select(ITEMS.c.id).where(ITEMS.c.product_id == products.c.id, live).exists(),
        )
        .subquery()
    )
    price = products.c.price
    low, high, count = session.execute(
        sa.select(sa.func.min(price), sa.func.max(price), sa.func.count(price)).where(
            products.c.id.in_(sa.select(live_products.c.id))
        )
    ).one()
    facets = [{"name": "price", "type": "number", "min": low, "max": high, "count": count}]
    a = attributes
    for name, kind in session.execute(
        sa.select(AttributeType.name, AttributeType.type).order_by(AttributeType.name)
    ):
        value = a.c[VALUE_COLUMNS[kind]]
        scope = sa.and_(
            a.c.name == name, a.c.product_id.in_(sa.select(live_products.c.id)), value.is_not(None)
        )
        facet: dict = {"name": name, "type": kind}
        if kind == "number":
            low, high, count = session.execute(
                sa.select(sa.func.min(value), sa.func.max(value), sa.func.count()).where(scope)
            ).one()
            facet |= {"min": low, "max": high, "count": count}
        else:
            counted = sa.select(value, sa.func.count().label("n")).where(scope).group_by(value)
            rows = session.execute(counted.order_by(sa.desc("n"), value).limit(MAX_FACET_VALUES + 1)).all()
            values = [{"value": bool(v) if kind == "boolean" else v, "count": n} for v, n in rows]
            facet |= {"values": values[:MAX_FACET_VALUES], "more_values": len(values) > MAX_FACET_VALUES}
        facets.append(facet)
    return facets


def _chunks(ids: Iterable[int]) -> Iterator[list[int]]:
    chunk: list[int] = []
    for i in ids:
        chunk.append(i)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# -- the indexer's steps -------------------------------------------------------------------------

MAX_PROBLEMS_STORED = 200  # catalog row problems kept in a generation's summary (`imgrec status`)


def catalog_summary(catalog: Catalog) -> dict:
    """What a generation records about the catalog it was built with (its summary's "catalog")."""
    return {
        "file": catalog.path.name,
        "sha256": catalog.sha256,
        "rows": catalog.rows,
        "products": len(catalog.products),
        "images": sum(len(p.images) for p in catalog.products.values()),
        "attribute_types": dict(catalog.attribute_types),
        "notes": list(catalog.notes),
        "problems": [str(p) for p in catalog.problems[:MAX_PROBLEMS_STORED]],
        "n_problems": len(catalog.problems),
    }


def store_catalog(
    session: Session,
    catalog: Catalog,
    generation_id: int,
    *,
    record_changes: bool,
    only: list[int] | None = None,
) -> ProductSync:
    """The publish transaction's product step: sync the products, link every live item (or, when
    the catalog is already stored, the items `only`: those just embedded) to its product, and (with
    `record_changes`) record each relinked item for rollback."""
    sync = sync_products(session, catalog, generation_id)
    relinked = link_items(session, catalog.image_products, sync.ids, only=only)
    if record_changes and relinked:
        session.execute(
            sa.insert(GenerationChange),
            [
                {
                    "generation_id": generation_id,
                    "item_id": i,
                    "change": "relinked",
                    "previous": {"product_id": p},
                }
                for i, p in relinked.items()
            ],
        )
    return sync


def undo_product_changes(session: Session, generation_ids: list[int], undone_id: int) -> None:
    """Rollback's product step: restore the products changed by `generation_ids`, newest first."""
    if not generation_ids:
        return
    changes = session.scalars(
        sa.select(ProductChange)
        .where(ProductChange.generation_id.in_(generation_ids))
        .order_by(ProductChange.id.desc())
    ).all()
    for ch in changes:
        if ch.change == "added":
            values = {"deleted_generation": undone_id}
        elif ch.change == "deleted":
            values = {"deleted_generation": None}
        else:  # updated: fields, attributes and digest as they were
            prev = ch.previous or {}
            values = {
                k: prev.get(k) for k in ("title", "url", "price", "metadata_sha256", "deleted_generation")
            } | {"origin": prev.get("origin", "catalog")}
            session.execute(sa.delete(attributes).where(attributes.c.product_id == ch.product_id))
            types = dict(session.execute(sa.select(AttributeType.name, AttributeType.type)).all())
            rows = [
                {
                    "product_id": ch.product_id,
                    "name": name,
                    **dict.fromkeys(VALUE_COLUMNS.values()),
                    VALUE_COLUMNS[_type_of(value, types.get(name))]: value,
                }  # fmt: skip
                for name, value in (prev.get("attributes") or {}).items()
            ]
            if rows:
                session.execute(sa.insert(attributes), rows)
        session.execute(sa.update(products).where(products.c.id == ch.product_id).values(**values))


def restore_attribute_types(
    session: Session, types: dict[str, str], api_types: dict[str, str] | None = None
) -> None:
    """Make `attribute_types` hold `types` (rollback: the target generation's catalog types) and
    `api_types` (those made by uploads, `origin` "api")."""
    session.execute(sa.delete(AttributeType))
    rows = [{"name": n, "type": t, "origin": "api"} for n, t in (api_types or {}).items() if n not in types]
    rows += [{"name": n, "type": t, "origin": "catalog"} for n, t in types.items()]
    if rows:
        session.execute(sa.insert(AttributeType), rows)


def api_attribute_types(session: Session) -> dict[str, str]:
    """The attribute types made by uploads (a generation's summary keeps them, for rollback)."""
    query = sa.select(AttributeType.name, AttributeType.type).where(AttributeType.origin == "api")
    return dict(session.execute(query.order_by(AttributeType.name)).all())


def _type_of(value: object, known: str | None) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return known if known == "string" else "string"


# -- PATCH /v1/products/{id}: metadata changes over the API ---------------------------------------

PATCH_FIELDS = ("title", "url", "price")


class PatchError(ValueError):
    """A product change that cannot apply (the API answers 400; the indexer fails the job)."""


def check_patch(changes: dict, types: dict[str, str]) -> dict:
    """The normalized changes of a PATCH (`title`, `url`, `price`, `attributes` {name: value|None}).

    Attributes must be known (their type comes from the catalog file) and of their type; None
    removes one (or clears a field).

    :raise PatchError: an unknown field or attribute, or a value of the wrong type.
    """
    if not isinstance(changes, dict):
        raise PatchError("send a JSON object with any of title, url, price, attributes")
    unknown = sorted(set(changes) - {*PATCH_FIELDS, "attributes"})
    if unknown:
        raise PatchError(f"unknown field {unknown[0]!r}: send any of title, url, price, attributes")
    if not changes:
        raise PatchError("nothing to change: send any of title, url, price, attributes")
    out: dict = {}
    for name in ("title", "url"):
        if name in changes:
            value = changes[name]
            if value is not None and not isinstance(value, str):
                raise PatchError(f"{name} must be a string or null")
            out[name] = value
    if "price" in changes:
        value = changes["price"]
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
        ):
            raise PatchError(f"price must be a number or null, got {value!r}")
        out["price"] = float(value) if value is not None else None
    if "attributes" in changes:
        given = changes["attributes"]
        if not isinstance(given, dict):
            raise PatchError("attributes must be an object {name: value}")
        attrs = {}
        for name, value in given.items():
            kind = types.get(name)
            if kind is None:
                known = ", ".join(sorted(types)) or "none"
                raise PatchError(
                    f"unknown attribute {name!r} (known: {known}); new attributes come from the catalog file"
                )
            if value is not None and not _is_a(value, kind):
                raise PatchError(f"attribute {name!r} is a {kind}, got {value!r}")
            if kind == "number" and value is not None:
                value = float(value)
            attrs[name] = value
        out["attributes"] = attrs
    return out


def patch_product(session: Session, pid: int, changes: dict, generation_id: int) -> None:
    """Apply checked `changes` to live product `pid` in the caller's transaction, with a
    `ProductChange` ("updated", `previous`) that rollback restores. The product's `metadata_sha256`
    (its catalog row's digest) is kept: the next catalog sync overwrites the change only if the
    file's own row for this product changed (see docs/products.md)."""
    record = product_records(session, [pid])[pid]
    digest, deleted, origin = session.execute(
        sa.select(products.c.metadata_sha256, products.c.deleted_generation, products.c.origin).where(
            products.c.id == pid
        )
    ).one()
    session.add(
        ProductChange(
            generation_id=generation_id,
            product_id=pid,
            change="updated",
            previous=_previous(record, "updated", digest, deleted, origin),
        )
    )
    fields = {k: v for k, v in changes.items() if k in PATCH_FIELDS}
    if fields:
        session.execute(sa.update(products).where(products.c.id == pid).values(**fields))
    types = dict(session.execute(sa.select(AttributeType.name, AttributeType.type)).all())
    for name, value in (changes.get("attributes") or {}).items():
        session.execute(
            sa.delete(attributes).where(attributes.c.product_id == pid, attributes.c.name == name)
        )
        if value is not None:
            session.execute(
                sa.insert(attributes),
                [{"product_id": pid, "name": name, **dict.fromkeys(VALUE_COLUMNS.values()),
                  VALUE_COLUMNS[types[name]]: value}],
            )  # fmt: skip


def _is_a(value: object, kind: str) -> bool:
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, str)
