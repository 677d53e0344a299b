"""JSON bodies built from snapshots, hits and items (links made with `url_for`)."""

from __future__ import annotations

import datetime as dt

from flask import url_for

from indexer import Hit, ItemInfo
from indexer.products import ProductRecord
from indexer.querying import ImageRef, Result, SearchAnswer
from indexer.store import GenerationInfo


def utc(t: dt.datetime) -> dt.datetime:
    """Catalog times are naive UTC; say so."""
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def index_info(gen: GenerationInfo) -> dict:
    """Which index answered: enough for a client to tell generations apart."""
    return {
        "generation": gen.id,
        "model_fingerprint": gen.model_fingerprint,
        "created_at": utc(gen.created_at),
        "item_count": gen.item_count,
        "metric": gen.metric,
        "score_kind": gen.score_kind,
        "index_type": gen.index_type,
    }


def links(item_id: int) -> dict:
    return {
        "item_url": url_for("items.get_item", item_id=item_id),
        "image_url": url_for("items.get_image", item_id=item_id),
        "thumbnail_url": url_for("items.get_thumbnail", item_id=item_id),
        "similar_url": url_for("items.get_similar", item_id=item_id),
    }


def hit(h: Hit) -> dict:
    """An image result (what every result carries at its top level)."""
    return {"rank": h.rank, "id": h.id, "label": h.item.label, "score": h.score, **links(h.id)}


def product(p: ProductRecord | None) -> dict | None:
    return None if p is None else p.as_dict()


def image_ref(im: ImageRef) -> dict:
    return {"id": im.id, "path": im.path, **links(im.id)}


def result(r: Result, grouped: bool) -> dict:
    """One result: the image fields, its product, and (grouped) the matched image and the others."""
    body = {**hit(r.hit), "product": product(r.product)}
    if grouped:
        h = r.hit
        body["matched_image"] = {"id": h.id, "label": h.item.label, "score": h.score, **links(h.id)}
        body["images"] = [image_ref(im) for im in r.images or []]
    return body


def results(answer: SearchAnswer) -> list[dict]:
    return [result(r, answer.grouped) for r in answer.results]


def item(info: ItemInfo) -> dict:
    return {
        "id": info.id,
        "label": info.label,
        "path": info.path,
        "width": info.width,
        "height": info.height,
        "sha256": info.sha256,
        **links(info.id),
    }


def header(gen: GenerationInfo, args: dict, grouped: bool, exact: bool) -> dict:
    """Fields every search answer carries: which index answered, how to read scores, what was asked."""
    return {
        "index": index_info(gen),
        "score_kind": gen.score_kind,
        "k": args["k"],
        "label": args["label"],
        "filter": args.get("filter"),
        "group_by": "product" if grouped else "none",
        "exact": exact,
    }
