"""Writes over HTTP: add an item (an image upload), delete one, and follow the job.

    POST   /v1/items         multipart `image` (+ product_id, label, title, url, price, attributes)
    DELETE /v1/items/{id}
    PATCH  /v1/products/{id} JSON or form: title, url, price, attributes {name: value|null}
    GET    /v1/jobs/{id}     queued | indexed (item id, generation) | failed (reason)

The writes answer 202 with a job and its `Location`; the indexer (`imgrec index --watch`) applies
queued jobs in batches (`indexer.jobs`, `indexer.live`). An upload is decoded here with the
indexer's limits (a corrupt, huge or non-image upload is a 4xx and nothing is queued), then saved
under the inventory's `_uploads/` folder (content-addressed; fsynced) before its job row commits.
An `Idempotency-Key` header, or the same image bytes for the same product and label, answers the
existing job instead of making a second item (other product fields: a new job for the same item,
which updates the product). With `product_id` the indexer creates or updates that product with the
upload's fields in the item's publish (`indexer.uploads`; checked and typed here: a bad value is a
400, product fields without a product_id too). A PATCH changes a product's metadata only
(nothing is re-embedded): the attributes must be known, of their type (`check_patch`).

None of these endpoints is marked as a read: the access layer asks for a write key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from apiflask import APIBlueprint, Schema, abort
from apiflask.fields import Dict, File, Float, Integer, Nested, String
from flask import current_app, request, url_for
from marshmallow import INCLUDE
from sqlalchemy import select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from encoder.preprocess import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SCANS, load_image
from indexer import jobs as queue
from indexer.db import DATABASE_FILE, Generation, IndexState, database_url, make_engine
from indexer.filter_sql import attribute_types_of
from indexer.products import PATCH_FIELDS, PatchError, check_patch, product_id_of
from indexer.uploads import UploadError, product_fields
from search_api import auth
from search_api.engine import get_engine

bp = APIBlueprint("writes", __name__, tag="Writes")

MAX_KEY_CHARS = 200
MAX_FIELD_CHARS = 2000
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}
WRITE_ERRORS = {
    400: "No image, an empty one, a bad field or Idempotency-Key.",
    409: "The Idempotency-Key was used for another request.",
    413: "Request body over the configured limit.",
    415: "Not a decodable image of a kind the indexer reads.",
    422: "Decompression bomb, or more pixels / JPEG scans than the indexer accepts.",
    503: "No index with a job queue yet (run the indexer once).",
}


class JobUpload(Schema):
    class Meta:
        unknown = INCLUDE  # other form fields are kept as attributes

    image = File(
        required=True, metadata={"description": "The item's image (JPEG, PNG, WebP, GIF, BMP, TIFF)."}
    )
    product_id = String(
        metadata={
            "description": "Your product id: created with the fields below, or updated with them "
            "(same image + product: one item). Needed by any product field."
        }
    )
    label = String(metadata={"description": "The item's label (default `uploads`)."})
    title = String()
    url = String()
    price = String(metadata={"description": "A number."})
    attributes = String(
        metadata={
            "description": "A JSON object; other form fields are attributes too. A known attribute "
            "must be of its type; a new one takes its value's type."
        }
    )


class ProductPatch(Schema):
    title = String(allow_none=True, metadata={"description": "null clears it."})
    url = String(allow_none=True, metadata={"description": "null clears it."})
    price = Float(allow_none=True, metadata={"description": "A number; null clears it."})
    attributes = Dict(
        metadata={
            "description": "{name: value}: the catalog's attributes, each of its type; null removes one."
        }
    )


class JobInfo(Schema):
    id = Integer(required=True)
    kind = String(required=True, metadata={"description": "add | delete | patch"})
    state = String(required=True, metadata={"description": "queued | indexed | failed"})
    url = String(required=True)
    item_id = Integer(allow_none=True, metadata={"description": "The item added or deleted."})
    generation = Integer(allow_none=True, metadata={"description": "The generation that applied it."})
    reason = String(allow_none=True, metadata={"description": "Why it failed."})


class JobAnswer(Schema):
    job = Nested(JobInfo, required=True)


def queue_engine() -> Engine:
    """The catalog the jobs live in (one engine per app, no pooled connections)."""
    engines = current_app.extensions.setdefault("imgrec_queue", {})
    index_dir = get_engine().index_dir
    if "engine" not in engines:
        if not (index_dir / DATABASE_FILE).exists():
            abort(503, "no index yet: run the indexer first")
        engines["engine"] = make_engine(database_url(index_dir), poolclass=NullPool)
    engine = engines["engine"]
    with engine.connect() as conn:
        if conn.execute(text("SELECT 1 FROM sqlite_master WHERE name = 'jobs'")).first() is None:
            abort(503, "the index has no job queue yet: run the indexer once (it upgrades the catalog)")
    return engine


def inventory_root(engine: Engine) -> Path:
    """IMGREC_INVENTORY, or the inventory the current generation was built from."""
    configured = current_app.config.get("INVENTORY")
    if configured:
        return Path(configured)
    with engine.connect() as conn:
        root = conn.execute(
            select(Generation.inventory_root).join(
                IndexState, IndexState.current_generation_id == Generation.id
            )
        ).scalar()
    if not root:
        abort(503, "no generation published yet: the inventory folder is not known")
    return Path(root)


def job_body(job: queue.JobRecord) -> dict:
    body = {
        "id": job.id,
        "kind": job.kind,
        "state": job.state,
        "url": url_for("writes.get_job", job_id=job.id),
        "item_id": job.item_id,
        "generation": job.generation_id,
        "reason": job.reason,
    }
    return {"job": body}


def accepted(job: queue.JobRecord) -> tuple[dict, int, dict]:
    body = job_body(job)
    return body, 202, {"Location": body["job"]["url"]}


def idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not key or len(key) > MAX_KEY_CHARS:
        abort(400, f"Idempotency-Key must be 1-{MAX_KEY_CHARS} characters")
    return key


def validate_upload(data: bytes) -> tuple[str, int, int]:
    """Decode as the indexer will (same pixel and scan limits): (file extension, width, height).

    :raise ImageDecodeError: 415; :raise ImageTooLargeError: 422 (through the error handlers).
    """
    img = load_image(data, draft_size=256, max_pixels=DEFAULT_MAX_PIXELS, max_scans=DEFAULT_MAX_SCANS)
    fmt = _format_of(data)
    ext = EXTENSIONS.get(fmt or "")
    if ext is None:
        abort(
            415, f"images of type {fmt or 'unknown'} are not indexed; send JPEG, PNG, WebP, GIF, BMP or TIFF"
        )
    width, height = img.info["original_size"]
    return ext, width, height


def _format_of(data: bytes) -> str | None:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.format


def payload_fields(engine: Engine) -> dict:
    """The form fields besides the image: `label`, and the product fields checked and typed
    against the catalog's attribute types (`indexer.uploads.product_fields`; any other field is an
    attribute)."""
    form = request.form
    for name, value in form.items():
        if len(value) > MAX_FIELD_CHARS:
            abort(400, f"field {name!r} is over {MAX_FIELD_CHARS} characters")
    given: object = {}
    if form.get("attributes"):
        try:
            given = json.loads(form["attributes"])
        except ValueError:
            given = None
        if not isinstance(given, dict):
            abort(400, "attributes must be a JSON object")
    fields = {k: v for k, v in form.items() if k not in ("label", "attributes")}
    with Session(engine) as session:
        types = attribute_types_of(session)
    try:
        payload = product_fields(fields, given, types)
    except UploadError as e:
        abort(400, str(e))
    payload["label"] = form.get("label") or queue.DEFAULT_LABEL
    return payload


@bp.post("/v1/items")
@bp.input(JobUpload, location="files", arg_name="upload", validation=False)
@bp.output(JobAnswer, status_code=202)
@bp.doc(responses=WRITE_ERRORS)
def add_item(upload: object):
    """Add an item: the image is checked, stored in the inventory and queued for the indexer."""
    if request.mimetype != "multipart/form-data":
        abort(415, "send multipart/form-data with an `image` field (and optional product fields)")
    f = request.files.get("image")
    if f is None:
        abort(400, "no image: send multipart/form-data with an `image` field")
    data = f.read()
    if not data:
        abort(400, "the image is empty")
    key = idempotency_key()
    engine = queue_engine()
    payload = payload_fields(engine)
    ext, width, height = validate_upload(data)
    sha = hashlib.sha256(data).hexdigest()
    try:
        path = queue.upload_path(sha, ext, payload["label"], payload.get("product_id"))
    except ValueError as e:
        abort(400, str(e))
    payload.update(width=width, height=height, bytes=len(data))
    try:
        job = queue.existing_add(engine, path, key, sha, payload)
        if job is None:
            root = inventory_root(engine)
            in_use = queue.existing_add(engine, path, None, sha) is not None  # other product fields
            if not in_use or not (root / path).is_file():  # (not rewritten: its item stays as it is)
                queue.save_upload(root, path, data)  # durable before the job row
            job, _ = queue.enqueue_add(engine, path=path, sha256=sha, payload=payload, key=key)
    except queue.IdempotencyConflict as e:
        abort(409, str(e))
    return accepted(job)


@bp.delete("/v1/items/<int:item_id>")
@bp.output(JobAnswer, status_code=202)
@bp.doc(responses={404: "No such live item.", 409: WRITE_ERRORS[409], 503: WRITE_ERRORS[503]})
def delete_item(item_id: int):
    """Delete an item: queued for the indexer; once indexed, no search returns it."""
    key = idempotency_key()
    engine = queue_engine()
    try:
        found = queue.enqueue_delete(engine, item_id, key) if item_id < 2**63 else None
    except queue.IdempotencyConflict as e:
        abort(409, str(e))
    if found is None:
        abort(404, f"no live item {item_id}")
    return accepted(found[0])


@bp.get("/v1/jobs/<int:job_id>")
@auth.writes  # a write's outcome is the writer's: job ids are sequential, so reads would enumerate them
@bp.output(JobAnswer)
@bp.doc(responses={404: "No such job.", 503: WRITE_ERRORS[503]})
def get_job(job_id: int):
    """A write job: queued, indexed (with its item and generation) or failed (with the reason)."""
    job = queue.get_job(queue_engine(), job_id) if job_id < 2**63 else None
    if job is None:
        abort(404, f"no job {job_id}")
    return job_body(job)


def patch_body() -> dict:
    """The PATCH body as {field: value}: a JSON object, or form fields (`price` a number, empty: none;
    `attributes` a JSON object)."""
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            abort(400, "the body must be a JSON object with any of title, url, price, attributes")
        attrs = body.get("attributes")
        for name, value in [*body.items(), *(attrs.items() if isinstance(attrs, dict) else ())]:
            if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
                abort(400, f"field {name!r} is over {MAX_FIELD_CHARS} characters")
        return body
    if request.mimetype not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        abort(400, "send a JSON object (or form fields) with any of title, url, price, attributes")
    body: dict = {}
    for name, value in request.form.items():
        if len(value) > MAX_FIELD_CHARS:
            abort(400, f"field {name!r} is over {MAX_FIELD_CHARS} characters")
        if name in PATCH_FIELDS:
            body[name] = value or None
        elif name == "attributes":
            try:
                body[name] = json.loads(value)
            except ValueError:
                abort(400, "attributes must be a JSON object")
        else:
            body[name] = value  # refused by check_patch: unknown field
    if body.get("price") is not None:
        try:
            body["price"] = float(body["price"])
        except ValueError:
            abort(400, f"price must be a number, got {body['price']!r}")
    return body


@bp.patch("/v1/products/<string:product_id>")
@bp.input(ProductPatch, location="json", arg_name="documented", validation=False)  # read by patch_body
@bp.output(JobAnswer, status_code=202)
@bp.doc(
    responses={
        400: "Not a JSON object or form; an unknown field or attribute; a value of the wrong type.",
        404: "No such product in the catalog.",
        409: WRITE_ERRORS[409],
        503: WRITE_ERRORS[503],
    }
)
def patch_product(product_id: str, documented: object = None):
    """Change a product's metadata (title, url, price, attributes; null removes): queued for the
    indexer, which publishes it without re-embedding anything. Body: JSON or form fields."""
    key = idempotency_key()
    body = patch_body()
    engine = queue_engine()
    with Session(engine) as session:
        found = product_id_of(session, product_id) if len(product_id) <= MAX_FIELD_CHARS else None
        types = attribute_types_of(session)
    if found is None:
        abort(404, f"no product {product_id!r} in the catalog")
    try:
        changes = check_patch(body, types)
    except PatchError as e:
        abort(400, str(e))
    try:
        job, _ = queue.enqueue_patch(engine, product_id, changes, key)
    except queue.IdempotencyConflict as e:
        abort(409, str(e))
    return accepted(job)
