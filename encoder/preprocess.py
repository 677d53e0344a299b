"""Image decoding and preprocessing: the one place that turns bytes into model input.

Training, indexing and querying all go through `load_image` and `Preprocess.to_array`, so a
query is embedded exactly as the inventory was.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
EXIF_ORIENTATION = 0x0112
DEFAULT_MAX_PIXELS = 64_000_000  # ~ 8000 x 8000; larger images are refused, not decoded

# A truncated file is an error here, never a half-grey picture.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image (corrupt, truncated, not an image at all)."""

    status = 415


class ImageTooLargeError(ValueError):
    """The image declares more pixels than allowed (or is a decompression bomb)."""

    status = 422


def is_image_name(path: str | Path) -> bool:
    """True when the file name has an image extension we try to decode."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def load_image(
    source: str | Path | bytes | BinaryIO,
    *,
    draft_size: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode an image to upright RGB.

    `info["original_size"]` of the result is the upright full-size (width, height). EXIF orientation is applied; palette, grey, 16-bit, CMYK and alpha images become RGB (alpha is
    composited on white); only the first frame of an animation is read. With `draft_size`, JPEGs are
    decoded at a reduced scale no smaller than that size (much faster for thumbnails and models).

    :raise ImageDecodeError: the source is not a decodable image.
    :raise ImageTooLargeError: the image has more than `max_pixels` pixels.
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

    image_size: int = 64  # square side fed to the model
    resize: str = "squash"  # "squash" (whole image, aspect not kept) or "center-crop"
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
        """Resize (and crop) an RGB image to image_size x image_size."""
        s = self.image_size
        if self.resize == "center-crop":
            return ImageOps.fit(img, (s, s), method=Image.Resampling.BILINEAR)
        return img.resize((s, s), Image.Resampling.BILINEAR)

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
