"""`Encoder`: a loaded model that embeds batches of images into float32 vectors.

Every kind of model (autoencoders trained here, pretrained backbones with a reducer) is loaded by
`load_encoder(MODEL_DIR)` and offers the same three things: `preprocess` (how to prepare an image),
`embed` (prepared batch -> vectors) and `novelty` (how unlike the training images each input is).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from encoder.model_dir import read_model_dir
from encoder.models import EncoderConfig, build_model
from encoder.preprocess import Preprocess


class Encoder:
    """Base class: subclasses set `preprocess`, `dim` and implement `_embed_tensor`."""

    kind: str = "base"
    preprocess: Preprocess
    dim: int
    fingerprint: str
    config: dict

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Normalised (B, 3, S, S) float32 -> (B, dim) float32 vectors."""
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, S, S) batch, got shape {batch.shape}")
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        with torch.inference_mode():
            out = self._embed_tensor(torch.from_numpy(np.ascontiguousarray(batch, np.float32)))
        return np.ascontiguousarray(out.numpy(), dtype=np.float32)

    def embed_uint8(self, batch_u8: np.ndarray) -> np.ndarray:
        """Resized uint8 (B, S, S, 3) -> vectors."""
        return self.embed(self.preprocess.normalize(batch_u8))

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Decoded RGB images -> (N, dim) vectors."""
        parts = [
            self.embed_uint8(np.stack([self.preprocess.to_uint8(im) for im in images[i : i + batch_size]]))
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    def novelty(self, batch: np.ndarray) -> np.ndarray:
        """Per-image reconstruction error (B,): how unlike the training images each input is."""
        with torch.inference_mode():
            out = self._novelty_tensor(torch.from_numpy(np.ascontiguousarray(batch, np.float32)))
        return out.numpy().astype(np.float32)

    def novelty_percentile(self, batch: np.ndarray) -> np.ndarray | None:
        """(B,) in 0..100: each image's `novelty` as a percentile of the training images' own errors.

        None when the model dir holds no reference distribution (models trained before it existed).
        """
        from encoder.novelty import has_novelty_reference, novelty_percentile

        return novelty_percentile(self, batch) if has_novelty_reference(self) else None

    def _embed_tensor(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _novelty_tensor(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class AutoencoderEncoder(Encoder):
    """An autoencoder trained by `imgrec train`; the code is the encoder half's output."""

    kind = "autoencoder"

    def __init__(self, state_dict: dict[str, torch.Tensor], config: dict, fingerprint: str):
        self.config = config
        self.fingerprint = fingerprint
        self.model_config = EncoderConfig.from_dict(config["model"])
        self.preprocess = Preprocess.from_dict(config["preprocess"])
        self.model = build_model(self.model_config)
        self.model.load_state_dict(state_dict, strict=True)
        self.model.eval()
        self.dim = int(config["code_dim"])

    def _embed_tensor(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(x)

    def _novelty_tensor(self, x: torch.Tensor) -> torch.Tensor:
        return ((self.model(x) - x) ** 2).flatten(1).mean(1)


LOADERS: dict[str, Callable[[dict, dict, str], Encoder]] = {
    "autoencoder": lambda sd, cfg, fp: AutoencoderEncoder(sd, cfg, fp),
}


def register_kind(kind: str, loader: Callable[[dict, dict, str], Encoder]) -> None:
    """Let another module (e.g. pretrained backbones) add a kind of model dir."""
    LOADERS[kind] = loader


def load_encoder(model_dir: str | Path) -> Encoder:
    """Load any model dir written by imgrec into an `Encoder`.

    :raise ModelDirError: the folder is not a valid model dir.
    """
    state_dict, config, fp = read_model_dir(model_dir)
    kind = config.get("kind", "autoencoder")
    if kind not in LOADERS:
        _import_optional_kinds()
    if kind not in LOADERS:
        raise ValueError(f"{model_dir}: unknown model kind {kind!r}")
    return LOADERS[kind](state_dict, config, fp)


def _import_optional_kinds() -> None:
    """Import modules that register more kinds (kept lazy: they pull heavy dependencies)."""
    import importlib

    for name in ("encoder.pretrained",):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
