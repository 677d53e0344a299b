"""Decode and embed inventory files: the pure work of indexing, with no database.

`decode_file` never raises for a bad file: it returns a `Decoded` whose `outcome` says what
happened. `embed_files` runs decoding on a thread pool (Pillow releases the GIL while decoding and
resizing) ahead of batched encoder forward passes, so decoding and embedding overlap.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from encoder import Encoder, ImageDecodeError, ImageTooLargeError, Preprocess, load_image
from encoder.preprocess import DEFAULT_MAX_PIXELS
from indexer.scan import ScannedFile

DEFAULT_MAX_FILE_BYTES = 100 * 1024 * 1024


@dataclass
class IngestLimits:
    max_pixels: int = DEFAULT_MAX_PIXELS  # images declaring more pixels are skipped
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES  # larger files are skipped unread


@dataclass
class Decoded:
    """The outcome of reading one file: pixels ready for the encoder, or why not."""

    file: ScannedFile
    outcome: str  # ok | skipped (permanent: not an image, too large) | failed (I/O, may pass next time)
    reason: str | None = None
    pixels: np.ndarray | None = field(default=None, repr=False)  # uint8 (S, S, 3)
    sha256: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    width: int = 0
    height: int = 0


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def decode_file(file: ScannedFile, pre: Preprocess, limits: IngestLimits | None = None) -> Decoded:
    """Read, hash and decode one file; any failure becomes an outcome with a reason."""
    limits = limits or IngestLimits()
    if not file.usable:
        return Decoded(file, "skipped", file.reason)
    try:
        # O_NONBLOCK: a FIFO swapped in since the scan must not block the open; regular files ignore it
        with os.fdopen(os.open(file.abs_path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            before = os.fstat(f.fileno())
            if not stat.S_ISREG(before.st_mode):
                return Decoded(file, "skipped", "not a regular file")
            if before.st_size > limits.max_file_bytes:
                return Decoded(
                    file, "skipped", f"file is {before.st_size:,} bytes, over {limits.max_file_bytes:,}"
                )
            data = f.read(limits.max_file_bytes + 1)
            after = os.fstat(f.fileno())
    except FileNotFoundError:
        return Decoded(file, "failed", "file disappeared before it could be read")
    except PermissionError:
        return Decoded(file, "failed", "permission denied")
    except OSError as e:
        return Decoded(file, "failed", f"cannot read: {e.strerror or e}")
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or len(
        data
    ) != after.st_size:
        return Decoded(file, "failed", "file changed while being read")
    if not data:
        return Decoded(file, "skipped", "empty file (0 bytes)")
    result = Decoded(
        file, "ok", sha256=hashlib.sha256(data).hexdigest(), size=after.st_size, mtime_ns=after.st_mtime_ns
    )
    try:
        img = load_image(io.BytesIO(data), draft_size=pre.image_size, max_pixels=limits.max_pixels)
        result.pixels = pre.to_uint8(img)
        result.width, result.height = img.info["original_size"]
    except (ImageDecodeError, ImageTooLargeError) as e:
        result.outcome, result.reason = "skipped", str(e)
    except Exception as e:  # noqa: BLE001 - a hostile file must never stop the job
        result.outcome, result.reason = "skipped", f"decoder error: {type(e).__name__}: {e}"
    return result


@dataclass
class EmbeddedBatch:
    """Decoded files of one batch; `vectors[i]` belongs to `ok[i]`."""

    ok: list[Decoded]
    vectors: np.ndarray
    rejected: list[Decoded]


def embed_files(
    files: Iterable[ScannedFile],
    encoder: Encoder,
    *,
    batch_size: int = 32,
    workers: int = 2,
    limits: IngestLimits | None = None,
    on_decoded: Callable[[Decoded], None] | None = None,
) -> Iterator[EmbeddedBatch]:
    """Decode `files` on `workers` threads and embed them in batches, in input order."""
    pre = encoder.preprocess

    def flush(pending: list[Decoded], rejected: list[Decoded]) -> EmbeddedBatch:
        if pending:
            vectors = encoder.embed_uint8(np.stack([d.pixels for d in pending]))
            for d in pending:
                d.pixels = None  # free memory as soon as embedded
        else:
            vectors = np.zeros((0, encoder.dim), np.float32)
        return EmbeddedBatch(pending, vectors, rejected)

    pending: list[Decoded] = []
    rejected: list[Decoded] = []
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode") as pool:
        for decoded in _ordered_map(pool, lambda f: decode_file(f, pre, limits), files, ahead=4 * batch_size):
            if on_decoded:
                on_decoded(decoded)
            (pending if decoded.outcome == "ok" else rejected).append(decoded)
            if len(pending) >= batch_size:
                yield flush(pending, rejected)
                pending, rejected = [], []
    if pending or rejected:
        yield flush(pending, rejected)


def _ordered_map(pool: ThreadPoolExecutor, fn, items: Iterable, ahead: int) -> Iterator:  # noqa: ANN001
    """Like `pool.map`, but keeps at most `ahead` tasks in flight (bounded memory)."""
    from collections import deque

    queue: deque = deque()
    for item in items:
        queue.append(pool.submit(fn, item))
        if len(queue) >= ahead:
            yield queue.popleft().result()
    while queue:
        yield queue.popleft().result()
