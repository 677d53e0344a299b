"""`Encoder`: a loaded model that embeds batches of images into float32 vectors.

Every kind of model (autoencoders trained here, pretrained backbones with a reducer) is loaded by
`load_encoder(MODEL_DIR)` and offers the same things: `preprocess` (how to prepare an image),
`embed` (prepared batch -> vectors), `novelty` (how unlike the training images each input is) and
`model_config` (its typed config). This module imports no torch: a kind loads its own runtime
(onnxruntime for graphs exported at train time, torch for model dirs written before them) when a
model of that kind is loaded.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from encoder.config import ModelConfig, ModelDirError, parse_model_config
from encoder.model_dir import read_model_dir
from encoder.preprocess import Preprocess, map_by_shape


class Encoder:
    """Base class: subclasses set `preprocess`, `dim`, `config`, `fingerprint` and implement `_embed`.

    `config` is the config dict as recorded with an index; `model_config` is its typed form (read it).
    """

    kind: str = "base"
    preprocess: Preprocess
    dim: int
    fingerprint: str
    config: dict
    model_dir: Path | None = None  # where it was loaded from (None: built in memory)

    @cached_property
    def model_config(self) -> ModelConfig:
        return parse_model_config(self.config)

    @property
    def feature_cache(self):  # noqa: ANN201 - encoder.feature_cache.FeatureCache | None
        """Features extracted at train time, for `embed_features` (None: this kind keeps none)."""
        return None

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Normalised (B, 3, S, S) float32 -> (B, dim) float32 vectors."""
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, S, S) batch, got shape {batch.shape}")
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        out = self._embed(np.ascontiguousarray(batch, np.float32))
        return np.ascontiguousarray(out, dtype=np.float32)

    def embed_uint8(self, batch_u8: np.ndarray) -> np.ndarray:
        """Resized uint8 (B, S, S, 3) -> vectors."""
        return self.embed(self.preprocess.normalize(batch_u8))

    def embed_pixels(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """Resized uint8 images (H, W, 3), shapes possibly differing -> (N, dim) vectors, in order.

        Images of one shape run as one batch (`preprocess.map_by_shape`).
        """
        if not len(pixels):
            return np.zeros((0, self.dim), np.float32)
        return map_by_shape(pixels, self.embed_uint8)

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Decoded RGB images -> (N, dim) vectors."""
        parts = [
            self.embed_pixels([self.preprocess.to_uint8(im) for im in images[i : i + batch_size]])
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    def embed_features(self, features: np.ndarray) -> np.ndarray:
        """Vectors (N, dim) of cached features (N, C) (see `feature_cache`)."""
        raise NotImplementedError(f"{self.kind} encoders keep no features")

    def novelty(self, batch: np.ndarray) -> np.ndarray:
        """Per-image reconstruction error (B,): how unlike the training images each input is."""
        return np.asarray(self._novelty(np.ascontiguousarray(batch, np.float32)), np.float32)

    @property
    def has_novelty(self) -> bool:
        """True when `novelty_percentile` gives figures (the model dir holds a reference distribution)."""
        return self.model_config.novelty_reference is not None

    def novelty_percentile(self, batch: np.ndarray) -> np.ndarray | None:
        """(B,) in 0..100: each image's `novelty` as a percentile of the training images' own errors.

        None when the model dir holds no reference distribution (models trained before it existed).
        """
        from encoder.novelty import percentile_of

        ref = self.model_config.novelty_reference
        return None if ref is None else percentile_of(self.novelty(batch), ref)

    def set_threads(self, n: int) -> None:
        """Compute threads for the following calls (the runtime's intra-op threads)."""

    def get_threads(self) -> int:
        return 1

    def _embed(self, x: np.ndarray) -> np.ndarray:
        """(B, 3, S, S) -> (B, dim). Subclasses written for torch may implement `_embed_tensor` instead."""
        import torch

        with torch.inference_mode():
            return self._embed_tensor(torch.from_numpy(x)).numpy()

    def _novelty(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self._novelty_tensor(torch.from_numpy(x)).numpy()

    def _embed_tensor(self, x):  # noqa: ANN001, ANN202 - torch.Tensor in and out
        raise NotImplementedError

    def _novelty_tensor(self, x):  # noqa: ANN001, ANN202
        raise NotImplementedError


Loader = Callable[[dict, dict, str], Encoder]  # (weights, config dict, fingerprint) -> Encoder

# kind -> a loader, or "module:attribute" of one (imported when a model of that kind is loaded)
LOADERS: dict[str, Loader | str] = {
    "autoencoder": "encoder.autoencoder:AutoencoderEncoder",
    "pretrained": "encoder.pretrained:PretrainedEncoder",
}


def register_kind(kind: str, loader: Loader) -> None:
    """Let another module add a kind of model dir."""
    LOADERS[kind] = loader


def load_encoder(model_dir: str | Path) -> Encoder:
    """Load any model dir written by imgrec into an `Encoder`.

    :raise ModelDirError: the folder is not a valid model dir (or of an unknown kind).
    """
    state_dict, config, fp = read_model_dir(model_dir)
    typed = parse_model_config(config, source=str(Path(model_dir) / "config.json"))
    loader = LOADERS.get(typed.kind)
    if loader is None:
        raise ModelDirError(
            f"{model_dir}: unknown model kind {typed.kind!r} (known: {', '.join(sorted(LOADERS))})"
        )
    if isinstance(loader, str):
        module, attr = loader.split(":")
        loader = getattr(importlib.import_module(module), attr)
    from_dir = getattr(loader, "from_model_dir", None)  # kinds with files besides the weights
    enc = from_dir(Path(model_dir), state_dict, config, fp) if from_dir else loader(state_dict, config, fp)
    enc.model_dir = Path(model_dir)
    return enc
