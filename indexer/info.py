"""What `imgrec info` shows: the current generation's record, eval figures included."""

from __future__ import annotations

from pathlib import Path

from encoder import parse_model_config
from indexer.store import open_snapshot


def generation_record(index_dir: str | Path) -> dict:
    """The current generation as a JSON-able dict (model, size, metric, eval figures).

    :raise IndexNotFoundError: nothing published in `index_dir`.
    :raise ModelDirError: the recorded model config is not one this imgrec reads.
    """
    snap = open_snapshot(index_dir, verify=False)
    try:
        g = snap.generation
        mc = parse_model_config(g.model_config, source=f"generation {g.id}'s model config")
        return {
            "index_dir": str(Path(index_dir).resolve()),
            "generation": g.id,
            "created_at": g.created_at.isoformat(timespec="seconds"),
            "items": g.item_count,
            "labels": len(snap.labels()),
            "model": mc.name,
            "model_kind": mc.kind,
            "model_arch": mc.arch,
            "model_runtime": mc.runtime,
            "model_fingerprint": g.model_fingerprint,
            "dim": g.dim,
            "metric": g.metric,
            "index_type": g.index_type,
            "index_bytes": snap.index_bytes,
            "segments": len(snap.parts),
            "inventory_root": g.inventory_root,
            "model_config": g.model_config,
            "run_summary": g.run_summary,
            "eval_figures": g.eval_figures,
        }
    finally:
        snap.close()
