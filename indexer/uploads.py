"""Product fields of an upload: `POST /v1/items` with `product_id` (and `title`, `url`, `price`,
attributes) creates that product or updates it, in the publish that adds the item.

    fields = product_fields(form, json_attributes, types)   # the API: checked, typed; UploadError -> 400
    ready, failed = check_uploads(jobs, types)               # the batch: what applies, and why not
    apply_upload(session, upload, item_id, generation_id)    # in the publish transaction

Rules (docs/products.md, "Products from uploads"): the product is created (`origin` "api") when
no live product has that product_id, else updated with the fields given (as a PATCH: recorded with
`ProductChange` for rollback). Attributes of a known type must be of that type; an attribute name
nobody has used yet gets the type of its value (`origin` "api"). Form fields are text: a known
attribute's text is read as its type (`42` for a number, `true` for a boolean); an unknown one's
type is inferred as the catalog file's CSV columns are (`true`/`false`, a JSON number, else text).
Values of the JSON `attributes` object keep their JSON type; `null` removes an attribute.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.catalog_file import JSON_NUMBER, MAX_NAME
from indexer.db import (
    VALUE_COLUMNS,
    AttributeType,
    GenerationChange,
    Item,
    Product,
    ProductAttribute,
    ProductChange,
)
from indexer.jobs import JobRecord
from indexer.products import _previous, patch_product, product_records

PRODUCT_FIELDS = ("title", "url", "price", "attributes")
RESERVED_NAMES = frozenset({"product_id", "image", "title", "url", "price", "label", "attributes"})
API_DIGEST = "api"  # products.metadata_sha256 of a product made by an upload: never a file row's digest

Value = str | float | bool | None


class UploadError(ValueError):
    """Product fields that cannot apply (the API answers 400; the indexer fails the job)."""


@dataclass(frozen=True)
class Upload:
    """An add job's product part, checked against the batch's attribute types."""

    job_id: int
    path: str
    product_key: str
    changes: dict  # title / url / price / attributes {name: value | None}: only what was given
    new_types: dict[str, str] = field(default_factory=dict)  # attributes first named by this upload
    live_item: int | None = None  # the upload's item when already indexed (a scan got there first)


def kind_of(value: Value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    return "number" if isinstance(value, float) else "string"


def _form_value(name: str, text: str, kind: str | None) -> Value:
    """A form field's text as a value of the attribute's type (inferred when it has none yet)."""
    stripped = text.strip()
    if kind is None:
        if stripped.lower() in ("true", "false"):
            kind = "boolean"
        elif JSON_NUMBER.fullmatch(stripped) and math.isfinite(float(stripped)):
            kind = "number"
        else:
            return text
    if kind == "string":
        return text
    if kind == "number":
        if JSON_NUMBER.fullmatch(stripped) and math.isfinite(float(stripped)):
            return float(stripped)
        raise UploadError(f"attribute {name!r} is a number, got {text!r}")
    if stripped.lower() in ("true", "false"):
        return stripped.lower() == "true"
    raise UploadError(f"attribute {name!r} is a boolean (true or false), got {text!r}")


def _json_value(name: str, value: object) -> Value:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    raise UploadError(f"attribute {name!r} must be text, a number, a boolean or null, got {value!r}")


def product_fields(
    form: Mapping[str, str], json_attributes: Mapping[str, object], types: Mapping[str, str]
) -> dict:
    """The product part of an upload's payload: `product_id` and the fields given, typed.

    `form`: the known text fields (`product_id`, `title`, `url`, `price`) and any other form field
    (an attribute); `json_attributes`: the `attributes` JSON object (wins over a form field of the
    same name); `types`: the catalog's attribute types now.

    :raise UploadError: product fields without a product_id, a price that is not a number, an
        attribute value not of its type.
    """
    out: dict = {}
    for name in ("title", "url"):
        if form.get(name):
            out[name] = form[name]
    if form.get("price"):
        try:
            price = float(form["price"])
        except ValueError:
            price = math.nan
        if not math.isfinite(price):
            raise UploadError(f"price must be a number, got {form['price']!r}")
        out["price"] = price
    attrs: dict[str, Value] = {
        name: _form_value(name, text, types.get(name))
        for name, text in form.items()
        if name not in ("product_id", "title", "url", "price") and text != ""
    }
    attrs.update((name, _json_value(name, v)) for name, v in json_attributes.items())
    for name in attrs:
        if name not in types:
            _check_name(name)
    if attrs:
        out["attributes"] = attrs
    if not form.get("product_id"):
        if out:
            raise UploadError(
                f"product fields ({', '.join(sorted(out))}) need a product_id: the product they describe"
            )
        return out
    check_changes(out, types)
    return {"product_id": form["product_id"], **out}


def _check_name(name: str) -> None:
    """A new attribute's name: as the catalog file's column names (filterable, not a field's)."""
    if name.lower() in RESERVED_NAMES:
        raise UploadError(f"{name!r} is a field of its own, not an attribute name")
    if not name.strip() or len(name) > MAX_NAME or "`" in name or any(ch < " " for ch in name):
        raise UploadError(
            f"attribute name {name!r}: use 1 to {MAX_NAME} printable characters, without backticks"
        )


def check_changes(changes: Mapping, types: Mapping[str, str]) -> dict[str, str]:
    """The attribute types `changes` introduces; :raise UploadError: a value not of its type."""
    new: dict[str, str] = {}
    for name, value in (changes.get("attributes") or {}).items():
        kind, known = kind_of(value), types.get(name)
        if kind is None:
            continue
        if known is None:
            new[name] = kind
        elif kind != known:
            raise UploadError(f"attribute {name!r} is a {known}, got {value!r}")
    return new


def check_uploads(
    jobs: list[JobRecord], types: Mapping[str, str]
) -> tuple[list[Upload], list[tuple[int, str]]]:
    """The add jobs with a product_id, in job order, checked against `types` (plus those the earlier
    uploads of the batch introduce): (uploads that apply, [(job id, why not)])."""
    types = dict(types)
    ready, failed = [], []
    for j in jobs:
        key = j.payload.get("product_id")
        if j.kind != "add" or not key or not j.path:
            continue
        changes = {k: j.payload[k] for k in PRODUCT_FIELDS if k in j.payload}
        try:
            new = check_changes(changes, types)
        except UploadError as e:
            failed.append((j.id, f"the catalog changed since the upload: {e}"))
            continue
        types.update(new)
        ready.append(Upload(j.id, j.path, key, changes, new))
    return ready, failed


def embedded_again(session: Session, paths: list[str]) -> list[Upload]:
    """The uploads among `paths` (just embedded) whose jobs were indexed before: a rollback undid
    them and the next run found their files again. Their product comes back with them: the product
    fields of every indexed job of the path, oldest first, checked against the types now (a value
    that no longer fits is left out)."""
    from indexer.bulk import chunk_size, chunks
    from indexer.db import Job

    merged: dict[str, tuple[int, str, dict]] = {}
    for chunk in chunks(paths, chunk_size(session)):
        query = (
            sa.select(Job)
            .where(Job.path.in_(chunk), Job.kind == "add", Job.state == "indexed")
            .order_by(Job.id)
        )
        for job in session.scalars(query):
            key = (job.payload or {}).get("product_id")
            if not key:
                continue
            _, _, changes = merged.get(job.path, (job.id, key, {}))
            given = {k: job.payload[k] for k in PRODUCT_FIELDS if k in job.payload}
            attrs = {**(changes.get("attributes") or {}), **(given.pop("attributes", None) or {})}
            changes = {**changes, **given, **({"attributes": attrs} if attrs else {})}
            merged[job.path] = (job.id, key, changes)
    types = dict(session.execute(sa.select(AttributeType.name, AttributeType.type)).all())
    out = []
    for path, (job_id, key, changes) in merged.items():
        attrs = dict(changes.get("attributes") or {})
        for name, value in list(attrs.items()):
            try:
                check_changes({"attributes": {name: value}}, types)
            except UploadError:
                del attrs[name]
        changes = (
            {**changes, "attributes": attrs}
            if attrs
            else {k: v for k, v in changes.items() if k != "attributes"}
        )
        new = check_changes(changes, types)
        types.update(new)
        out.append(Upload(job_id, path, key, changes, new))
    return out


def apply_upload(session: Session, up: Upload, item_id: int, generation_id: int) -> int:
    """Create or update the upload's product and link its item (in the publish transaction);
    every change is recorded for rollback. Returns the products.id."""
    _add_types(session, up.new_types)
    row = session.execute(
        sa.select(Product.id, Product.deleted_generation).where(Product.product_key == up.product_key)
    ).first()
    fields = {k: up.changes.get(k) for k in ("title", "url", "price")}
    attrs = {k: v for k, v in (up.changes.get("attributes") or {}).items() if v is not None}
    if row is None:  # a new product
        pid = session.execute(
            sa.insert(Product).values(
                product_key=up.product_key,
                metadata_sha256=API_DIGEST,
                added_generation=generation_id,
                deleted_generation=None,
                origin="api",
                **fields,
            )  # fmt: skip
        ).inserted_primary_key[0]
        _set_attributes(session, pid, attrs)
        session.add(ProductChange(generation_id=generation_id, product_id=pid, change="added"))
    elif row.deleted_generation is not None:  # gone from the catalog, back by this upload
        pid = row.id
        digest, deleted, origin = session.execute(
            sa.select(Product.metadata_sha256, Product.deleted_generation, Product.origin).where(
                Product.id == pid
            )
        ).one()
        previous = _previous(product_records(session, [pid])[pid], "updated", digest, deleted, origin)
        session.add(
            ProductChange(generation_id=generation_id, product_id=pid, change="updated", previous=previous)
        )
        session.execute(
            sa.update(Product)
            .where(Product.id == pid)
            .values(deleted_generation=None, origin="api", metadata_sha256=API_DIGEST, **fields)
        )
        session.execute(sa.delete(ProductAttribute).where(ProductAttribute.product_id == pid))
        _set_attributes(session, pid, attrs)
    else:  # an existing product: the fields given change, as a PATCH does
        pid = row.id
        if up.changes:
            patch_product(session, pid, up.changes, generation_id)
    _link(session, item_id, pid, generation_id)
    return pid


def _add_types(session: Session, new_types: Mapping[str, str]) -> None:
    known = set(session.scalars(sa.select(AttributeType.name)))
    rows = [{"name": n, "type": t, "origin": "api"} for n, t in new_types.items() if n not in known]
    if rows:
        session.execute(sa.insert(AttributeType), rows)


def _set_attributes(session: Session, pid: int, attrs: Mapping[str, Value]) -> None:
    rows = [
        {
            "product_id": pid,
            "name": name,
            **dict.fromkeys(VALUE_COLUMNS.values()),
            VALUE_COLUMNS[kind_of(v)]: v,
        }
        for name, v in attrs.items()
    ]
    if rows:
        session.execute(sa.insert(ProductAttribute), rows)


def _link(session: Session, item_id: int, pid: int, generation_id: int) -> None:
    """Point the item at the product; an item older than this generation gets a `relinked` change."""
    was, added = session.execute(
        sa.select(Item.product_id, Item.added_generation).where(Item.id == item_id)
    ).one()
    if was == pid:
        return
    session.execute(sa.update(Item).where(Item.id == item_id).values(product_id=pid))
    if added != generation_id:  # a new item's rollback deletes it, link and all
        session.execute(
            sa.insert(GenerationChange).values(
                generation_id=generation_id, item_id=item_id, change="relinked", previous={"product_id": was}
            )
        )


def effective_types(session: Session, catalog_types: Mapping[str, str] | None) -> dict[str, str]:
    """The attribute types after this run's catalog sync: the file's (when a catalog is given), and
    the uploads' whose names the file does not use."""
    rows = session.execute(sa.select(AttributeType.name, AttributeType.type, AttributeType.origin)).all()
    if catalog_types is None:
        return {n: t for n, t, _ in rows}
    return {**{n: t for n, t, o in rows if o == "api" and n not in catalog_types}, **catalog_types}
