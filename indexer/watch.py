"""`imgrec index --watch`: keep the index current until stopped.

    watch(inventory, model_dir, index_dir, options, poll=None, stop=threading.Event())

The watcher applies queued API writes (`indexer.jobs`) and the inventory folder's own changes, in
batches (`indexer.live.apply_batch`: one publish each). Folder changes come from watchdog (inotify
on Linux): each event marks its folder dirty (a folder created, moved or removed: that folder
recursively), and a burst of events is debounced into one batch that plans only the dirty
folders. Without inotify (`poll` given, or watchdog cannot start, e.g. the watch limit is hit) the
whole inventory is planned every `poll` seconds, which costs one `stat` per file in settled,
unchanged folders. The queue is checked every `QUEUE_CHECK` seconds in both modes. The first
batch plans everything (whatever changed while nobody watched, and jobs left queued by a kill).

Stopping (`stop` set, e.g. by SIGTERM/SIGINT in the CLI) lets the current batch finish.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import text

from indexer.live import BatchResult, apply_batch, folder_of

logger = logging.getLogger(__name__)

QUEUE_CHECK = 0.2  # seconds between looks at the job queue
DEBOUNCE = 0.3  # seconds without events before a batch starts
MAX_DELAY = 3.0  # a steady stream of events still gets a batch this often
RETRY_AFTER = 2.0  # seconds before retrying a batch that failed (lock held, disk full...)
IGNORED_EVENTS = frozenset({"opened", "closed_no_write"})


class DirtyFolders:
    """Folders reported changed by watchdog, collected from its thread until a batch takes them."""

    def __init__(self, root: str):
        self.root = os.path.realpath(root)
        self._lock = threading.Lock()
        self._dirty: dict[str, bool] = {}
        self.first = self.last = 0.0

    def mark(self, prefix: str, recursive: bool) -> None:
        now = time.monotonic()
        with self._lock:
            if not self._dirty:
                self.first = now
            self.last = now
            self._dirty[prefix] = self._dirty.get(prefix, False) or recursive

    def dispatch(self, event) -> None:  # noqa: ANN001 - a watchdog FileSystemEvent
        """watchdog's handler entry point (called on its thread)."""
        if event.event_type in IGNORED_EVENTS or (event.is_directory and event.event_type == "modified"):
            return
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if not path:
                continue
            rel = os.path.relpath(os.fsdecode(path), self.root)
            if rel == "." or rel.startswith(".."):
                continue
            rel = rel.replace(os.sep, "/")
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:  # a name that is not UTF-8: the ledger escapes it, plan it all
                self.mark("", True)
                continue
            if event.is_directory:
                self.mark(rel + "/", True)
            self.mark(folder_of(rel), False)

    def take(self, debounce: float, max_delay: float) -> dict[str, bool] | None:
        """The dirty folders once quiet for `debounce` (or pending for `max_delay`), else None."""
        now = time.monotonic()
        with self._lock:
            if not self._dirty or (now - self.last < debounce and now - self.first < max_delay):
                return None
            dirty, self._dirty = self._dirty, {}
            return dirty

    @property
    def pending(self) -> bool:
        with self._lock:
            return bool(self._dirty)


def start_observer(inventory: str | Path, dirty: DirtyFolders):  # noqa: ANN201 - a watchdog Observer
    """An inotify (native) observer of the inventory, or None when it cannot start."""
    from watchdog.observers import Observer

    observer = Observer()
    observer.schedule(dirty, os.path.realpath(inventory), recursive=True)
    try:
        observer.start()
    except OSError as e:  # no inotify, or the watch limit (fs.inotify.max_user_watches) is hit
        logger.warning("cannot watch %s (%s): polling instead", inventory, e)
        with contextlib.suppress(Exception):  # it never started
            observer.stop()
        return None
    return observer


def watch(
    inventory: str | Path,
    model_dir: str | Path,
    index_dir: str | Path,
    options=None,  # noqa: ANN001 - indexer.job.IndexOptions
    *,
    poll: float | None = None,
    stop: threading.Event | None = None,
    debounce: float = DEBOUNCE,
    on_batch: Callable[[BatchResult], None] | None = None,
    embedder=None,  # noqa: ANN001 - as for run_index (e.g. a DaskEmbedder); None: this process
) -> None:
    """Apply queued writes and folder changes until `stop` is set (see the module doc)."""
    from encoder import load_encoder
    from indexer.db import open_database

    stop = stop or threading.Event()
    engine = open_database(index_dir)
    encoder = load_encoder(model_dir)
    dirty = DirtyFolders(str(inventory))
    observer = None if poll else start_observer(inventory, dirty)
    interval = poll or (None if observer else 2.0)
    logger.info(
        "watching %s (%s), index %s", inventory,
        f"polling every {interval:g} s" if interval else "inotify", index_dir,
    )  # fmt: skip
    try:
        full_due = 0.0  # the first batch plans everything
        while not stop.is_set():
            now = time.monotonic()
            folders = dirty.take(debounce, MAX_DELAY)
            full = now >= full_due
            if folders is None and not full and not dirty.pending and _has_queued(engine):
                folders = {}
            if full or folders is not None:
                try:
                    result = apply_batch(
                        inventory, model_dir, index_dir, None if full else folders,
                        options=options, encoder=encoder, engine=engine, embedder=embedder,
                    )  # fmt: skip
                except Exception as e:  # noqa: BLE001 - e.g. another run holds the lock; retried
                    if _fatal(e):
                        raise
                    logger.warning("batch failed (%s): retrying in %g s", e, RETRY_AFTER)
                    if folders:
                        for prefix, recursive in folders.items():
                            dirty.mark(prefix, recursive)
                    stop.wait(RETRY_AFTER)
                    continue
                if full:
                    full_due = time.monotonic() + interval if interval else float("inf")
                if on_batch:
                    on_batch(result)
                _log(result)
                if result.jobs and not result.states:  # queued jobs this batch could not settle
                    stop.wait(RETRY_AFTER)
                continue
            stop.wait(QUEUE_CHECK)
    finally:
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)
        engine.dispose()


def _has_queued(engine) -> bool:  # noqa: ANN001
    with engine.connect() as conn:
        return conn.execute(text("SELECT 1 FROM jobs WHERE state = 'queued' LIMIT 1")).first() is not None


def _fatal(e: Exception) -> bool:
    from indexer.job import ModelMismatchError

    return isinstance(e, ModelMismatchError | NotADirectoryError)


def _log(result: BatchResult) -> None:
    s = result.summary
    if result.jobs or (s is not None and (s.added or s.updated or s.deleted)):
        logger.info(
            "batch: %d jobs (%d settled), +%d ~%d -%d, generation %s", result.jobs, len(result.states),
            s.added, s.updated, s.deleted, s.generation_id,
        )  # fmt: skip
