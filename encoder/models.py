"""Autoencoders trained from scratch on the inventory's own images.

`simple-ae` and `conv-ae` are the original recipe. Every model maps a normalised image batch
(B, 3, S, S) to a reconstruction of the same shape (`forward`) and to a flat code (`encode`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn


@dataclass
class EncoderConfig:
    arch: str = "conv-ae"  # one of MODELS
    image_size: int = 64  # square input side, pixels
    code_dim: int = 128  # simple-ae: code size; conv-ae: derived from filters and image size
    filters: tuple[int, ...] = field(default=(16, 8, 8))  # conv-ae: channels of the 3 conv blocks

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EncoderConfig:
        known = {k: d[k] for k in ("arch", "image_size", "code_dim", "filters") if k in d}
        if "filters" in known:
            known["filters"] = tuple(known["filters"])
        return cls(**known)


class SimpleAE(nn.Module):
    """Flatten, one fully connected layer down to the code, one back up."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        n = 3 * cfg.image_size * cfg.image_size
        self.image_size = cfg.image_size
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(n, cfg.code_dim), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(cfg.code_dim, n), nn.Sigmoid())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)  # (B, code_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.image_size
        return self.decoder(self.encode(x)).view(-1, 3, s, s)  # (B, 3, S, S)


def _down(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))


def _up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2))


class ConvAE(nn.Module):
    """Three conv+ReLU+max-pool blocks down, a mirrored upsampling decoder; code = flat bottleneck."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        f1, f2, f3 = cfg.filters
        self.encoder = nn.Sequential(_down(3, f1), _down(f1, f2), _down(f2, f3))
        self.decoder = nn.Sequential(
            _up(f3, f3), _up(f3, f2), _up(f2, f1), nn.Conv2d(f1, 3, 3, padding=1), nn.Sigmoid()
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).flatten(1)  # (B, f3 * (S/8)^2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))  # (B, 3, S, S)


MODELS: dict[str, type[nn.Module]] = {"simple-ae": SimpleAE, "conv-ae": ConvAE}


def build_model(cfg: EncoderConfig) -> nn.Module:
    """Instantiate the autoencoder named by `cfg.arch`."""
    if cfg.arch not in MODELS:
        raise ValueError(f"unknown model {cfg.arch!r}; choose one of {sorted(MODELS)}")
    if cfg.image_size % 8:
        raise ValueError(f"image size must be a multiple of 8, got {cfg.image_size}")
    return MODELS[cfg.arch](cfg)


def code_dim(model: nn.Module, image_size: int) -> int:
    """The length of the code `model.encode` returns for one image."""
    with torch.inference_mode():
        return int(model.encode(torch.zeros(1, 3, image_size, image_size)).shape[1])
