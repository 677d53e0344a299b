"""Autoencoders trained from scratch on the inventory's own images.

`simple-ae` and `conv-ae` are the original recipe. Every model maps a normalised image batch
(B, 3, S, S) to a reconstruction of the same shape (`forward`) and to a flat code (`encode`).
"""

from __future__ import annotations

import torch
from torch import nn

from encoder.config import EncoderConfig  # re-exported: the architecture's config


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


class ResBlock(nn.Module):
    """Two 3x3 conv + batch norm layers with a skip; `stride` 2 halves the side (1x1 projection skip)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.skip(x))


def _up_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class ResAE(nn.Module):
    """Residual conv encoder with batch norm, global pooling to a `code_dim` bottleneck, upsampling decoder.

    Trained denoising, on augmented views (encoder.train): the code is the pooled, projected features.
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        w, s = cfg.width, cfg.image_size
        self.side = s // 16  # decoder seed side
        self.channels = 4 * w
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.stages = nn.Sequential(
            ResBlock(w, w, 2),  # S/2
            ResBlock(w, 2 * w, 2),  # S/4
            ResBlock(2 * w, 4 * w, 2),  # S/8
            ResBlock(4 * w, 4 * w, 2),  # S/16
        )
        self.to_code = nn.Linear(4 * w, cfg.code_dim)
        self.from_code = nn.Linear(cfg.code_dim, 4 * w * self.side * self.side)
        self.decoder = nn.Sequential(
            _up_bn(4 * w, 4 * w), _up_bn(4 * w, 2 * w), _up_bn(2 * w, w), _up_bn(w, w),
            nn.Conv2d(w, 3, 3, padding=1), nn.Sigmoid(),
        )  # fmt: skip

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.stem(x))  # (B, 4w, S/16, S/16)
        return self.to_code(h.mean((2, 3)))  # (B, code_dim)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.from_code(z).view(-1, self.channels, self.side, self.side)  # (B, 4w, S/16, S/16)
        return self.decoder(h)  # (B, 3, S, S)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


MODELS: dict[str, type[nn.Module]] = {"simple-ae": SimpleAE, "conv-ae": ConvAE, "res-ae": ResAE}


def build_model(cfg: EncoderConfig) -> nn.Module:
    """Instantiate the autoencoder named by `cfg.arch`."""
    if cfg.arch not in MODELS:
        raise ValueError(f"unknown model {cfg.arch!r}; choose one of {sorted(MODELS)}")
    multiple = 16 if cfg.arch == "res-ae" else 8
    if cfg.image_size % multiple:
        raise ValueError(
            f"{cfg.arch} needs an image size that is a multiple of {multiple}, got {cfg.image_size}"
        )
    return MODELS[cfg.arch](cfg)


def code_dim(model: nn.Module, image_size: int) -> int:
    """The length of the code `model.encode` returns for one image."""
    with torch.inference_mode():
        return int(model.encode(torch.zeros(1, 3, image_size, image_size)).shape[1])
