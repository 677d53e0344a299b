"""Decode and embed inventory files: the pure work of indexing, with no database.

`decode_file` never raises for a bad file: it returns a `Decoded` whose `outcome` says what
happened. `embed_files` runs decoding on a thread pool (Pillow releases the GIL while decoding and
resizing) in a producer thread that fills a bounded queue of ready batches, while the caller's
thread runs batched encoder forward passes: decoding and embedding overlap (README, "Performance").
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import queue
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from encoder import Encoder, ImageDecodeError, ImageTooLargeError, Preprocess, load_image
from encoder.compute import configured_threads
from encoder.preprocess import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SCANS, batches_by_shape
from indexer.scan import ScannedFile

logger = logging.getLogger(__name__)

DEFAULT_MAX_FILE_BYTES = 100 * 1024 * 1024
FeatureLookup = Callable[[str], "tuple[np.ndarray, int, int] | None"]  # sha256 -> (features, width, height)


@dataclass
class IngestLimits:
    max_pixels: int = DEFAULT_MAX_PIXELS  # images declaring more pixels are skipped
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES  # larger files are skipped unread
    max_scans: int = DEFAULT_MAX_SCANS  # JPEGs with more scans are skipped undecoded (work per image)


@dataclass
class Decoded:
    """The outcome of reading one file: pixels ready for the encoder, or why not."""

    file: ScannedFile
    outcome: str  # ok | skipped (permanent: not an image, too large) | failed (I/O, may pass next time)
    reason: str | None = None
    pixels: np.ndarray | None = field(default=None, repr=False)  # uint8 (S, S, 3)
    features: np.ndarray | None = field(default=None, repr=False)  # (C,) from the feature cache: no decode
    sha256: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    width: int = 0
    height: int = 0


def decode_file(
    file: ScannedFile,
    pre: Preprocess,
    limits: IngestLimits | None = None,
    cached: FeatureLookup | None = None,
) -> Decoded:
    """Read, hash and decode one file; any failure becomes an outcome with a reason.

    With `cached` (the encoder's feature cache, `FeatureCache.get`), a file whose sha256 is cached
    is not decoded: its features and size come from the cache.
    """
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
    if cached is not None and (hit := cached(result.sha256)) is not None:
        result.features, result.width, result.height = hit
        return result
    try:
        img = load_image(
            io.BytesIO(data),
            draft_size=pre.image_size,
            max_pixels=limits.max_pixels,
            max_scans=limits.max_scans,
        )
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


def available_cores() -> int:
    """CPU cores this process may run on (respects affinity masks and container cpusets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def embed_files(
    files: Iterable[ScannedFile],
    encoder: Encoder,
    *,
    batch_size: int = 32,
    workers: int = 2,
    limits: IngestLimits | None = None,
    on_decoded: Callable[[Decoded], None] | None = None,
    threads: int | None = None,
    prefetch: int = 2,
) -> Iterator[EmbeddedBatch]:
    """Decode `files` on `workers` threads and embed them in batches, in input order.

    A producer thread decodes (Pillow releases the GIL while decoding and resizing), stacks and
    normalises whole batches into a queue of at most `prefetch` batches, while this generator runs
    the encoder on the previous batch: decoding and the forward pass overlap, and memory stays
    bounded. The encoder runs on `threads` compute threads; None: the entry point's setting
    (`encoder.compute`), else 1 or all cores by measured throughput (`ThreadTuner`), so decoding and the forward pass do not oversubscribe the cores.
    `on_decoded` is called for every file, in input order, on the caller's thread.
    """
    pre = encoder.preprocess
    cache = encoder.feature_cache  # loaded here, once, before the decoding threads look into it
    cached = cache.get if cache is not None else None
    ready: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            with closing(_decoded_batches(files, pre, limits, batch_size, workers, stop, cached)) as batches:
                for batch in batches:
                    if not put(batch):
                        return
            put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put(_Failure(e))

    producer = threading.Thread(target=produce, name="embed-producer", daemon=True)
    cores = available_cores()
    threads = threads or configured_threads()  # the entry point's setting is kept, never tuned
    tuner = ThreadTuner([1, cores] if threads is None and cores > 1 else [threads or cores])
    producer.start()
    try:
        t = time.perf_counter()
        while (item := ready.get()) is not _END:
            if isinstance(item, _Failure):
                raise item.error
            if on_decoded:
                for d in item.in_order:
                    on_decoded(d)
            n_threads = tuner.next()
            encoder.set_threads(n_threads)  # a no-op unless the tuner switches
            vectors = _embed_batch(encoder, item)
            yield EmbeddedBatch(item.ok, vectors, item.rejected)
            now = time.perf_counter()
            tuner.record(n_threads, len(item.in_order), now - t)  # one cycle: wait, embed, caller
            t = now
    finally:
        stop.set()
        producer.join()
    logger.debug("embed_files: torch threads %s", tuner.summary())


def _embed_batch(encoder: Encoder, item: _ReadyBatch) -> np.ndarray:
    """Vectors of a batch's ok files: a forward pass for the decoded ones, the reducer for cached features."""
    vectors = np.zeros((len(item.ok), encoder.dim), np.float32)
    fresh = np.asarray([i for i, d in enumerate(item.ok) if d.features is None], np.int64)
    for positions, x in item.x or ():  # one forward pass per input shape
        vectors[fresh[positions]] = encoder.embed(x)
    if len(fresh) < len(item.ok):
        known = [i for i, d in enumerate(item.ok) if d.features is not None]
        vectors[known] = encoder.embed_features(np.stack([item.ok[i].features for i in known]))
        for i in known:
            item.ok[i].features = None  # free memory as soon as embedded
    return vectors


class ThreadTuner:
    """Picks torch's thread count among `candidates` by measured pipeline throughput.

    Each candidate runs `window` batches, interleaved, after one warm-up batch; the one with the
    lowest median seconds per image wins until the next check, `every` batches later (the load of
    a shared machine changes). Measured on 2 cores: conv-ae at 64 px (decode-bound) is fastest with
    1 torch thread, leaving a core to decoding; a 224 px CNN (forward-bound) with both cores on
    an idle machine, but with 1 when other processes keep the cores busy, where OpenMP threads
    waiting for a preempted peer make 2 threads several times slower than 1.
    """

    def __init__(self, candidates: list[int], window: int = 3, every: int = 64):
        self.candidates = list(dict.fromkeys(candidates))
        self.window, self.every = window, every
        self.best = self.candidates[0]
        self.batches = 0
        self.history: list[dict[int, float]] = []  # per check: candidate -> median s/image
        self._schedule: deque[int] = deque()
        self._samples: dict[int, list[float]] = {}

    def _start_check(self) -> None:
        if len(self.candidates) > 1:
            self._samples = {c: [] for c in self.candidates}
            self._schedule = deque(c for _ in range(self.window) for c in self.candidates)

    def next(self) -> int:
        """The thread count for the next batch."""
        return self._schedule[0] if self._schedule else self.best

    def record(self, n_threads: int, n_images: int, seconds: float) -> None:
        """One batch of `n_images` took `seconds` (a whole pipeline cycle) with `n_threads`."""
        self.batches += 1
        if self._schedule and self._schedule[0] == n_threads:
            self._schedule.popleft()
            self._samples[n_threads].append(seconds / max(1, n_images))
            if not self._schedule:
                medians = {c: float(np.median(v)) for c, v in self._samples.items()}
                self.history.append(medians)
                self.best = min(medians, key=medians.__getitem__)
        elif (self.batches - 1) % self.every == 0:  # batch 1 (warm-up) starts the first check
            self._start_check()

    def summary(self) -> str:
        return f"best {self.best}, checks {self.history}"


@dataclass
class _ReadyBatch:
    """Files of one batch, decoded. `x`: the normalised input of the `ok` files not cached, one
    (positions among those files, (b, 3, H, W) batch) per input shape."""

    ok: list[Decoded]
    rejected: list[Decoded]
    in_order: list[Decoded]
    x: list[tuple[np.ndarray, np.ndarray]] | None


@dataclass
class _Failure:
    error: BaseException


_END = object()


def _decoded_batches(
    files: Iterable[ScannedFile],
    pre: Preprocess,
    limits: IngestLimits | None,
    batch_size: int,
    workers: int,
    stop: threading.Event,
    cached: FeatureLookup | None = None,
) -> Iterator[_ReadyBatch]:
    """Decode on a thread pool, in input order, grouped into batches ready for the encoder."""

    def ready(in_order: list[Decoded]) -> _ReadyBatch:
        ok = [d for d in in_order if d.outcome == "ok"]
        rejected = [d for d in in_order if d.outcome != "ok"]
        decoded = [d.pixels for d in ok if d.pixels is not None]  # the files not cached
        x = [(pos, pre.normalize(stack)) for pos, stack in batches_by_shape(decoded)] if decoded else None
        for d in ok:
            d.pixels = None  # free memory as soon as batched
        return _ReadyBatch(ok, rejected, in_order, x)

    in_order: list[Decoded] = []
    n_ok = 0
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode")
    try:
        decode = partial(decode_file, pre=pre, limits=limits, cached=cached)
        for decoded in _ordered_map(pool, decode, files, ahead=2 * batch_size + 2 * workers):
            if stop.is_set():
                return
            in_order.append(decoded)
            n_ok += decoded.outcome == "ok"
            if n_ok >= batch_size:
                yield ready(in_order)
                in_order, n_ok = [], 0
        if in_order:
            yield ready(in_order)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _ordered_map(pool: ThreadPoolExecutor, fn, items: Iterable, ahead: int) -> Iterator:  # noqa: ANN001
    """Like `pool.map`, but keeps at most `ahead` tasks in flight (bounded memory)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
