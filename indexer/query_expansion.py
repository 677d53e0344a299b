"""Alpha query expansion (alpha-QE): re-search with the query moved towards its nearest stored vectors.

    qe = QueryExpansion.of(generation.model_config)   # the model's setting, from its config dict (0: off)
    xq2 = expand(xq, sims, vectors, qe.alpha)     # (nq, d), (nq, n) similarities, (nq, n, d) stored vectors

Each query q becomes normalise(q + sum_i max(s_i, 0)^alpha * v_i) over its n nearest stored vectors
v_i (cosine similarities s_i), then is searched again (Radenovic et al., "Fine-tuning CNN image
retrieval with no human annotation", 2018). Only for cosine indexes (stored vectors unit-norm).
Nothing is fitted and no stored vector changes, so indexing stays incremental. `indexer.querying`
applies it in the one query path (CLI, API and `imgrec eval` alike).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class QueryExpansion:
    """How many nearest stored vectors a query is expanded with (0: off) and their weight exponent."""

    neighbours: int = 0
    alpha: float = 3.0

    @property
    def enabled(self) -> bool:
        return self.neighbours > 0

    @classmethod
    def of(cls, model_config: dict | None) -> QueryExpansion:
        """The expansion a model's config (as written, e.g. a generation's copy) asks for; off for
        models without the setting. Reading the dict needs no model loaded."""
        p = model_config.get("pretrained") if isinstance(model_config, dict) else None
        p = p if isinstance(p, dict) else {}
        n = int(p.get("query_expansion") or 0)
        return cls(n, float(p.get("qe_alpha", 3.0))) if n > 0 else cls()


def expand(xq: np.ndarray, sims: np.ndarray, neighbours: np.ndarray, alpha: float) -> np.ndarray:
    """Expanded unit queries (nq, d).

    `xq` (nq, d) the queries; `sims` (nq, n) cosine similarities of their nearest stored vectors
    (NaN: a missing result, weight 0); `neighbours` (nq, n, d) those vectors (unit-norm).
    """
    xq = np.asarray(xq, np.float32)
    q = xq / np.maximum(np.linalg.norm(xq, axis=1, keepdims=True), 1e-12)
    w = np.nan_to_num(np.asarray(sims, np.float32), nan=0.0).clip(min=0.0) ** alpha  # (nq, n)
    out = q + np.einsum("qn,qnd->qd", w, np.asarray(neighbours, np.float32))
    return np.ascontiguousarray(out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12), np.float32)
