"""JSON bodies built from snapshots, hits and items (links made with `url_for`)."""

from __future__ import annotations

import datetime as dt

from flask import url_for

from indexer import Hit, ItemInfo
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


def result(hit: Hit) -> dict:
    return {"rank": hit.rank, "id": hit.id, "label": hit.item.label, "score": hit.score, **links(hit.id)}


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


def header(gen: GenerationInfo, args: dict) -> dict:
    """Fields every search answer carries: which index answered, and how to read scores."""
    return {"index": index_info(gen), "score_kind": gen.score_kind, "k": args["k"], "label": args["label"]}
