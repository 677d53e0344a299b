"""Result pictures in the original recipe's style: the query on top, its k results below.

    save_result_grid("q.png", query_image, hits, snapshot)

Each result is captioned with its rank, score and label. `draw_grid` is the plain-image core
(also used for near-duplicate groups).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from encoder import ImageDecodeError, ImageTooLargeError, load_image
from indexer.store import Hit, Snapshot

logger = logging.getLogger(__name__)

BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
MISSING = (200, 200, 200)
PAD = 6  # pixels between tiles
LINE = 14  # caption line height


def _font(size: int = 11) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _tile(img: Image.Image | None, thumb: int) -> Image.Image:
    """The image fitted (aspect kept) into a thumb x thumb square; grey when missing."""
    tile = Image.new("RGB", (thumb, thumb), MISSING if img is None else BACKGROUND)
    if img is not None:
        small = img.copy()
        small.thumbnail((thumb, thumb), Image.Resampling.BILINEAR)
        tile.paste(small, ((thumb - small.width) // 2, (thumb - small.height) // 2))
    return tile


def draw_grid(
    top: Image.Image | None,
    top_caption: str,
    tiles: Sequence[tuple[Image.Image | None, str]],
    *,
    thumb: int = 128,
    columns: int | None = None,
) -> Image.Image:
    """One image centred on the first row, then rows of captioned tiles (caption lines split on '\\n')."""
    columns = max(1, columns or len(tiles) or 1)
    rows = max(1, -(-len(tiles) // columns)) if tiles else 0
    n_lines = max([c.count("\n") + 1 for _, c in tiles] + [top_caption.count("\n") + 1])
    cell_h = thumb + n_lines * LINE + PAD
    width = columns * (thumb + PAD) + PAD
    height = PAD + cell_h + rows * cell_h + PAD
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font()

    def put(img: Image.Image | None, caption: str, x: int, y: int) -> None:
        canvas.paste(_tile(img, thumb), (x, y))
        for i, line in enumerate(caption.split("\n")):
            draw.text((x, y + thumb + 2 + i * LINE), _fit(draw, line, font, thumb), fill=TEXT, font=font)

    put(top, top_caption, (width - thumb) // 2, PAD)
    for n, (img, caption) in enumerate(tiles):
        r, c = divmod(n, columns)
        put(img, caption, PAD + c * (thumb + PAD), PAD + cell_h * (r + 1))
    return canvas


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    """Shorten `text` with an ellipsis until it fits `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def open_thumbnail(path: Path, thumb: int = 128) -> Image.Image | None:
    """A decoded image for a picture, or None (logged) when the file is gone or unreadable."""
    try:
        return load_image(path, draft_size=thumb)
    except (ImageDecodeError, ImageTooLargeError, OSError) as e:
        logger.warning("cannot show %s: %s", path, e)
        return None


def hit_caption(hit: Hit, score_kind: str, product=None) -> str:  # noqa: ANN001 - a ProductRecord
    """'#1 0.873' and below it the product's title and price, or the label (score: cosine
    similarity or squared L2 distance)."""
    name = "sim" if score_kind == "similarity" else "dist"
    below = hit.item.label
    if product is not None:
        price = f" {product.price:.2f}" if product.price is not None else ""
        below = f"{product.title or product.product_id}{price}"
    return f"#{hit.rank} {name} {hit.score:.3f}\n{below}"


def result_grid(
    query_image: Image.Image,
    hits: Sequence,
    snapshot: Snapshot,
    *,
    query_caption: str = "query",
    thumb: int = 128,
) -> Image.Image:
    """The query on top and its hits below (`Hit`s, or `querying.Result`s with their product), each
    captioned with rank, score and the product's title and price (or the label)."""
    kind = snapshot.generation.score_kind
    tiles = []
    for h in hits:
        hit, product = (h.hit, h.product) if hasattr(h, "hit") else (h, None)
        tiles.append((open_thumbnail(snapshot.image_path(hit.item), thumb), hit_caption(hit, kind, product)))
    return draw_grid(query_image, query_caption, tiles, thumb=thumb)


def save_result_grid(
    path: str | Path,
    query_image: Image.Image,
    hits: Sequence,
    snapshot: Snapshot,
    *,
    query_caption: str = "query",
    thumb: int = 128,
) -> Path:
    """Write `result_grid(...)` as a PNG at `path` (parent folders created); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    result_grid(query_image, hits, snapshot, query_caption=query_caption, thumb=thumb).save(path)
    return path
