"""Fit a pretrained preset on a folder of images (no labels): export, extract, fit the reducer, save.

    fit_pretrained(paths, out_dir, cfg, name, on_stage=print_stage)

Stages (each reported to `on_stage(stage, done, total)`):
1. "exporting graph": the trunks and pooling to `features.onnx` (runtime onnx; int8 presets also
   calibrate and quantise it) - the same graph that `index` and queries run;
2. "extracting features": every image read (sha256 of its bytes), decoded and run through the graph;
3. "fitting the reducer": PCA (or a projection) to `code_dim`, with cross-fitted novelty errors;
then the model dir is written, and the features are kept in its feature cache for `imgrec index`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from encoder.config import PretrainedConfig, PretrainedModelConfig, trunk_fingerprint
from encoder.feature_cache import write_cache
from encoder.model_dir import file_sha256, save_model_dir
from encoder.novelty import novelty_reference
from encoder.preprocess import (
    ImageDecodeError,
    ImageTooLargeError,
    batches_by_shape,
    load_image,
    map_by_shape,
)
from encoder.pretrained import preprocess_for
from encoder.reducer import NOVELTY_FOLDS, Reducer, cross_fitted_errors, fit_pca, fit_pseudo_lda

logger = logging.getLogger(__name__)

GRAPH = "features.onnx"
EXTRACT_BATCH = 8  # images per forward pass: faster than 32 on a 2-core CPU
PSEUDO_CLASS_MIN_SIZE = 16  # pseudo-lda: at most one pseudo-class per this many images
CALIBRATION_IMAGES = 256  # int8 presets: inventory images the activation ranges are calibrated on

StageCallback = Callable[[str, int, int], None]  # (stage, done, total)


def fit_pretrained(
    paths: list[Path],
    out_dir: str | Path,
    cfg: PretrainedConfig,
    name: str,
    *,
    val_fraction: float = 0.15,
    seed: int = 0,
    feature_cache: bool = True,
    on_stage: StageCallback | None = None,
) -> tuple[str, PretrainedModelConfig]:
    """Write a model dir of preset `cfg` fitted on `paths`; return (fingerprint, config).

    The reducer's reconstruction error is measured on a held-out share first (fitted on the rest),
    then the reducer is refitted on every image. With `feature_cache`, the extracted features are
    kept in `out_dir/features/` for `imgrec index` (encoder.feature_cache).
    """
    stage = on_stage or (lambda *_: None)
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pre = preprocess_for(cfg)
    from encoder.backbones import backbone_sha256

    bb_sha = backbone_sha256(cfg.backbone)
    extractor, graph_sha = _build_extractor(cfg, out_dir, paths, stage)
    t_export = time.perf_counter() - t0

    t1 = time.perf_counter()
    X, shas, sizes = extract_features(
        extractor, paths, pre, lambda done: stage("extracting features", done, len(paths))
    )
    t_extract = time.perf_counter() - t1

    stage("fitting the reducer", 0, 1)
    order = np.random.default_rng(seed).permutation(len(X))
    n_val = int(round(len(X) * val_fraction))
    smallest_fit = len(X) - max(n_val, -(-len(X) // NOVELTY_FOLDS))  # images in the smallest fitting set
    if smallest_fit < 2:
        raise ValueError(f"need at least {NOVELTY_FOLDS} readable images to fit a reducer, got {len(X)}")
    n_classes = min(cfg.pseudo_classes, len(X) // PSEUDO_CLASS_MIN_SIZE)
    lda = cfg.reducer == "pseudo-lda" and bool(cfg.code_dim) and n_classes - 1 >= cfg.code_dim
    if cfg.reducer == "pseudo-lda" and not lda:
        logger.warning(
            "%d images: too few for %s pseudo-classes of %d+ images above a %s-d code; fitting PCA instead",
            len(X), cfg.pseudo_classes, PSEUDO_CLASS_MIN_SIZE, cfg.code_dim,
        )  # fmt: skip
    wanted = (cfg.lda_input_dim if lda else cfg.code_dim) or 128  # the pooled model keeps one for novelty
    n_components = min(wanted, smallest_fit - 1, X.shape[1])
    if n_components < wanted:
        logger.warning("only %d images: reducer code is %d-d instead of %d", len(X), n_components, wanted)
    val_error = None
    if n_val:
        held_out = Reducer(fit_pca(X[order[n_val:]], n_components, cfg.pca_whiten), cfg.pca_whiten)
        val_error = float(held_out.error(X[order[:n_val]]).mean())
    errors = cross_fitted_errors(X, order, n_components, cfg.pca_whiten)
    state = fit_pca(X, n_components, cfg.pca_whiten)
    code_dim = n_components
    if lda:  # pseudo-classes from the inventory's own PCA codes (no labels)
        code_dim = min(cfg.code_dim, n_components)
        state.update(fit_pseudo_lda(Reducer(state, cfg.pca_whiten).pca(X), n_classes, code_dim, seed=seed))
    stage("fitting the reducer", 1, 1)
    total_var = float(X.var(0, ddof=1).sum())
    config = PretrainedModelConfig(
        name=name,
        pretrained=cfg,
        backbone_sha256=bb_sha,
        preprocess=pre,
        code_dim=int(code_dim if cfg.code_dim else X.shape[1]),
        feature_dim=int(X.shape[1]),
        trunk_fingerprint=trunk_fingerprint(cfg, bb_sha, pre),
        graph=GRAPH if graph_sha else None,
        graph_sha256=graph_sha,
        novelty_reference=novelty_reference(errors),
        training={
            "images": len(X),
            "n_val": n_val,
            "reducer": f"pseudo-lda ({n_classes} pseudo-classes)" if lda else "pca",  # what was fitted
            "train_error": round(float(Reducer(state, cfg.pca_whiten).error(X).mean()), 6),
            "cross_fitted_error": round(float(errors.mean()), 6),  # what the novelty reference holds
            "val_error": None if val_error is None else round(val_error, 6),
            "explained_variance_ratio": round(
                float(state["reducer.explained_variance"].sum()) / total_var, 4
            ),
            "export_seconds": round(t_export, 2),
            "extract_seconds": round(t_extract, 2),
            "images_per_second": round(len(X) / t_extract, 1),
            "seconds": round(time.perf_counter() - t0, 2),
            "preset": asdict(cfg),
        },
    )
    fp = save_model_dir(out_dir, state, config)
    if feature_cache:
        write_cache(out_dir, config.trunk_fingerprint, shas, X, sizes)
    logger.info("fitted %s on %d images in %.1f s", name, len(X), time.perf_counter() - t0)
    return fp, config


def _build_extractor(
    cfg: PretrainedConfig, out_dir: Path, paths: list[Path], stage: StageCallback
) -> tuple[Callable[[np.ndarray], np.ndarray], str | None]:
    """The feature function fitting uses - the exported graph (runtime onnx) or torch - and the graph's sha256."""
    from encoder.backbones import FeatureExtractor

    module = FeatureExtractor(cfg)
    if cfg.runtime == "torch":
        import torch

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return module(torch.from_numpy(x)).numpy()

        return run, None
    from encoder.export import export_graph, quantize_graph
    from encoder.runtime import OnnxGraph

    stage("exporting graph", 0, 1)
    graph = export_graph(module, out_dir / GRAPH, cfg.image_size, any_shape=cfg.resize == "whole")
    if cfg.quantize == "int8":
        stage("calibrating int8", 0, 1)
        pre = preprocess_for(cfg)
        sample = paths[:: max(1, len(paths) // CALIBRATION_IMAGES)][:CALIBRATION_IMAGES]
        batches = (
            pre.normalize(stack)
            for chunk in _chunks(_decode_all(sample, pre), EXTRACT_BATCH)
            for _, stack in batches_by_shape(chunk)
        )
        quantize_graph(graph, graph, batches)
    elif cfg.quantize is not None:
        raise ValueError(f"unknown quantisation {cfg.quantize!r} (None or 'int8')")
    stage("exporting graph", 1, 1)
    return OnnxGraph(graph.read_bytes(), batch=EXTRACT_BATCH), file_sha256(graph)


def _decode_all(paths: list[Path], pre) -> Iterator[np.ndarray]:  # noqa: ANN001 - Preprocess
    for p in paths:
        item = _read(p, pre)
        if item is not None:
            yield item[1]


def _chunks(items: Iterator, n: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _read(p: Path, pre) -> tuple[str, np.ndarray, tuple[int, int]] | None:  # noqa: ANN001 - Preprocess
    """(sha256 of the bytes, uint8 (S, S, 3), original size) of one file, decoded as the indexer does."""
    try:
        data = p.read_bytes()
        img = load_image(io.BytesIO(data), draft_size=pre.image_size)
        return hashlib.sha256(data).hexdigest(), pre.to_uint8(img), img.info["original_size"]
    except (ImageDecodeError, ImageTooLargeError, OSError) as e:
        logger.warning("skipping %s: %s", p, e)
        return None


def extract_features(
    extractor: Callable[[np.ndarray], np.ndarray],
    paths: list[Path],
    pre,  # noqa: ANN001 - Preprocess
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Features (N, C) of every readable image, with each one's sha256 and original (width, height).

    Two threads decode the next batch while the current one runs through the extractor.
    `progress(done)` after each batch, with the number of files done so far.
    """
    feats, shas, sizes = [], [], []
    chunks = [paths[i : i + EXTRACT_BATCH] for i in range(0, len(paths), EXTRACT_BATCH)]
    done = 0
    with ThreadPoolExecutor(2) as pool:
        pending = [pool.submit(_read, p, pre) for p in chunks[0]] if chunks else []
        for i, chunk in enumerate(chunks):
            results = [f.result() for f in pending]
            pending = [pool.submit(_read, p, pre) for p in chunks[i + 1]] if i + 1 < len(chunks) else []
            ok = [r for r in results if r is not None]
            if ok:
                feats.append(
                    map_by_shape([r[1] for r in ok], lambda u8: extractor(pre.normalize(u8)))
                )  # (B, C)
                shas.extend(r[0] for r in ok)
                sizes.extend(r[2] for r in ok)
            done += len(chunk)
            if progress:
                progress(done)
    if not feats:
        raise ValueError("no readable images to fit on")
    return np.concatenate(feats).astype(np.float32), shas, np.asarray(sizes, np.int32).reshape(-1, 2)
