"""Batch augmentations for training autoencoders on [0, 1] image tensors (B, 3, S, S).

`random_view` changes geometry (crop-zoom, shift, mirror): a view to reconstruct. `corrupt` changes
appearance (brightness, contrast, saturation, noise): the input the model must see through.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def random_view(x: torch.Tensor, min_scale: float = 0.7) -> torch.Tensor:
    """A random zoomed-in, shifted, possibly mirrored view of each image (same size)."""
    b = x.shape[0]
    scale = torch.empty(b).uniform_(min_scale, 1.0)  # share of the side kept
    shift = (torch.rand(b, 2) * 2 - 1) * (1 - scale)[:, None]  # stays inside the image
    flip = torch.where(torch.rand(b) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = scale * flip
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def corrupt(x: torch.Tensor, jitter: float = 0.2, noise_std: float = 0.05) -> torch.Tensor:
    """Random brightness, contrast and saturation changes of up to `jitter`, then Gaussian noise."""
    b = x.shape[0]

    def factor() -> torch.Tensor:
        return (1 + (torch.rand(b, 1, 1, 1) * 2 - 1) * jitter).to(x.dtype)

    grey = x.mean(1, keepdim=True)  # (B, 1, S, S)
    x = grey + (x - grey) * factor()  # saturation
    mean = x.mean((1, 2, 3), keepdim=True)
    x = mean + (x - mean) * factor()  # contrast
    x = x * factor()  # brightness
    if noise_std:
        x = x + torch.randn_like(x) * noise_std
    return x.clamp(0.0, 1.0)
