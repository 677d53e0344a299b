"""Image encoders: autoencoders trained on the inventory, and pretrained backbones with a reducer.

Depends on nothing else in imgrec; `indexer` and `search_api` build on it.
"""

from encoder.embedder import Encoder, load_encoder, register_kind
from encoder.model_dir import ModelDirError, read_fingerprint
from encoder.models import MODELS, EncoderConfig
from encoder.preprocess import (
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    ImageTooLargeError,
    Preprocess,
    is_image_name,
    load_image,
)
from encoder.pretrained import PRESETS as PRETRAINED_PRESETS

# What `imgrec train --model` accepts, and the default: the best measured on clothing (README, "Retrieval quality").
TRAINABLE_MODELS: list[str] = [*MODELS, *PRETRAINED_PRESETS]
DEFAULT_MODEL: str = "effnet-lite02-pca"

__all__ = [
    "DEFAULT_MODEL",
    "PRETRAINED_PRESETS",
    "TRAINABLE_MODELS",
    "IMAGE_EXTENSIONS",
    "MODELS",
    "Encoder",
    "EncoderConfig",
    "ImageDecodeError",
    "ImageTooLargeError",
    "ModelDirError",
    "Preprocess",
    "is_image_name",
    "load_encoder",
    "read_fingerprint",
    "register_kind",
    "load_image",
]
