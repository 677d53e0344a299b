"""Finding the image files under a folder (training, eval queries, CLI queries); no torch."""

from __future__ import annotations

import os
from pathlib import Path

from encoder.preprocess import is_image_name


def find_images(root: str | Path) -> list[Path]:
    """Every file with an image extension under `root`, recursively, in a stable order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        found.extend(Path(dirpath) / f for f in sorted(filenames) if is_image_name(f))
    return found
