""" "How unlike the inventory" as a percentile of the inventory's own reconstruction errors.

At training (or reducer fitting) time, `novelty_reference(errors)` summarises the errors of the
training images as quantiles, stored in the model dir's config under `NOVELTY_KEY`. At query time
`novelty_percentile(encoder, batch)` places each input's error among them: 0 = reconstructed as
well as the best inventory image, 50 = a typical inventory image, 100 = worse than all of them.
"""

from __future__ import annotations

import numpy as np

from encoder.embedder import Encoder

NOVELTY_KEY = "novelty_reference"
LEVELS = np.linspace(0.0, 100.0, 201)  # quantile levels stored (every half percent)


class NoveltyUnavailableError(ValueError):
    """The model dir was written without a reference distribution of errors."""


def novelty_reference(errors: np.ndarray) -> dict:
    """The config entry for a model trained on images whose reconstruction errors are `errors`."""
    errors = np.asarray(errors, np.float64)
    if errors.ndim != 1 or not len(errors):
        raise ValueError("need a non-empty 1-D array of reconstruction errors")
    quantiles = np.quantile(errors, LEVELS / 100.0)
    return {
        "levels": LEVELS.round(2).tolist(),
        "quantiles": [float(f"{q:.6g}") for q in quantiles],
        "n": len(errors),
    }


def has_novelty_reference(encoder: Encoder) -> bool:
    return NOVELTY_KEY in encoder.config


def percentile_of(errors: np.ndarray, reference: dict) -> np.ndarray:
    """Percentile (0..100) of each error within the reference quantiles."""
    q = np.asarray(reference["quantiles"], np.float64)
    levels = np.asarray(reference["levels"], np.float64)
    q = np.maximum.accumulate(q)  # rounding must not make the curve decrease
    # ties in q (many equal errors): np.interp takes the last level of a tie run
    return np.clip(np.interp(np.asarray(errors, np.float64), q, levels), 0.0, 100.0).astype(np.float32)


def novelty_percentile(encoder: Encoder, batch: np.ndarray) -> np.ndarray:
    """(B,) float32 in 0..100: how unlike the inventory each image of a normalised batch is.

    :raise NoveltyUnavailableError: the model dir has no reference (retrain it with `imgrec train`).
    """
    if not has_novelty_reference(encoder):
        raise NoveltyUnavailableError(
            "this model has no reference distribution of reconstruction errors (retrain it with `imgrec train`)"
        )
    return percentile_of(encoder.novelty(batch), encoder.config[NOVELTY_KEY])
