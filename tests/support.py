"""Shared test helpers: tiny generated catalogs and a tiny trained model, built once per session."""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from pathlib import Path

from encoder.train import DEMO_PRESET, train
from imgrec.synthetic import make_catalog

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"

# Fast enough for unit tests, good enough to separate the synthetic classes.
TINY_TRAIN = dataclasses.replace(DEMO_PRESET, image_size=32, epochs=4, patience=2)


@functools.cache
def _session_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="imgrec-tests-"))


@functools.cache
def tiny_catalog(per_class: int = 8, queries_per_class: int = 2, seed: int = 0) -> tuple[Path, Path]:
    """A generated labelled catalog (inventory, queries), shared read-only by tests."""
    return make_catalog(_session_dir() / f"catalog-{per_class}-{seed}", per_class, queries_per_class, seed)


@functools.cache
def tiny_model(seed: int = 0) -> Path:
    """A conv-ae trained for a few epochs on `tiny_catalog()`, shared read-only by tests."""
    inventory, _ = tiny_catalog()
    out = _session_dir() / f"model-{seed}"
    train(inventory, out, dataclasses.replace(TINY_TRAIN, seed=seed))
    return out


@functools.cache
def tiny_pretrained_model() -> Path:
    """The smallest pretrained preset (Lite0 at 64 px, 16-d PCA) fitted on `tiny_catalog()`, graph exported."""
    from encoder.config import PretrainedConfig
    from encoder.fit import fit_pretrained
    from encoder.images import find_images

    inventory, _ = tiny_catalog()
    out = _session_dir() / "model-pretrained"
    fit_pretrained(
        find_images(inventory), out, PretrainedConfig(image_size=64, code_dim=16), "effnet-lite0-pca-tiny"
    )
    return out
