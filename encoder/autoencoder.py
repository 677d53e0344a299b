"""The autoencoder kind: an `Encoder` whose code is the encoder half's output (run by torch)."""

from __future__ import annotations

import numpy as np
import torch

from encoder.compute import configured_threads
from encoder.config import AutoencoderModelConfig, ModelDirError, config_to_dict, parse_model_config
from encoder.embedder import Encoder, TorchThreads
from encoder.models import build_model


class AutoencoderEncoder(TorchThreads, Encoder):
    """An autoencoder trained by `imgrec train`."""

    kind = "autoencoder"

    def __init__(self, state_dict: dict[str, np.ndarray], config: dict, fingerprint: str):
        typed = parse_model_config(config)
        assert isinstance(typed, AutoencoderModelConfig)
        self.model_config = typed
        self.config = config_to_dict(typed)
        self.fingerprint = fingerprint
        self.preprocess = typed.preprocess
        self.model = build_model(typed.model)
        try:
            self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()})
        except RuntimeError as e:  # strict: every key used, none missing, shapes equal
            raise ModelDirError(
                f"{typed.model.arch}: the weights do not fit the architecture in config.json; "
                "retrain with `imgrec train`"
            ) from e
        self.model.eval()
        self.dim = typed.code_dim
        if (n := configured_threads()) is not None:  # set at the entry point before torch was loaded
            self.set_threads(n)

    def _embed_tensor(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(x)  # (B, code_dim)

    def _novelty_tensor(self, x: torch.Tensor) -> torch.Tensor:
        return ((self.model(x) - x) ** 2).flatten(1).mean(1)  # (B,)
