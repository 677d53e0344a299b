"""Operations: liveness, readiness, index statistics and Prometheus metrics."""

from __future__ import annotations

import datetime as dt

from apiflask import APIBlueprint
from apiflask.schemas import FileSchema
from flask import Response, current_app

from encoder.config import ModelConfig
from search_api import answers
from search_api.engine import get_engine
from search_api.schemas import Health, Ready, Stats

bp = APIBlueprint("ops", __name__, tag="Operations")


@bp.get("/healthz")
@bp.output(Health)
def healthz() -> dict:
    """The process is alive (says nothing about the index)."""
    return {"status": "ok"}


@bp.get("/readyz")
@bp.output(Ready)
@bp.doc(responses={503: "No consistent index loaded yet."})
def readyz() -> dict:
    """An index is loaded, checked consistent, and answering."""
    with get_engine().snapshot() as snap:
        return {
            "status": "ready",
            "index": answers.index_info(snap.generation),
            "reload_error": get_engine().status().reload_error,
        }


@bp.get("/v1/stats")
@bp.output(Stats)
@bp.doc(responses={503: "No index loaded yet."})
def stats() -> dict:
    """The index being served: size, dimension, metric, model, age, evaluation figures."""
    eng = get_engine()
    with eng.snapshot() as snap:
        gen = snap.generation
        created = answers.utc(gen.created_at)
        status = eng.status()
        cfg = current_app.config
        return {
            "index": answers.index_info(gen),
            "items": gen.item_count,
            "dim": gen.dim,
            "metric": gen.metric,
            "score_kind": gen.score_kind,
            "index_type": gen.index_type,
            "model": model_info(gen.model_fingerprint, snap.encoder.model_config),
            "created_at": created,
            "index_age_seconds": (dt.datetime.now(dt.UTC) - created).total_seconds(),
            "generation": gen.id,
            "eval_figures": gen.eval_figures,
            "labels": snap.labels(),
            "engine": {
                "loaded_at": status.loaded_at.isoformat() if status.loaded_at else None,
                "reloads": status.reloads,
                "reload_error": status.reload_error,
                "batching": status.batch,
            },
            "limits": {
                "max_content_length": cfg["MAX_CONTENT_LENGTH"],
                "max_pixels": cfg["MAX_PIXELS"],
                "max_k": cfg["MAX_K"],
                "default_k": cfg["DEFAULT_K"],
                "max_batch_images": cfg["MAX_BATCH_IMAGES"],
                "max_jpeg_scans": cfg["MAX_JPEG_SCANS"],
                "max_url_bytes": cfg["MAX_URL_BYTES"],
                "max_headers": cfg["MAX_HEADERS"],
                "max_header_bytes": cfg["MAX_HEADER_BYTES"],
            },
            "novelty_available": bool(eng.novelty) and snap.encoder.has_novelty,
        }


def model_info(fingerprint: str, mc: ModelConfig) -> dict:
    """The model block of `/v1/stats`, from the typed model config."""
    return {
        "fingerprint": fingerprint,
        "kind": mc.kind,
        "name": mc.name,
        "arch": mc.arch,
        "runtime": mc.runtime,
        "image_size": mc.preprocess.image_size,
        "dim": mc.code_dim,
    }


@bp.get("/metrics")
@bp.output(
    FileSchema(type="string"), content_type="text/plain", description="Prometheus text exposition format."
)
def metrics() -> Response:
    """Prometheus metrics: requests and latency by endpoint and status, index size and generation."""
    body, content_type = current_app.extensions["imgrec.metrics"].exposition()
    return Response(body, content_type=content_type)
