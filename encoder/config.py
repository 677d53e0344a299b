"""What a model dir's config.json holds, as typed, versioned dataclasses (one per kind of model).

    cfg = parse_model_config(json.loads(text))   # validated; version 1 dirs are upgraded in memory
    cfg.kind, cfg.name, cfg.arch, cfg.code_dim, cfg.preprocess, cfg.novelty_reference
    cfg.to_dict()                                 # what is written (and what an index records)

Every reader goes through `parse_model_config` (model dirs, and the copies stored with each index
generation): a config that is not valid for its version fails with one `ModelDirError` line saying
what to do. Nothing here imports torch.

Versions: 1 = every dir written before the version field existed (no "version" key; autoencoders
and pretrained presets run by torch). 2 = adds "version", and for pretrained models the runtime
(onnxruntime graph file and its sha256) and the trunk fingerprint that keys the feature cache.
Autoencoders written since may name a graph too (codes and novelty in one ONNX file); without one,
torch rebuilds them from the weights. 3 = pretrained presets may carry query-time steps
(`pretrained.query_expansion`, `qe_alpha`) and the pseudo-lda reducer (`pseudo_classes`,
`lda_input_dim`), so an imgrec that would ignore them (and answer differently) refuses the model.
4 = pretrained presets may feed each trunk its own view of the image (`pretrained.views`) and keep the
image's orientation (preprocess resize "whole"): inputs of up to three shapes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from encoder.preprocess import Preprocess

CONFIG_VERSION = 4  # what this code writes
READABLE_VERSIONS = (1, 2, 3, 4)
REDUCERS = ("pca", "pseudo-lda")  # PretrainedConfig.reducer  # what it reads (1 is upgraded in memory)


class ModelDirError(ValueError):
    """A model directory is missing, incomplete, from another version, or does not match its fingerprint."""


# -- the parts -----------------------------------------------------------------------------------


@dataclass
class EncoderConfig:
    """An autoencoder's architecture (encoder.models)."""

    arch: str = "conv-ae"  # one of encoder.models.MODELS
    image_size: int = 64  # square input side, pixels
    code_dim: int = 128  # simple-ae: code size; conv-ae: derived from filters and image size
    filters: tuple[int, ...] = field(default=(16, 8, 8))  # conv-ae: channels of the 3 conv blocks
    width: int = 16  # res-ae: channels of the first stage (doubling to 4x)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EncoderConfig:
        _require_object(d, "model")
        known = {k: d[k] for k in ("arch", "image_size", "code_dim", "filters", "width") if k in d}
        if "filters" in known:
            known["filters"] = tuple(known["filters"])
        return cls(**known)


@dataclass
class PretrainedConfig:
    """A pretrained preset: which backbone trunks, how images are fed and pooled, how features are reduced."""

    backbone: str = "efficientnet-lite0"  # one of encoder.backbones.BACKBONES, or several joined by "+"
    image_size: int = 224  # square input side
    resize: str = "center-crop"  # center-crop (measured +0.03 P@5 on clothing) | squash | whole
    # what each trunk sees, "+"-joined like `backbone` ("whole@224+center@260": the first trunk the whole
    # input scaled to a short side of 224, the second its centre square at 260); None: the input as is
    views: str | None = None
    gem_p: float = 3.0  # GeM pooling exponent (1 = average pooling)
    flip: bool = False  # average the features of the image and its mirror (2x the forward cost)
    code_dim: int | None = 128  # reduced code size; None keeps the pooled features
    pca_whiten: bool = False  # whitening measured as harmful (issue 4)
    reducer: str = "pca"  # pca | pseudo-lda (PCA, then LDA on k-means pseudo-classes: encoder.reducer)
    pseudo_classes: int = 128  # pseudo-lda: k-means clusters of the inventory's PCA codes (capped by size)
    lda_input_dim: int = 128  # pseudo-lda: the PCA's size before the projection to code_dim
    runtime: str = "onnx"  # onnx: graph exported at train time, run by onnxruntime | torch: eager (v1)
    quantize: str | None = None  # None (float32) | "int8": static, per-channel, calibrated on the inventory
    # query time (indexer.query_expansion, applied by indexer.querying): nothing changes at index time
    query_expansion: int = 0  # alpha-QE over this many nearest stored vectors (0: off)
    qe_alpha: float = 3.0  # alpha-QE's exponent on the neighbours' cosine similarities

    @classmethod
    def from_dict(cls, d: dict) -> PretrainedConfig:
        _require_object(d, "pretrained")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


VIEW_CROPS = ("whole", "center")


def trunk_views(p: PretrainedConfig) -> list[tuple[str, int]]:
    """(crop, short side) per trunk: `p.views` parsed, or the input as is for each trunk.

    :raise ValueError: a malformed spec, or not one view per trunk.
    """
    n_trunks = len(p.backbone.split("+"))
    if p.views is None:
        return [("whole", p.image_size)] * n_trunks
    views = []
    for part in p.views.split("+"):
        crop, _, size = part.partition("@")
        if crop not in VIEW_CROPS or not size.isdigit() or not 32 <= int(size) <= p.image_size:
            raise ValueError(
                f"bad view {part!r} in {p.views!r}: expected CROP@SIZE, CROP one of {VIEW_CROPS}, "
                f"32 <= SIZE <= image_size ({p.image_size})"
            )
        views.append((crop, int(size)))
    if len(views) != n_trunks:
        raise ValueError(f"views {p.views!r}: {len(views)} views for {n_trunks} trunks ({p.backbone})")
    return views


@dataclass(frozen=True)
class NoveltyReference:
    """Quantiles of the reconstruction errors of images the model did not fit on (encoder.novelty)."""

    levels: tuple[float, ...]  # quantile levels, 0..100
    quantiles: tuple[float, ...]  # the error at each level
    n: int  # images the quantiles summarise

    def to_dict(self) -> dict:
        return {"levels": list(self.levels), "quantiles": list(self.quantiles), "n": self.n}

    @classmethod
    def from_dict(cls, d: dict) -> NoveltyReference:
        return cls(tuple(map(float, d["levels"])), tuple(map(float, d["quantiles"])), int(d["n"]))


# -- one config per kind -------------------------------------------------------------------------


@dataclass
class AutoencoderModelConfig:
    """An autoencoder trained by `imgrec train` (weights in model.safetensors)."""

    kind: ClassVar[str] = "autoencoder"
    model: EncoderConfig  # the architecture
    preprocess: Preprocess  # how images become input
    code_dim: int  # length of the vectors
    novelty_reference: NoveltyReference | None = None  # None: written before novelty existed
    training: dict[str, Any] = field(default_factory=dict)  # figures of the run that made it (a record)
    graph: str | None = None  # ONNX file: codes and novelty, run by onnxruntime (None: torch rebuilds it)
    graph_sha256: str | None = None  # of that file: the model's fingerprint covers it
    version: int = CONFIG_VERSION

    @property
    def name(self) -> str:
        return self.model.arch

    @property
    def arch(self) -> str:
        return self.model.arch

    @property
    def runtime(self) -> str:
        return "onnx" if self.graph else "torch"


@dataclass
class PretrainedModelConfig:
    """A pretrained preset fitted on an inventory: the reducer in model.safetensors, the trunks in a graph."""

    kind: ClassVar[str] = "pretrained"
    name: str  # the preset (`imgrec train --model NAME`)
    pretrained: PretrainedConfig  # the preset's settings
    backbone_sha256: str  # of the weights files the trunks were built from
    preprocess: Preprocess
    code_dim: int  # length of the vectors
    feature_dim: int  # length of the pooled features, before the reducer
    trunk_fingerprint: str = ""  # what the features depend on (weights, input, pooling, runtime): cache key
    graph: str | None = None  # ONNX file with the trunks and pooling (runtime onnx), in the model dir
    graph_sha256: str | None = None  # of that file: the model's fingerprint covers it
    novelty_reference: NoveltyReference | None = None
    training: dict[str, Any] = field(default_factory=dict)
    version: int = CONFIG_VERSION

    @property
    def arch(self) -> str:
        return self.pretrained.backbone

    @property
    def runtime(self) -> str:
        return self.pretrained.runtime


@dataclass
class OtherModelConfig:
    """A kind registered by another module (`encoder.register_kind`): only the common fields are typed."""

    kind: str
    preprocess: Preprocess
    code_dim: int
    novelty_reference: NoveltyReference | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # everything else, as written
    version: int = CONFIG_VERSION

    @property
    def name(self) -> str:
        return self.kind

    @property
    def arch(self) -> str:
        return self.kind

    @property
    def runtime(self) -> str:
        return "python"


ModelConfig = AutoencoderModelConfig | PretrainedModelConfig | OtherModelConfig


# -- reading and writing -------------------------------------------------------------------------


def trunk_fingerprint(p: PretrainedConfig, backbone_sha256: str, preprocess: Preprocess) -> str:
    """sha256 over everything the pooled features depend on (not the reducer): keys the feature cache."""
    parts = {
        "backbone": p.backbone,
        "backbone_sha256": backbone_sha256,
        "gem_p": p.gem_p,
        "flip": p.flip,
        "runtime": p.runtime,
        "quantize": p.quantize,
        "preprocess": preprocess.to_dict(),
    }
    if p.views is not None:  # keys of presets without views stay what they were
        parts["views"] = p.views
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def config_to_dict(cfg: ModelConfig) -> dict:
    """The JSON-able form written to config.json and recorded with each index generation."""
    out: dict[str, Any] = {"version": cfg.version, "kind": cfg.kind}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in ("graph", "graph_sha256") and value is None and cfg.kind == AutoencoderModelConfig.kind:
            continue  # an autoencoder without a graph (torch runtime) is written as before graphs existed
        if f.name == "extra":
            out.update(value)
        elif value is None or isinstance(value, str | int | float | bool | dict):
            out[f.name] = value
        elif isinstance(value, NoveltyReference | EncoderConfig | Preprocess):
            out[f.name] = value.to_dict()
        else:  # a plain dataclass
            out[f.name] = asdict(value)
    return out


def parse_model_config(d: dict, source: str = "model config") -> ModelConfig:
    """The typed config of a config.json dict (any readable version; version 1 is upgraded in memory).

    :raise ModelDirError: not a dict, an unknown version, or fields missing or malformed.
    """
    if not isinstance(d, dict):
        raise ModelDirError(f"{source}: not a JSON object")
    version = d.get("version", 1)
    if version not in READABLE_VERSIONS:
        raise ModelDirError(
            f"{source}: config version {version!r} is not one this imgrec reads ({', '.join(map(str, READABLE_VERSIONS))}): "
            "retrain the model with `imgrec train` (or use the imgrec that wrote it)"
        )
    kind = d.get("kind", "autoencoder")
    try:
        if kind == AutoencoderModelConfig.kind:
            if (d.get("graph") is None) != (d.get("graph_sha256") is None):
                raise ModelDirError(f"{source}: a graph file needs its sha256: retrain with `imgrec train`")
            return AutoencoderModelConfig(
                model=EncoderConfig.from_dict(d["model"]),
                preprocess=Preprocess.from_dict(d["preprocess"]),
                code_dim=int(d["code_dim"]),
                novelty_reference=_novelty(d),
                training=dict(d.get("training") or {}),
                graph=d.get("graph"),
                graph_sha256=d.get("graph_sha256"),
            )
        if kind == PretrainedModelConfig.kind:
            p = PretrainedConfig.from_dict(d["pretrained"])
            if version == 1:  # written before the runtime existed: torch eager, no graph
                p.runtime = "torch"
            pre = Preprocess.from_dict(d["preprocess"])
            cfg = PretrainedModelConfig(
                name=str(d["name"]),
                pretrained=p,
                backbone_sha256=str(d["backbone_sha256"]),
                preprocess=pre,
                code_dim=int(d["code_dim"]),
                feature_dim=int(d["feature_dim"]),
                trunk_fingerprint=str(
                    d.get("trunk_fingerprint") or trunk_fingerprint(p, d["backbone_sha256"], pre)
                ),
                graph=d.get("graph"),
                graph_sha256=d.get("graph_sha256"),
                novelty_reference=_novelty(d),
                training=dict(d.get("training") or {}),
            )
            if p.runtime == "onnx" and not (cfg.graph and cfg.graph_sha256):
                raise ModelDirError(
                    f"{source}: runtime onnx but no graph file recorded: retrain with `imgrec train`"
                )
            if not (isinstance(p.query_expansion, int) and p.query_expansion >= 0 and float(p.qe_alpha) >= 0):
                raise ModelDirError(
                    f"{source}: query_expansion must be a whole number >= 0 and qe_alpha >= 0, got "
                    f"{p.query_expansion!r}, {p.qe_alpha!r}: retrain with `imgrec train`"
                )
            if p.reducer not in REDUCERS:
                raise ModelDirError(f"{source}: unknown reducer {p.reducer!r}: retrain with `imgrec train`")
            if p.runtime not in ("onnx", "torch"):
                raise ModelDirError(f"{source}: unknown runtime {p.runtime!r}: retrain with `imgrec train`")
            return cfg
        common = {"kind", "version", "preprocess", "code_dim", "novelty_reference"}
        return OtherModelConfig(
            kind=str(kind),
            preprocess=Preprocess.from_dict(d["preprocess"]),
            code_dim=int(d["code_dim"]),
            novelty_reference=_novelty(d),
            extra={k: v for k, v in d.items() if k not in common},
        )
    except ModelDirError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        what = f"missing field {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise ModelDirError(
            f"{source}: not a valid {kind} model config (version {version}, {what}): retrain with `imgrec train`"
        ) from e


def _require_object(d: object, name: str) -> None:
    if not isinstance(d, dict):
        raise TypeError(f"{name!r} must be an object, got {type(d).__name__}")


def _novelty(d: dict) -> NoveltyReference | None:
    ref = d.get("novelty_reference")
    return None if ref is None else NoveltyReference.from_dict(ref)
