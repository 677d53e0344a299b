"""The `items` resource: an item's metadata, image, thumbnail and look-alikes, found by id only."""

from __future__ import annotations

import io
import mimetypes
import time
from functools import lru_cache
from pathlib import Path

from apiflask import APIBlueprint, abort
from apiflask.schemas import FileSchema
from flask import current_app, send_file

from encoder.preprocess import DEFAULT_MAX_PIXELS, ImageDecodeError, ImageTooLargeError, load_image
from indexer import ItemInfo, Snapshot
from search_api import answers
from search_api.engine import get_engine
from search_api.schemas import Item, SearchArgs, SimilarAnswer
from search_api.search import search_kwargs

bp = APIBlueprint("items", __name__, url_prefix="/v1/items", tag="Items")

MAX_ID = 2**63 - 1  # SQLite INTEGER; larger ids cannot exist
ITEM_ID = "<int:item_id>"
NOT_FOUND = "No such item in the index being served (or its image is gone)."


def get_item_or_404(snap: Snapshot, item_id: int) -> ItemInfo:
    """The item with this id in the snapshot.

    :raise 404: unknown id, or not in this generation.
    """
    info = snap.item(item_id) if item_id <= MAX_ID else None
    if info is None:
        abort(404, f"item {item_id} is not in index generation {snap.generation.id}")
    return info


def image_path_or_404(snap: Snapshot, info: ItemInfo) -> Path:
    """The item's image file, inside the inventory root.

    :raise 404: the file is gone or points outside the inventory.
    """
    try:
        path = snap.image_path(info)
    except PermissionError:
        abort(404, f"item {info.id} has no image")
    if not path.is_file():
        abort(404, f"the image of item {info.id} is no longer in the inventory")
    return path


@bp.get(f"/{ITEM_ID}")
@bp.output(Item)
@bp.doc(responses={404: NOT_FOUND, 503: "No index loaded yet."})
def get_item(item_id: int) -> dict:
    """An item's metadata and links."""
    with get_engine().snapshot() as snap:
        info = get_item_or_404(snap, item_id)
        return {**answers.item(info), "index": answers.index_info(snap.generation)}


@bp.get(f"/{ITEM_ID}/image")
@bp.output(
    FileSchema(type="string", format="binary"),
    content_type="image/*",
    description="The item's image file as stored.",
)
@bp.doc(responses={404: NOT_FOUND, 503: "No index loaded yet."})
def get_image(item_id: int):
    """The item's image, byte for byte."""
    with get_engine().snapshot() as snap:
        path = image_path_or_404(snap, get_item_or_404(snap, item_id))
    mimetype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return send_file(path, mimetype=mimetype, conditional=True, max_age=3600)


@bp.get(f"/{ITEM_ID}/thumbnail")
@bp.output(
    FileSchema(type="string", format="binary"),
    content_type="image/jpeg",
    description="A small JPEG of the item.",
)
@bp.doc(responses={404: NOT_FOUND, 503: "No index loaded yet."})
def get_thumbnail(item_id: int):
    """A JPEG thumbnail of the item (longest side THUMBNAIL_SIZE)."""
    with get_engine().snapshot() as snap:
        info = get_item_or_404(snap, item_id)
        path = image_path_or_404(snap, info)
    size = int(current_app.config["THUMBNAIL_SIZE"])
    try:
        data = thumbnail(str(path), info.sha256, size)
    except (ImageDecodeError, ImageTooLargeError):
        abort(404, f"the image of item {item_id} can no longer be read")
    return send_file(io.BytesIO(data), mimetype="image/jpeg", etag=f"{info.sha256[:16]}-{size}", max_age=3600)


@lru_cache(maxsize=2048)
def thumbnail(path: str, sha256: str, size: int) -> bytes:
    """JPEG bytes of a thumbnail (cached by file, content hash and size)."""
    img = load_image(path, draft_size=size, max_pixels=DEFAULT_MAX_PIXELS)
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


@bp.get(f"/{ITEM_ID}/similar")
@bp.input(SearchArgs, location="query", arg_name="args")
@bp.output(SimilarAnswer)
@bp.doc(responses={400: "Bad `k`.", 404: NOT_FOUND, 503: "No index loaded yet."})
def get_similar(item_id: int, args: dict) -> dict:
    """More like this item: its stored vector searched, the item itself left out."""
    t0 = time.perf_counter()
    with get_engine().snapshot() as snap:
        info = get_item_or_404(snap, item_id)
        hits, lookup_ms, search_ms = get_engine().similar(snap, item_id, **search_kwargs(args))
        return {
            **answers.header(snap.generation, args),
            "item": answers.item(info),
            "results": [answers.result(h) for h in hits],
            "timings": {
                "decode_ms": 0.0,
                "embed_ms": round(lookup_ms, 3),  # no embedding: the stored vector's look-up
                "search_ms": round(search_ms, 3),
                "total_ms": round((time.perf_counter() - t0) * 1000, 3),
            },
        }
