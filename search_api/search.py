"""The `search` resource: query by image (one, or a batch), answered by the current index."""

from __future__ import annotations

import time

import numpy as np
from apiflask import APIBlueprint, abort
from flask import current_app, request

from encoder.preprocess import ImageDecodeError, ImageTooLargeError, load_image
from indexer import Snapshot
from search_api import answers, auth
from search_api.engine import Answer, get_engine
from search_api.errors import error_slug
from search_api.schemas import BatchAnswer, BatchUpload, ImageUpload, SearchAnswer, SearchArgs

bp = APIBlueprint("search", __name__, url_prefix="/v1/search", tag="Search")

RAW_TYPES = ("image/", "application/octet-stream")
UPLOAD_ERRORS = {
    400: "No image, an empty one, a bad `k`, `filter` (`bad_filter`: where and why) or `group_by`.",
    413: "Request body over the configured limit, or a multipart form over its limits (parts, field size).",
    415: "Not a decodable image (text, truncated, corrupt) or not an image content type.",
    422: "Decompression bomb, more pixels than the configured limit, or a JPEG with more scans than allowed.",
    503: "No index loaded yet.",
}


@bp.post("")
@auth.reads
@bp.input(SearchArgs, location="query", arg_name="args")
@bp.input(ImageUpload, location="files", arg_name="upload", validation=False)
@bp.output(SearchAnswer)
@bp.doc(responses=UPLOAD_ERRORS)
def search(args: dict, upload: object) -> dict:
    """Find the k inventory items that look most like one image."""
    t0 = time.perf_counter()
    data, filename = read_image()
    with get_engine().snapshot() as snap:
        pixels, query = decode(data, filename, snap)
        decoded = time.perf_counter()
        (answer,) = get_engine().search(snap, [pixels], **search_kwargs(args))
        return {
            **answers.header(snap.generation, args, answer.answer.grouped, answer.answer.exact),
            "query": query,
            "batch_size": answer.batch_size,
            **answer_body(answer, (decoded - t0) * 1000, t0),
        }


@bp.post("/batch")
@auth.reads
@bp.input(SearchArgs, location="query", arg_name="args")
@bp.input(BatchUpload, location="files", arg_name="upload", validation=False)
@bp.output(BatchAnswer)
@bp.doc(responses=UPLOAD_ERRORS)
def search_batch(args: dict, upload: object) -> dict:
    """Search several images in one request; each gets its own answer or its own error."""
    t0 = time.perf_counter()
    files = request.files.getlist("images") if request.mimetype == "multipart/form-data" else []
    if not files:
        abort(400, "no images: send multipart/form-data with one `images` field per image")
    limit = int(current_app.config["MAX_BATCH_IMAGES"])
    if len(files) > limit:
        abort(400, f"{len(files)} images in one batch; at most {limit}")
    with get_engine().snapshot() as snap:
        plan = get_engine().plan(snap, **search_kwargs(args))  # a bad filter: 400 before any decoding
        entries: list[dict] = []
        good: list[tuple[dict, np.ndarray, float]] = []
        for f in files:
            t = time.perf_counter()
            try:
                data = f.read()
                if not data:
                    raise _EmptyImage("the image is empty")
                pixels, query = decode(data, f.filename, snap)
            except (ImageDecodeError, ImageTooLargeError, _EmptyImage) as e:
                entries.append(
                    {
                        "status": e.status,
                        "error": error_slug(e.status),
                        "message": str(e),
                        "query": {"filename": f.filename},
                    }
                )
                continue
            entry = {"status": 200, "query": query}
            entries.append(entry)
            good.append((entry, pixels, (time.perf_counter() - t) * 1000))
        exact = all(s.index_type == "flat" for s in snap.segments)
        if good:
            results = get_engine().search(snap, [p for _, p, _ in good], **search_kwargs(args))
            for (entry, _, decode_ms), answer in zip(good, results, strict=True):
                entry.update(answer_body(answer, decode_ms, t0))
            exact = all(a.answer.exact for a in results)
        return {
            **answers.header(snap.generation, args, plan.grouped, exact),
            "answers": entries,
            "total_ms": (time.perf_counter() - t0) * 1000,
        }


class _EmptyImage(ValueError):
    status = 400


def read_image() -> tuple[bytes, str | None]:
    """The query image's bytes (and file name): multipart field `image`, or the raw body.

    :raise 400: no image, or an empty one.
    :raise 415: a body of another content type.
    """
    if request.mimetype == "multipart/form-data":
        f = request.files.get("image")
        if f is None:
            abort(
                400, "no image: send multipart/form-data with an `image` field, or the raw image as the body"
            )
        data, filename = f.read(), f.filename
    elif request.mimetype.startswith(RAW_TYPES):
        data, filename = request.get_data(cache=False), None
    elif not request.get_data(cache=False):
        abort(400, "no image: send multipart/form-data with an `image` field, or the raw image as the body")
    else:
        abort(
            415,
            f"content type {request.mimetype or 'none'!r} is not an image; send image/* or multipart/form-data",
        )
    if not data:
        abort(400, "the image is empty")
    return data, filename


def search_kwargs(args: dict) -> dict:
    return {key: args[key] for key in ("k", "label", "nprobe", "ef_search", "filter", "group_by")}


def decode(data: bytes, filename: str | None, snap: Snapshot) -> tuple[np.ndarray, dict]:
    """Decode and resize a query image for the snapshot's model: uint8 (S, S, 3) and its description.

    :raise ImageDecodeError: not a decodable image (415).
    :raise ImageTooLargeError: too many pixels, or a bomb (422).
    """
    pre = snap.encoder.preprocess
    cfg = current_app.config
    img = load_image(
        data,
        draft_size=pre.image_size,
        max_pixels=int(cfg["MAX_PIXELS"]),
        max_scans=int(cfg["MAX_JPEG_SCANS"]),
    )
    width, height = img.info["original_size"]
    return pre.to_uint8(img), {"filename": filename, "width": width, "height": height}


def answer_body(answer: Answer, decode_ms: float, t0: float) -> dict:
    return {
        "results": answers.results(answer.answer),
        "novelty_percentile": answer.novelty_percentile,
        "timings": {
            "decode_ms": round(decode_ms, 3),
            "embed_ms": round(answer.embed_ms, 3),
            "search_ms": round(answer.search_ms, 3),
            "total_ms": round((time.perf_counter() - t0) * 1000, 3),
        },
    }
