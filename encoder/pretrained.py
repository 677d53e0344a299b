"""Pretrained presets: EfficientNet-Lite features, reduced by a map fitted on the inventory (no labels).

A model dir of kind "pretrained" holds the reducer (safetensors), the config, and (runtime onnx, the
default) `features.onnx`: the trunks, pooling and normalisation exported at train time, run by
onnxruntime. Embedding a query needs numpy and onnxruntime only; torch is imported for model dirs
written before graphs existed (runtime torch), which are rebuilt from the weights packages.

    image (B, 3, S, S), scaled (x - 127.5) / 127.5  -> features.onnx -> (B, C) unit features
    -> reducer -> code (B, d)

`imgrec train --model NAME` fits a preset of `PRESETS` (encoder.fit.fit_pretrained).
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np

from encoder.compute import TorchThreads
from encoder.config import PretrainedConfig, PretrainedModelConfig, config_to_dict, parse_model_config
from encoder.embedder import Encoder
from encoder.model_dir import ModelDirError
from encoder.preprocess import Preprocess
from encoder.reducer import Reducer
from encoder.runtime import batch_key

KIND = "pretrained"
RECENT_BATCHES = 4  # batches whose features are kept for a following `novelty` call

LITE01 = "efficientnet-lite0+efficientnet-lite1"

# Selectable by `imgrec train --model NAME` (docs/quality.md: each one's figures on clothing).
PRESETS: dict[str, PretrainedConfig] = {
    "effnet-lite0-pca": PretrainedConfig(),
    "effnet-lite0": PretrainedConfig(code_dim=None),
    # two backbones at 260 px, PCA to 64-d (clothing P@5 0.802): the default before issue 11
    "effnet-lite02-pca": PretrainedConfig(
        backbone="efficientnet-lite0+efficientnet-lite2", image_size=260, code_dim=64
    ),
    # the default since issue 11: Lite1 instead of Lite2, 0.9x the compute of effnet-lite02-pca, P@5 as good
    "effnet-lite01-pca": PretrainedConfig(backbone=LITE01, image_size=260, code_dim=64),
    # the same, its graph quantised to int8 (other vectors: its own fingerprint and figures)
    "effnet-lite01-pca-int8": PretrainedConfig(backbone=LITE01, image_size=260, code_dim=64, quantize="int8"),
    # effnet-lite01-pca answered with alpha-QE over its 3 nearest stored vectors (indexer.query_expansion):
    # the same vectors and indexing cost, a second search per query (docs/quality.md, third pass)
    "effnet-lite01-pca-qe": PretrainedConfig(backbone=LITE01, image_size=260, code_dim=64, query_expansion=3),
    # the same trunks, PCA-128 then LDA to 64-d on 128 k-means pseudo-classes of the inventory (no labels),
    # answered with alpha-QE: the best measured in the third pass (docs/quality.md)
    "effnet-lite01-lda-qe": PretrainedConfig(
        backbone=LITE01, image_size=260, code_dim=64, reducer="pseudo-lda", query_expansion=3
    ),
    # the same, but Lite0 sees the whole photo (orientation kept, short side 224: the same pixels as a
    # 260 px square) while Lite1 sees its centre square at 260: no more compute (docs/quality.md, fourth pass)
    "effnet-lite01-whole-lda-qe": PretrainedConfig(
        backbone=LITE01,
        image_size=260,
        resize="whole",
        views="whole@224+center@260",
        code_dim=64,
        reducer="pseudo-lda",
        query_expansion=3,
    ),
    # Lite1 alone at its native 240 px: 0.44x the compute of effnet-lite02-pca
    "effnet-lite1-pca": PretrainedConfig(backbone="efficientnet-lite1", image_size=240, code_dim=128),
    # Lite1 + Lite2 at 260 px: the best measured on cached features, 1.14x the compute of effnet-lite02-pca
    "effnet-lite12-pca": PretrainedConfig(
        backbone="efficientnet-lite1+efficientnet-lite2", image_size=260, code_dim=128
    ),
}


def preprocess_for(cfg: PretrainedConfig) -> Preprocess:
    """The weights' own input scaling, (x - 127.5) / 127.5: measured better than ImageNet mean/std."""
    return Preprocess(image_size=cfg.image_size, resize=cfg.resize, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def preset(name: str, **overrides: object) -> PretrainedConfig:
    """The preset `name`, with fields replaced (e.g. runtime="torch" for the pre-graph path)."""
    if name not in PRESETS:
        raise ValueError(f"unknown pretrained preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


class PretrainedEncoder(Encoder):
    """Pooled backbone features (from the exported graph, or torch for old dirs), reduced to the code."""

    kind = KIND

    def __init__(
        self, state_dict: dict[str, np.ndarray], config: dict, fingerprint: str, graph: bytes | None = None
    ):
        typed = parse_model_config(config)
        assert isinstance(typed, PretrainedModelConfig)
        self.model_config = typed
        self.config = config_to_dict(typed)
        self.fingerprint = fingerprint
        self.cfg = typed.pretrained
        self.preprocess = typed.preprocess
        self.reducer = Reducer(state_dict, self.cfg.pca_whiten)
        self.dim = typed.code_dim
        if self.cfg.runtime == "onnx":
            from encoder.runtime import OnnxGraph

            if graph is None:
                raise ModelDirError(f"{typed.name}: the model's graph ({typed.graph}) was not loaded")
            self.extractor = OnnxGraph(graph)
        else:
            self.extractor = _torch_extractor(typed)
        self._recent: dict[bytes, np.ndarray] = {}  # input digest -> features, oldest first
        self._lock = threading.Lock()
        self._cache = None

    @classmethod
    def from_model_dir(
        cls, path: Path, state_dict: dict[str, np.ndarray], config: dict, fingerprint: str
    ) -> PretrainedEncoder:
        """Load with the graph file the config names (read_model_dir has checked its sha256)."""
        typed = parse_model_config(config)
        graph = (Path(path) / typed.graph).read_bytes() if typed.graph and typed.runtime == "onnx" else None
        return cls(state_dict, config, fingerprint, graph)

    # -- features ----------------------------------------------------------------------------------

    def features(self, x: np.ndarray) -> np.ndarray:
        """Pooled, L2-normalised backbone features (B, C) of a normalised batch.

        The last few batches' features are kept, so `novelty` right after `embed` costs no second pass.
        """
        x = np.ascontiguousarray(x, np.float32)
        key = batch_key(x)
        with self._lock:
            cached = self._recent.get(key)
        if cached is not None:
            return cached
        f = self.extractor(x)
        with self._lock:
            self._recent[key] = f
            while len(self._recent) > RECENT_BATCHES:
                self._recent.pop(next(iter(self._recent)))
        return f

    @property
    def feature_cache(self):  # noqa: ANN201 - encoder.feature_cache.FeatureCache | None
        """Features extracted when this model was fitted (in its model dir), keyed by file sha256."""
        if self._cache is None and self.model_dir is not None:
            from encoder.feature_cache import FeatureCache

            self._cache = FeatureCache.open(self.model_dir, self.model_config.trunk_fingerprint)
        return self._cache or None

    def embed_features(self, features: np.ndarray) -> np.ndarray:
        f = np.asarray(features, np.float32)
        return np.ascontiguousarray(self.reducer.encode(f) if self.cfg.code_dim else f, np.float32)

    def _embed(self, x: np.ndarray) -> np.ndarray:
        return self.embed_features(self.features(x))

    def _novelty(self, x: np.ndarray) -> np.ndarray:
        return self.reducer.error(self.features(x))

    # -- threads -----------------------------------------------------------------------------------

    def set_threads(self, n: int) -> None:
        self.extractor.set_threads(n)

    def get_threads(self) -> int:
        return self.extractor.threads

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_lock"), state.pop("_cache")
        state["_recent"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._cache = None


class _TorchExtractor(TorchThreads):
    """The pre-graph runtime: the trunks rebuilt from the weights packages, run by torch eager."""

    def __init__(self, typed: PretrainedModelConfig):
        from encoder.backbones import FeatureExtractor, backbone_sha256

        actual = backbone_sha256(typed.pretrained.backbone)
        if actual != typed.backbone_sha256:
            raise ModelDirError(
                f"installed {typed.pretrained.backbone} weights (sha256 {actual[:12]}) differ from the ones this "
                f"model was fitted with ({typed.backbone_sha256[:12]}): reinstall the same weights package or refit"
            )
        self.module = FeatureExtractor(typed.pretrained)
        self.batch = 8  # images per forward pass: faster than 32 on a 2-core CPU

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            t = torch.from_numpy(x)
            return torch.cat([self.module(xb) for xb in t.split(self.batch)]).numpy()


def _torch_extractor(typed: PretrainedModelConfig) -> _TorchExtractor:
    return _TorchExtractor(typed)
