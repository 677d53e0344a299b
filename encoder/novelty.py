""" "How unlike the inventory" as a percentile of the inventory's own reconstruction errors.

At training (or reducer fitting) time, `novelty_reference(errors)` summarises the errors of
images the model did not fit on as quantiles, stored in the model config's `novelty_reference`.
At query time `Encoder.novelty_percentile(batch)` places each input's error among them
(`percentile_of`): 0 = reconstructed as well as the best inventory image, 50 = a typical inventory
image, 100 = worse than all of them.
"""

from __future__ import annotations

import numpy as np

from encoder.config import NoveltyReference

LEVELS = np.linspace(0.0, 100.0, 201)  # quantile levels stored (every half percent)


def novelty_reference(errors: np.ndarray) -> NoveltyReference:
    """The reference for a model whose unseen images have reconstruction errors `errors`."""
    errors = np.asarray(errors, np.float64)
    if errors.ndim != 1 or not len(errors):
        raise ValueError("need a non-empty 1-D array of reconstruction errors")
    quantiles = np.quantile(errors, LEVELS / 100.0)
    return NoveltyReference(
        levels=tuple(LEVELS.round(2).tolist()),
        quantiles=tuple(float(f"{q:.6g}") for q in quantiles),
        n=len(errors),
    )


def percentile_of(errors: np.ndarray, reference: NoveltyReference) -> np.ndarray:
    """Percentile (0..100) of each error within the reference quantiles."""
    q = np.asarray(reference.quantiles, np.float64)
    levels = np.asarray(reference.levels, np.float64)
    q = np.maximum.accumulate(q)  # rounding must not make the curve decrease
    # ties in q (many equal errors): np.interp takes the last level of a tie run
    return np.clip(np.interp(np.asarray(errors, np.float64), q, levels), 0.0, 100.0).astype(np.float32)
