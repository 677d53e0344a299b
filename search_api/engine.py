"""The search engine behind the API: the current index snapshot, hot reload, batched queries.

    eng = SearchEngine(index_dir)
    eng.start()                       # open the current generation (if any), poll for newer ones
    with eng.snapshot() as snap:      # one consistent generation for the whole request
        answers = eng.search(snap, [pixels], k=10)

A newer generation is opened on the poller thread, re-using the served snapshot's open segments
(segment files never change) and its encoder (same model fingerprint), so only new segments are
read and checked (size before mapping, sha256 on this thread: hashing a big new segment never holds
a request); then it is swapped in with one assignment. Requests that hold the old snapshot keep it;
it is closed when the last of them is done. A damaged generation, catalog or model copy is refused:
the old snapshot stays served, `status().reload_error` says which file, what is wrong and the next
step, and `on_refuse` callbacks (metrics) count it.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from flask import Flask
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from encoder import compute
from indexer import Hit, Snapshot, current_generation_id, open_snapshot, querying
from indexer.ann import search_params
from indexer.damage import IndexDamageError, as_damage
from indexer.db import database_url, make_engine
from indexer.querying import SearchAnswer, SearchOptions, SearchPlan, plan_search
from indexer.store import has_catalog
from search_api.batching import Batcher
from search_api.errors import NotReadyError

logger = logging.getLogger(__name__)

RETRY_FAILED_AFTER = 30.0  # seconds before retrying a generation that failed to open
RELOAD_INTERVAL = 0.5  # seconds between checks for a newer generation (one indexed row per check)


def release_freed_heap() -> bool:
    """Hand the heap freed while opening a generation back to the OS (glibc `malloc_trim`).

    Opening a million-item segment parses its ids and leaves tens of MB freed but kept by glibc, in
    every worker (measured in docs/performance.md, "Memory and start-up"). False where there is no
    glibc.
    """
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl)
        return False
    return True


@dataclass
class Query:
    """One request's images (decoded and resized, uint8 (H, W, 3) each), searched in one snapshot."""

    snapshot: Snapshot
    pixels: list[np.ndarray]
    plan: SearchPlan  # k, filter's ids, grouping, search knobs: resolved in the request's thread

    @property
    def shape(self) -> tuple[int, ...]:  # lets the batcher count images
        return (len(self.pixels),)


@dataclass
class Answer:
    """Results for one query image, and what the batch it rode in cost."""

    answer: SearchAnswer
    novelty_percentile: float | None
    embed_ms: float
    search_ms: float
    batch_size: int

    @property
    def hits(self) -> list[Hit]:
        return self.answer.hits


@dataclass
class _Held:
    snapshot: Snapshot
    loaded_at: dt.datetime
    users: int = 0
    retired: bool = False


@dataclass
class EngineStatus:
    ready: bool
    reason: str | None
    generation_id: int | None
    loaded_at: dt.datetime | None
    reloads: int
    reload_error: str | None = None
    batch: dict = field(default_factory=dict)


class SearchEngine:
    """Holds the current snapshot of one index dir and answers queries on it."""

    def __init__(
        self,
        index_dir: str | Path,
        *,
        mmap: bool = True,
        verify: bool = True,
        reload_interval: float = RELOAD_INTERVAL,
        batch_window_ms: float = 2.0,
        max_batch: int = 32,
        novelty: bool = True,
        query_expansion: bool = True,
    ):
        self.index_dir = Path(index_dir)
        self.mmap = mmap
        self.verify = verify
        self.reload_interval = reload_interval
        self.novelty = novelty
        self.query_expansion = query_expansion  # the model's query expansion (indexer.querying)
        self.batcher: Batcher[Query, list[Answer]] = Batcher(
            self._process, window_ms=batch_window_ms, max_batch=max_batch
        )
        self.reloads = 0
        self.refusals = 0  # generations refused because a file of theirs is damaged
        self.damage: IndexDamageError | None = None  # why the last refused generation was refused
        self.on_swap: list = []  # callbacks(snapshot) after each swap (metrics)
        self.on_refuse: list = []  # callbacks(IndexDamageError) after each refusal (metrics)
        self._held: _Held | None = None
        self._lock = threading.Lock()  # guards _held and the users counts
        self._reload_lock = threading.Lock()  # one reload at a time
        self._failed: tuple[int, float, str] | None = None  # (generation, when, why)
        self._not_ready = "no index loaded yet"  # for clients: no server paths in it
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._catalog: Engine | None = None  # kept open for the cheap generation checks

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Open the current generation now (if there is one) and start polling for newer ones."""
        self.reload()
        if self.reload_interval > 0 and self._poller is None:
            self._poller = threading.Thread(target=self._poll, name="imgrec-reload", daemon=True)
            self._poller.start()

    def close(self) -> None:
        """Stop polling and close the current snapshot."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=10)
            self._poller = None
        with self._lock:
            held, self._held = self._held, None
            if held is not None:
                held.retired = True
                if held.users == 0:
                    held.snapshot.close()
        if self._catalog is not None:
            self._catalog.dispose()
            self._catalog = None
        self._not_ready = "no index loaded: the server is shutting down"

    def _poll(self) -> None:
        while not self._stop.wait(self.reload_interval):
            try:
                self.reload()
            except Exception:  # the poller must outlive any one bad check
                logger.exception("checking %s for a new generation failed", self.index_dir)

    # --- reload ----------------------------------------------------------------------------

    def reload(self) -> bool:
        """Swap in the published generation if it differs from the one served. True if swapped."""
        with self._reload_lock:
            try:
                wanted = self._published_generation()
            except Exception as e:
                damage = as_damage(e)
                if damage is None:
                    raise
                if self._failed is None or self._failed[0] is not None:
                    logger.error("cannot read the catalog of %s: %s", self.index_dir, damage)
                self._failed = (None, time.monotonic(), self._refuse(None, damage))
                return False
            if wanted is None:
                if self._held is None:
                    self._not_ready = "no index published yet"
                return False
            if self._held is not None and self._held.snapshot.generation.id == wanted:
                return False
            if (
                self._failed
                and self._failed[0] == wanted
                and time.monotonic() - self._failed[1] < RETRY_FAILED_AFTER
            ):
                return False
            try:
                snap = self._open()
            except Exception as e:
                damage = as_damage(e)
                logger.error("cannot serve generation %s of %s: %s", wanted, self.index_dir, e)
                if damage is None:
                    reason = f"{type(e).__name__}: {e}"
                    if self._held is None:
                        self._not_ready = (
                            f"no index loaded: the published one cannot be served ({type(e).__name__})"
                        )
                else:
                    reason = self._refuse(wanted, damage)
                self._failed = (wanted, time.monotonic(), reason)
                return False
            self._failed = None
            self.damage = None
            self._swap(snap)
            release_freed_heap()
            return True

    def _refuse(self, generation: int | None, damage: IndexDamageError) -> str:
        """Count a damaged generation (or catalog) refused, once however often it is retried, and
        return the reason for clients: which file, what is wrong, the next step (INDEX for the path:
        no server paths in answers)."""
        if self._failed is None or self._failed[0] != generation:  # counted once, not per retry
            self.refusals += 1
            for callback in self.on_refuse:
                callback(damage)
        self.damage = damage
        shown = type(damage)(damage.problem, "INDEX", damage.file)
        served = self._held.snapshot.generation.id if self._held is not None else None
        reason = f"generation {generation} refused: {shown}" if generation else f"refused: {shown}"
        if served is None:
            self._not_ready = f"no index loaded: {reason}"
        else:
            reason += f" (still serving generation {served})"
        return reason

    def _published_generation(self) -> int | None:
        """The current generation's id, through a catalog connection kept between checks."""
        if not has_catalog(self.index_dir):
            return None
        if self._catalog is None:
            # a fresh connection per check (no pool): a catalog replaced on disk is seen at once
            self._catalog = make_engine(database_url(self.index_dir), poolclass=NullPool)
        return current_generation_id(self.index_dir, self._catalog)

    def _open(self) -> Snapshot:
        """Open the current generation completely, so the swap costs the first request nothing.

        The served snapshot's segments and encoder are re-used where they are the same.
        """
        t0 = time.perf_counter()
        previous = self._held.snapshot if self._held is not None else None
        snap = open_snapshot(self.index_dir, mmap=self.mmap, verify=self.verify, reuse=previous)
        try:
            reused = previous is not None and snap._encoder is not None
            enc = snap.encoder
            if not reused:
                s = enc.preprocess.image_size
                enc.embed(np.zeros((1, 3, s, s), np.float32))  # warm-up: first-call costs paid here
        except Exception:
            snap.close()
            raise
        logger.info(
            "opened generation %s of %s (%d items, %d segments) in %.3f s",
            snap.generation.id, self.index_dir, snap.generation.item_count, len(snap.parts),
            time.perf_counter() - t0,
        )  # fmt: skip
        return snap

    def _swap(self, snap: Snapshot) -> None:
        with self._lock:
            old, self._held = self._held, _Held(snap, dt.datetime.now(dt.UTC))
            if old is not None:
                old.retired = True
                if old.users == 0:
                    old.snapshot.close()
            self.reloads += 1
        for callback in self.on_swap:
            callback(snap)

    # --- serving ---------------------------------------------------------------------------

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """The current snapshot, kept open until the block ends (even if a newer one is swapped in).

        :raise NotReadyError: no index loaded.
        """
        with self._lock:
            held = self._held
            if held is None:
                raise NotReadyError(self._not_ready)
            held.users += 1
        try:
            yield held.snapshot
        finally:
            with self._lock:
                held.users -= 1
                if held.retired and held.users == 0:
                    held.snapshot.close()

    def status(self) -> EngineStatus:
        held = self._held
        s = self.batcher.stats
        return EngineStatus(
            ready=held is not None,
            reason=None if held is not None else self._not_ready,
            generation_id=held.snapshot.generation.id if held else None,
            loaded_at=held.loaded_at if held else None,
            reloads=self.reloads,
            reload_error=self._failed[2] if self._failed else None,
            batch={
                "window_ms": self.batcher.window * 1000,
                "max_batch": self.batcher.max_batch,
                "batches": s.batches,
                "mean_images_per_batch": round(s.mean_items(), 2),
                "largest_batch": s.largest,
            },
        )

    def plan(
        self,
        snap: Snapshot,
        k: int,
        label: str | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
        filter: str | None = None,  # noqa: A002 - the API's parameter name
        group_by: str | None = None,
        exclude: int | None = None,
    ) -> SearchPlan:
        """A request's search options resolved on `snap` (`indexer.querying.plan_search`).

        :raise FilterError: a bad filter (the API answers 400).
        """
        params = knobs(snap.generation.index_type, nprobe, ef_search)
        opts = SearchOptions(k, label, filter, group_by, params, exclude, expand=self.query_expansion)
        return plan_search(snap, opts)

    def search(self, snap: Snapshot, pixels: list[np.ndarray], **options: object) -> list[Answer]:
        """Search uint8 images (H, W, 3) in `snap`, batched with concurrent requests (`options`:
        those of `plan`).

        :raise FilterError: a bad filter.
        """
        return self.batcher.submit(Query(snap, pixels, self.plan(snap, **options)))

    def similar(self, snap: Snapshot, item_id: int, **options: object) -> tuple[SearchAnswer, float, float]:
        """Items most like a stored item (its vector as indexed; the item left out), lookup and search ms.

        :raise FilterError: a bad filter.
        """
        compute.pin_this_thread()  # FAISS's thread count is per thread: set once in each
        t0 = time.perf_counter()
        plan = self.plan(snap, exclude=item_id, **options)
        xq = snap.vector(item_id)[None]  # (1, dim)
        t1 = time.perf_counter()
        (answer,) = querying.search(snap, xq, plan)
        return answer, (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000

    def _process(self, queries: list[Query]) -> list[list[Answer]]:
        """One batch: one forward per snapshot, then `querying.search` per query's plan."""
        compute.pin_this_thread()  # FAISS's thread count is per thread: set once in each
        out: dict[int, list[Answer]] = {}
        by_snapshot: dict[int, list[int]] = {}
        for n, q in enumerate(queries):
            by_snapshot.setdefault(id(q.snapshot), []).append(n)
        for members in by_snapshot.values():
            snap = queries[members[0]].snapshot
            group = [queries[n] for n in members]
            starts = np.cumsum([0] + [len(q.pixels) for q in group])
            t0 = time.perf_counter()
            pixels = [p for q in group for p in q.pixels]
            xq, novelty = querying.embed(snap, pixels, self.novelty)  # (B, dim)
            t1 = time.perf_counter()
            found: list[list[SearchAnswer]] = [[] for _ in group]
            calls: dict[tuple, list[int]] = {}  # queries with the same plan (but k): one search call
            for i, q in enumerate(group):
                calls.setdefault(_plan_key(q.plan), []).append(i)
            for idx in calls.values():
                plan = replace(group[idx[0]].plan, k=max(group[i].plan.k for i in idx))
                rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in idx])
                answers = iter(querying.search(snap, xq[rows], plan))
                for i in idx:
                    for _ in range(starts[i], starts[i + 1]):
                        a = next(answers)
                        found[i].append(replace(a, results=a.results[: group[i].plan.k]))
            embed_ms, search_ms = (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000
            for i, n in enumerate(members):
                out[n] = [
                    Answer(
                        a,
                        None if novelty is None else float(novelty[starts[i] + j]),
                        embed_ms,
                        search_ms,
                        len(xq),
                    )
                    for j, a in enumerate(found[i])
                ]
        return [out[n] for n in range(len(queries))]


def _plan_key(plan: SearchPlan) -> tuple:
    """Plans that differ only in k search together (a filter's ids are shared by the snapshot's cache)."""
    p = plan.params
    knob = getattr(p, "nprobe", None), getattr(p, "efSearch", None)
    allowed = id(plan.allowed) if plan.allowed is not None else None
    return allowed, plan.grouped, plan.exclude, knob


def init_app(app: Flask) -> None:
    """Create the engine from the app's config, open the index and start watching it."""
    cfg = app.config
    compute.set_threads(int(cfg["COMPUTE_THREADS"]))  # the app factory is an entry point
    eng = SearchEngine(
        cfg["INDEX"],
        mmap=cfg["MMAP"],
        verify=cfg["VERIFY"],
        reload_interval=float(cfg["RELOAD_INTERVAL"]),
        batch_window_ms=float(cfg["BATCH_WINDOW_MS"]),
        max_batch=int(cfg["MAX_BATCH"]),
        novelty=bool(cfg["NOVELTY"]),
        query_expansion=bool(cfg["QUERY_EXPANSION"]),
    )
    app.extensions["imgrec"] = eng
    metrics = app.extensions.get("imgrec.metrics")
    if metrics is not None:
        eng.on_swap.append(metrics.index_swapped)
        eng.on_refuse.append(metrics.generation_refused)
    eng.start()


def knobs(index_type: str, nprobe: int | None, ef_search: int | None):
    """FAISS search parameters for the knobs that apply to `index_type`; the others are ignored.

    A client's `nprobe` keeps working when the index is rebuilt as hnsw or flat (hot reload may
    change the type under it); `index.index_type` in every answer says which knob applied.
    """
    nprobe = nprobe if index_type == "ivf" else None
    ef_search = ef_search if index_type == "hnsw" else None
    if nprobe is None and ef_search is None:
        return None
    return search_params(index_type, nprobe=nprobe, ef_search=ef_search)


def get_engine() -> SearchEngine:
    """The engine of the current app."""
    from flask import current_app

    return current_app.extensions["imgrec"]
