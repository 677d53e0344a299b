"""Image decoding and preprocessing: the one place that turns bytes into model input.

Training, indexing and querying all go through `load_image` and `Preprocess.to_array`, so a
query is embedded exactly as the inventory was.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
EXIF_ORIENTATION = 0x0112
DEFAULT_MAX_PIXELS = 64_000_000  # ~ 8000 x 8000; larger images are refused, not decoded
# A JPEG decoder passes over every block of the image once per scan, so scans x pixels is the work.
# libjpeg's progressive scripts write 6 (grey) to 18 (CMYK) scans; libjpeg-turbo's own fuzz targets
# stop at 500 scans for images of at most 1 megapixel. We accept up to 64 megapixels, hence 100.
DEFAULT_MAX_SCANS = 100

WHOLE_SNAP = (4 / 3) ** 0.5  # resize "whole": aspects beyond this (either way) become 3:4 or 4:3

# A truncated file is an error here, never a half-grey picture.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image (corrupt, truncated, not an image at all)."""

    status = 415


class ImageTooLargeError(ValueError):
    """The image declares more pixels than allowed, is a decompression bomb, or would cost too much
    work to decode (a JPEG with more scans than allowed)."""

    status = 422


def is_image_name(path: str | Path) -> bool:
    """True when the file name has an image extension we try to decode."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def load_image(
    source: str | Path | bytes | BinaryIO,
    *,
    draft_size: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_scans: int = DEFAULT_MAX_SCANS,
) -> Image.Image:
    """Decode an image to upright RGB.

    `info["original_size"]` of the result is the upright full-size (width, height). EXIF orientation is applied; palette, grey, 16-bit, CMYK and alpha images become RGB (alpha is
    composited on white); only the first frame of an animation is read. With `draft_size`, JPEGs are
    decoded at a reduced scale no smaller than that size (much faster for thumbnails and models).
    The work is bounded before decoding: by `max_pixels`, and for JPEGs by `max_scans` (counted by
    walking the file's segments, `jpeg_scan_count`).

    :raise ImageDecodeError: the source is not a decodable image.
    :raise ImageTooLargeError: the image has more than `max_pixels` pixels, or more than `max_scans` scans.
    """
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            # Pillow warns, then errors, on bombs; here any bomb warning is an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageTooLargeError(
                        f"image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}"
                    )
                if img.format in ("JPEG", "MPO") and jpeg_scan_count(img.fp, max_scans) > max_scans:
                    raise ImageTooLargeError(
                        f"JPEG has more than {max_scans:,} scans, the limit "
                        "(each scan is one more pass over the whole image)"
                    )
                if draft_size and img.format == "JPEG":
                    img.draft("RGB", (draft_size, draft_size))
                orientation = img.getexif().get(EXIF_ORIENTATION, 1)
                img.seek(0)
                img.load()
                out = _to_rgb(ImageOps.exif_transpose(img))
                out.info["original_size"] = (
                    (height, width) if orientation in (5, 6, 7, 8) else (width, height)
                )
                return out
    except ImageTooLargeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLargeError(f"decompression bomb: {e}") from e
    except UnidentifiedImageError as e:
        raise ImageDecodeError("not a recognised image format") from e
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
        if isinstance(e, FileNotFoundError | PermissionError | IsADirectoryError):
            raise
        raise ImageDecodeError(f"cannot decode image: {e}") from e


_MARKER = re.compile(rb"\xff+([^\x00\xff])")  # a marker: 0xFF (fill 0xFFs), a code; FF 00 is stuffed data


def jpeg_scan_count(fp: BinaryIO, stop_after: int) -> int:
    """Start-of-scan markers in the JPEG file `fp`, counted up to `stop_after + 1` (the position is kept).

    Walks the segments as a decoder does: a segment is skipped by its length, entropy-coded data and
    bytes between segments by searching for the next marker. A damaged structure ends the count;
    the decoder reports the damage.
    """
    start = fp.tell()
    try:
        fp.seek(0)
        if fp.read(2) != b"\xff\xd8":  # SOI
            return 0
        scans = 0
        while scans <= stop_after:
            code = _next_marker(fp)
            if code is None or code == 0xD9:  # the end, or EOI
                break
            if 0xD0 <= code <= 0xD8 or code == 0x01:  # RSTn, SOI, TEM: no length
                continue
            head = fp.read(2)
            length = int.from_bytes(head, "big")
            if len(head) < 2 or length < 2:
                break
            scans += code == 0xDA  # SOS
            fp.seek(length - 2, os.SEEK_CUR)
        return scans
    finally:
        fp.seek(start)


def _next_marker(fp: BinaryIO, chunk: int = 4096) -> int | None:
    """The code of the next marker at or after the position of `fp`; `fp` is left just after it."""
    carry = b""
    while data := fp.read(chunk):
        data = carry + data
        if m := _MARKER.search(data):
            fp.seek(m.end() - len(data), os.SEEK_CUR)
            return m.group(1)[0]
        carry = b"\xff" if data.endswith(b"\xff") else b""  # a marker cut at the end of the chunk
        chunk = min(chunk * 2, 1 << 20)
    return None


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency on white."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit grey
        arr = np.asarray(img, dtype=np.float64)
        if arr.max(initial=0) > 255:
            arr = arr / 257.0
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))  # mode L
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        img.mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


@dataclass(frozen=True)
class Preprocess:
    """How a decoded RGB image becomes a model input array (C, H, W) float32."""

    image_size: int = 64  # square side fed to the model (resize "whole": the short side)
    resize: str = "squash"  # "squash" (whole image, aspect not kept), "center-crop" or "whole" (below)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # subtracted after scaling to [0, 1]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(
            image_size=int(d["image_size"]),
            resize=d.get("resize", "squash"),
            mean=tuple(d.get("mean", (0.0, 0.0, 0.0))),
            std=tuple(d.get("std", (1.0, 1.0, 1.0))),
        )

    def resize_image(self, img: Image.Image) -> Image.Image:
        """Resize (and crop) an RGB image to `output_size`."""
        if self.resize in ("center-crop", "whole"):
            return ImageOps.fit(img, self.output_size(*img.size), method=Image.Resampling.BILINEAR)
        return img.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the model input for an image of this size.

        A square of `image_size`, except for resize "whole": the image keeps its orientation, its aspect
        snapped to the nearest of 3:4, 1:1 and 4:3 (the least cropping among three batchable shapes)
        with `image_size` as the short side, so a garment's sleeves and hem stay in the picture.
        """
        s = self.image_size
        if self.resize != "whole":
            return s, s
        long_side = round(s * 4 / 3)
        aspect = height / max(width, 1)
        if aspect >= WHOLE_SNAP:
            return s, long_side
        if aspect <= 1 / WHOLE_SNAP:
            return long_side, s
        return s, s

    def to_uint8(self, img: Image.Image) -> np.ndarray:
        """Resized image as uint8 (H, W, 3): compact enough to pass between processes."""
        return np.asarray(self.resize_image(img), dtype=np.uint8)

    def normalize(self, batch_u8: np.ndarray) -> np.ndarray:
        """uint8 (B, H, W, 3) -> normalised float32 (B, 3, H, W)."""
        x = batch_u8.astype(np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def to_array(self, img: Image.Image) -> np.ndarray:
        """One RGB image -> float32 (3, H, W)."""
        return self.normalize(self.to_uint8(img)[None])[0]

    def denormalize(self, batch: np.ndarray) -> np.ndarray:
        """Normalised float32 (B, 3, H, W) -> uint8 (B, H, W, 3), for pictures."""
        x = batch.transpose(0, 2, 3, 1) * np.asarray(self.std, np.float32) + np.asarray(self.mean, np.float32)
        return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def batches_by_shape(pixels: Sequence[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions, uint8 (b, H, W, 3) stack) per distinct image shape among `pixels`, first seen first.

    Model inputs of one shape run as one batch; a preprocess that keeps orientation (resize "whole")
    gives up to three shapes, the others always one.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, a in enumerate(pixels):
        groups.setdefault(a.shape, []).append(i)
    for positions in groups.values():
        yield np.asarray(positions, np.int64), np.stack([pixels[i] for i in positions])


def map_by_shape(pixels: Sequence[np.ndarray], fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`fn(uint8 stack) -> (b, ...)` run once per shape (`batches_by_shape`); rows back in input order."""
    positions, parts = [], []
    for pos, stack in batches_by_shape(pixels):
        positions.append(pos)
        parts.append(np.asarray(fn(stack)))
    out = np.empty((len(pixels), *parts[0].shape[1:]), parts[0].dtype)
    out[np.concatenate(positions)] = np.concatenate(parts)
    return out
