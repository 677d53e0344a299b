"""Training pictures: the loss curve and originals above their reconstructions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from encoder.preprocess import Preprocess


def save_loss_curve(path: Path, train_losses: list[float], val_losses: list[float], best_epoch: int) -> None:
    """Train and validation loss per epoch, the kept epoch marked."""
    fig = Figure(figsize=(5, 3.2), dpi=100)
    ax = fig.add_subplot()
    epochs = np.arange(1, len(train_losses) + 1)
    ax.plot(epochs, train_losses, label="train")
    ax.plot(epochs, val_losses, label="validation")
    ax.axvline(best_epoch, color="grey", linestyle=":", label=f"kept (epoch {best_epoch})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def save_reconstructions(path: Path, originals: np.ndarray, recon: np.ndarray, pre: Preprocess) -> None:
    """A two-row PNG: originals on top, reconstructions below (normalised (B, 3, S, S) inputs)."""
    top = np.concatenate(list(pre.denormalize(originals)), axis=1)  # (S, B*S, 3)
    bottom = np.concatenate(list(pre.denormalize(recon)), axis=1)
    grid = np.concatenate([top, bottom], axis=0)
    scale = max(1, 96 // pre.image_size)
    img = Image.fromarray(grid)
    img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST).save(path)
