"""A small labelled catalog drawn procedurally (fixed seed, nothing downloaded).

Six "product" classes, each a shape in its own colour family on a light background, with random
position, size, rotation, tint and noise, so that neighbours of the same class look alike without
being copies.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = {
    # name: (shape, base RGB)
    "mugs": ("circle", (200, 60, 50)),
    "boxes": ("square", (60, 110, 200)),
    "tents": ("triangle", (60, 160, 80)),
    "scarves": ("stripes", (220, 170, 40)),
    "rugs": ("checker", (140, 70, 170)),
    "rings": ("ring", (40, 40, 40)),
}


def draw_item(
    shape: str, color: tuple[int, int, int], rng: np.random.Generator, size: int = 96
) -> Image.Image:
    """One product photo of `shape` in a random variation of `color`."""
    bg = tuple(int(v) for v in rng.integers(215, 256, 3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    tint = np.clip(np.array(color) + rng.integers(-35, 36, 3), 0, 255)
    fill = tuple(int(v) for v in tint)
    r = size * rng.uniform(0.25, 0.38)
    cx, cy = size / 2 + rng.uniform(-0.1, 0.1) * size, size / 2 + rng.uniform(-0.1, 0.1) * size
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=int(r * 0.35))
    elif shape == "square":
        a = rng.uniform(0, math.pi / 2)
        pts = [
            (cx + r * math.cos(a + k * math.pi / 2), cy + r * math.sin(a + k * math.pi / 2)) for k in range(4)
        ]
        draw.polygon(pts, fill=fill)
    elif shape == "triangle":
        a = rng.uniform(-0.3, 0.3) - math.pi / 2
        pts = [
            (cx + r * math.cos(a + k * 2 * math.pi / 3), cy + r * math.sin(a + k * 2 * math.pi / 3))
            for k in range(3)
        ]
        draw.polygon(pts, fill=fill)
    elif shape == "stripes":
        step = int(rng.integers(8, 14))
        for y in range(int(rng.integers(0, step)), size, step):
            draw.rectangle([0, y, size, y + step // 2], fill=fill)
    elif shape == "checker":
        step = int(rng.integers(12, 20))
        for y in range(0, size, step):
            for x in range(0, size, step):
                if (x // step + y // step) % 2 == 0:
                    draw.rectangle([x, y, x + step - 1, y + step - 1], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.0))), dtype=np.int16)
    arr = np.clip(arr + rng.normal(0, 6, arr.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def make_catalog(
    out: str | Path, per_class: int = 40, queries_per_class: int = 4, seed: int = 0, size: int = 96
) -> tuple[Path, Path]:
    """Write `out/inventory/<class>/*.jpg` and `out/queries/<class>/*.jpg`; return both folders."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    inventory, queries = out / "inventory", out / "queries"
    for name, (shape, color) in CLASSES.items():
        for folder, n in ((inventory, per_class), (queries, queries_per_class)):
            (folder / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw_item(shape, color, rng, size).save(folder / name / f"{name}-{i:03d}.jpg", quality=90)
    return inventory, queries
