"""Image encoders: autoencoders trained on the inventory, and pretrained backbones with a reducer.

Depends on nothing else in imgrec; `indexer` and `search_api` build on it. Importing this package
imports no torch: autoencoders load it when one is loaded, pretrained presets only to fit and export.
"""

from encoder.config import (
    CONFIG_VERSION,
    AutoencoderModelConfig,
    EncoderConfig,
    ModelConfig,
    ModelDirError,
    PretrainedConfig,
    PretrainedModelConfig,
    parse_model_config,
)
from encoder.embedder import Encoder, load_encoder, register_kind
from encoder.model_dir import read_fingerprint
from encoder.preprocess import (
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    ImageTooLargeError,
    Preprocess,
    is_image_name,
    load_image,
)
from encoder.pretrained import PRESETS as PRETRAINED_PRESETS

# Autoencoders (encoder.models; listed here so that `imgrec --help` needs no torch).
MODELS: list[str] = ["simple-ae", "conv-ae", "res-ae"]
# What `imgrec train --model` accepts, and the default: the best measured on clothing (docs/quality.md).
TRAINABLE_MODELS: list[str] = [*MODELS, *PRETRAINED_PRESETS]
# Lite0 on the whole photo, Lite1 on its centre, pseudo-lda codes, alpha-QE (docs/quality.md, fourth pass)
DEFAULT_MODEL: str = "effnet-lite01-whole-lda-qe"


def set_compute_threads(n: int) -> None:
    """Process-wide compute threads (`encoder.compute.set_threads`); call at entry points only."""
    from encoder import compute

    compute.set_threads(n)


__all__ = [
    "CONFIG_VERSION",
    "DEFAULT_MODEL",
    "IMAGE_EXTENSIONS",
    "MODELS",
    "PRETRAINED_PRESETS",
    "TRAINABLE_MODELS",
    "AutoencoderModelConfig",
    "Encoder",
    "EncoderConfig",
    "ImageDecodeError",
    "ImageTooLargeError",
    "ModelConfig",
    "ModelDirError",
    "PretrainedConfig",
    "PretrainedModelConfig",
    "Preprocess",
    "is_image_name",
    "load_encoder",
    "load_image",
    "parse_model_config",
    "read_fingerprint",
    "register_kind",
    "set_compute_threads",
]
