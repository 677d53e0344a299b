"""What `imgrec info` shows: the current generation's record, eval figures included."""

from __future__ import annotations

from pathlib import Path

from indexer.store import open_snapshot


def generation_record(index_dir: str | Path) -> dict:
    """The current generation as a JSON-able dict (model, size, metric, eval figures).

    :raise IndexNotFoundError: nothing published in `index_dir`.
    """
    snap = open_snapshot(index_dir, verify=False)
    try:
        g = snap.generation
        cfg = g.model_config or {}
        return {
            "index_dir": str(Path(index_dir).resolve()),
            "generation": g.id,
            "created_at": g.created_at.isoformat(timespec="seconds"),
            "items": g.item_count,
            "labels": len(snap.labels()),
            "model": cfg.get("name") or cfg.get("model", {}).get("arch") or cfg.get("kind"),
            "model_kind": cfg.get("kind", "autoencoder"),
            "model_fingerprint": g.model_fingerprint,
            "dim": g.dim,
            "metric": g.metric,
            "index_type": g.index_type,
            "index_bytes": snap.index_bytes,
            "segments": len(snap.parts),
            "inventory_root": g.inventory_root,
            "model_config": cfg,
            "run_summary": g.run_summary,
            "eval_figures": g.eval_figures,
        }
    finally:
        snap.close()
