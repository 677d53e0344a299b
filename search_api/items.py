"""The `items` resource: an item's metadata, image, thumbnail and look-alikes, found by id only."""

from __future__ import annotations

import io
import mimetypes
import os
import string
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import BinaryIO
from urllib.parse import quote

from apiflask import APIBlueprint, Schema, abort
from apiflask.fields import Integer
from apiflask.schemas import FileSchema
from apiflask.validators import Range
from flask import current_app, request, send_file
from werkzeug.exceptions import RequestedRangeNotSatisfiable

from encoder.preprocess import DEFAULT_MAX_PIXELS, ImageDecodeError, ImageTooLargeError, load_image
from indexer import ItemInfo, Snapshot
from search_api import answers
from search_api.engine import get_engine
from search_api.files import RefusedPathError, open_beneath
from search_api.schemas import Item, SearchArgs, SimilarAnswer
from search_api.search import search_kwargs

bp = APIBlueprint("items", __name__, url_prefix="/v1/items", tag="Items")

MAX_ID = 2**63 - 1  # SQLite INTEGER; larger ids cannot exist
ITEM_ID = "<int:item_id>"
NOT_FOUND = "No such item in the index being served (or its image is gone)."


@contextmanager
def item_in_snapshot(item_id: int) -> Iterator[tuple[Snapshot, ItemInfo]]:
    """The served snapshot and item `item_id` in it, both good until the block ends.

    An id the served generation does not hold may be in a newer one that another worker already
    serves (the search that returned it): the engine looks for a newer generation at once, rather
    than at its next poll, and answers from it.

    :raise 404: unknown id, or not in the newest generation either.
    """
    engine = get_engine()
    for attempt in (0, 1):
        with engine.snapshot() as snap:
            info = snap.item(item_id) if item_id <= MAX_ID else None
            if info is not None:
                yield snap, info
                return
            served = snap.generation.id
        if attempt or item_id > MAX_ID or not engine.reload():
            abort(404, f"item {item_id} is not in index generation {served}")


def open_image_or_404(snap: Snapshot, info: ItemInfo) -> BinaryIO:
    """The item's image file, opened once beneath the inventory root (`files.open_beneath`).

    :raise 404: the file is gone, or its path leads outside the inventory or to no regular file.
    """
    try:
        fd = open_beneath(snap.inventory_root, info.path)
    except RefusedPathError:
        abort(404, f"item {info.id} has no image")
    except OSError:
        abort(404, f"the image of item {info.id} is no longer in the inventory")
    return os.fdopen(fd, "rb")


def file_etag(st: os.stat_result, *extra: object) -> str:
    """An entity tag of the file as it is now (inode, modification time, size)."""
    return "-".join(
        f"{x:x}" if isinstance(x, int) else str(x) for x in (st.st_ino, st.st_mtime_ns, st.st_size, *extra)
    )


# RFC 6266 `filename` fallback: printable ASCII except the quote, backslash and percent sign (some
# clients percent-decode it); everything else goes in `filename*` (RFC 5987 attr-chars, %XX).
_FALLBACK_CHARS = frozenset(string.ascii_letters + string.digits + " !#$&'()*+,-.:;<=>?@[]^_`{|}~")
_ATTR_CHARS = "!#$&+-.^_`|~"  # quote() keeps letters, digits and "_.-~" already


def content_disposition(name: str) -> str:
    """`inline` with the file's name, for any name that can be indexed (RFC 6266)."""
    fallback = "".join(
        c if c in _FALLBACK_CHARS else "_"
        for c in unicodedata.normalize("NFKD", name)
        if not unicodedata.combining(c)  # "café" -> "cafe"
    )
    value = f'inline; filename="{fallback}"'
    if fallback != name:
        value += "; filename*=UTF-8''" + quote(name, safe=_ATTR_CHARS)
    return value


@bp.get(f"/{ITEM_ID}")
@bp.output(Item)
@bp.doc(responses={404: NOT_FOUND, 503: "No index loaded yet."})
def get_item(item_id: int) -> dict:
    """An item's metadata and links."""
    with item_in_snapshot(item_id) as (snap, info):
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
    with item_in_snapshot(item_id) as (snap, info):
        f = open_image_or_404(snap, info)
    st = os.fstat(f.fileno())
    name = PurePosixPath(info.path).name
    mimetype = mimetypes.guess_type(name)[0] or "application/octet-stream"
    response = send_file(
        f, mimetype, conditional=False, etag=file_etag(st), last_modified=st.st_mtime, max_age=3600
    )
    response.content_length = st.st_size
    response.headers["Content-Disposition"] = content_disposition(name)
    try:
        return response.make_conditional(request, accept_ranges=True, complete_length=st.st_size)
    except RequestedRangeNotSatisfiable:
        f.close()
        raise


# Thumbnail sizes a request may ask for (`?size=`, e.g. 2x the configured size for `srcset` on dense screens):
# bounded, so a request cannot buy a large decode and resize; every size is cached like the default one.
THUMBNAIL_MIN_SIZE = 16
THUMBNAIL_MAX_SIZE = 1024


class ThumbnailArgs(Schema):
    size = Integer(
        load_default=None,
        validate=Range(min=THUMBNAIL_MIN_SIZE, max=THUMBNAIL_MAX_SIZE),
        metadata={
            "description": f"Longest side in px, {THUMBNAIL_MIN_SIZE}..{THUMBNAIL_MAX_SIZE} "
            "(default `IMGREC_THUMBNAIL_SIZE`); never larger than the image itself."
        },
    )


@bp.get(f"/{ITEM_ID}/thumbnail")
@bp.input(ThumbnailArgs, location="query", arg_name="args")
@bp.output(
    FileSchema(type="string", format="binary"),
    content_type="image/jpeg",
    description="A small JPEG of the item.",
)
@bp.doc(responses={400: "`size` out of bounds.", 404: NOT_FOUND, 503: "No index loaded yet."})
def get_thumbnail(item_id: int, args: dict):
    """A JPEG thumbnail of the item (longest side `size`, default THUMBNAIL_SIZE)."""
    size = args["size"] or int(current_app.config["THUMBNAIL_SIZE"])
    with item_in_snapshot(item_id) as (snap, info):
        f = open_image_or_404(snap, info)
    with f:
        st = os.fstat(f.fileno())
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, size)
        data = THUMBNAILS.get(key)
        if data is None:
            try:
                data = thumbnail(f, size)
            except (ImageDecodeError, ImageTooLargeError):
                abort(404, f"the image of item {item_id} can no longer be read")
            THUMBNAILS.put(key, data)
    return send_file(io.BytesIO(data), mimetype="image/jpeg", etag=file_etag(st, size), max_age=3600)


def thumbnail(f: BinaryIO, size: int) -> bytes:
    """JPEG bytes of a thumbnail of the open image file `f` (longest side `size`)."""
    img = load_image(f, draft_size=size, max_pixels=DEFAULT_MAX_PIXELS)
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


class LRUCache:
    """A thread-safe mapping of bytes values that keeps the most recently used ones, within a count and a total size."""

    def __init__(self, maxsize: int, max_bytes: int):
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._data: OrderedDict[object, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: object) -> bytes | None:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
            return self._data.get(key)

    def put(self, key: object, value: bytes) -> None:
        with self._lock:
            old = self._data.pop(key, None)
            self.nbytes += len(value) - (0 if old is None else len(old))
            self._data[key] = value
            while len(self._data) > self.maxsize or (self.nbytes > self.max_bytes and len(self._data) > 1):
                self.nbytes -= len(self._data.popitem(last=False)[1])


# thumbnail JPEG bytes by (file identity, size): 2,048 at most, 32 MB at most (a 256 px one is about 15 KB)
THUMBNAILS = LRUCache(maxsize=2048, max_bytes=32 * 1024 * 1024)


@bp.get(f"/{ITEM_ID}/similar")
@bp.input(SearchArgs, location="query", arg_name="args")
@bp.output(SimilarAnswer)
@bp.doc(responses={400: "Bad `k`, `filter` or `group_by`.", 404: NOT_FOUND, 503: "No index loaded yet."})
def get_similar(item_id: int, args: dict) -> dict:
    """More like this item: its stored vector searched, the item itself left out."""
    t0 = time.perf_counter()
    with item_in_snapshot(item_id) as (snap, info):
        answer, lookup_ms, search_ms = get_engine().similar(snap, item_id, **search_kwargs(args))
        return {
            **answers.header(snap.generation, args, answer.grouped, answer.exact),
            "item": answers.item(info),
            "results": answers.results(answer),
            "timings": {
                "decode_ms": 0.0,
                "embed_ms": round(lookup_ms, 3),  # no embedding: the stored vector's look-up
                "search_ms": round(search_ms, 3),
                "total_ms": round((time.perf_counter() - t0) * 1000, 3),
            },
        }
