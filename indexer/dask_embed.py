"""Decode and embed on a Dask cluster: an `embedder` for `run_index`, same signature as `embed_files`.

    with dask_client("local:2") as client:             # or "tcp://scheduler:8786"
        run_index(inventory, model_dir, index_dir, embedder=DaskEmbedder(client))

The files to embed are cut into partitions; each partition is one task that decodes its files with
`indexer.ingest.decode_file` and embeds them with the run's own encoder, exactly as a local run does
(hostile files give the same outcomes). The model dir's files (weights, config, fingerprint) are
sent once and broadcast to every worker (`client.scatter(..., broadcast=True)`); a worker loads them
with `encoder.load_encoder` (fingerprint checked) once per fingerprint and keeps the encoder. Without
a `model_dir`, the encoder object itself is pickled instead (only for encoders that pickle).
Results stream back as tasks finish (`as_completed`, a bounded window of partitions in flight) and
are handed to the job in input order, so item ids come out as in a local run, and the job publishes
them through its usual path (generations, ledger, checkpoints).

A task that fails is retried (`retries`); a worker that dies has its tasks rescheduled on the others
(the scheduler's `allowed-failures` bounds how often one task may kill a worker).

Workers must see the inventory at the same absolute path as the machine running `imgrec index`
(a shared volume or network filesystem); only paths, outcomes and vectors travel.
"""

from __future__ import annotations

import logging
import pickle
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from encoder.model_dir import model_files
from indexer.ingest import Decoded, EmbeddedBatch, IngestLimits, decode_file
from indexer.scan import ScannedFile

if TYPE_CHECKING:
    from distributed import Client

    from encoder import Encoder

logger = logging.getLogger(__name__)

PARTITION_SIZE = 256  # files per task
PICKLED = "__pickled_encoder__"
RETRIES = 3  # re-runs of a task that raised (a dead worker's tasks are rescheduled regardless)


@contextmanager
def dask_client(address: str) -> Iterator[Client]:
    """A client for `address`: a scheduler address (`tcp://host:8786`), or `local[:N]` for a
    LocalCluster of N single-threaded worker processes (default: one per CPU core).

    :raise ValueError: a malformed `local:N`.
    """
    from distributed import Client, LocalCluster

    if address == "local" or address.startswith("local:"):
        n = address.partition(":")[2]
        if n and not (n.isdigit() and int(n) > 0):
            raise ValueError(f"--dask local:N needs a positive number of workers, got {address!r}")
        cluster = LocalCluster(
            n_workers=int(n) if n else None,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
        )
        try:
            with Client(cluster) as client:
                yield client
        finally:
            cluster.close()
    else:
        with Client(address) as client:
            yield client


class DaskEmbedder:
    """Callable like `indexer.ingest.embed_files`, running the work as Dask tasks on `client`."""

    def __init__(
        self,
        client: Client,
        *,
        partition_size: int = PARTITION_SIZE,
        retries: int = RETRIES,
        max_in_flight: int | None = None,  # partitions submitted at once (default: 2 per worker thread)
        model_dir: str | Path | None = None,  # the run's model dir: what workers load (recommended)
    ):
        if partition_size < 1:
            raise ValueError("partition_size must be at least 1")
        self.client, self.partition_size, self.retries = client, partition_size, retries
        self.max_in_flight, self.model_dir = max_in_flight, model_dir

    def __call__(
        self,
        files: Iterable[ScannedFile],
        encoder: Encoder,
        *,
        batch_size: int = 32,
        workers: int = 2,  # decoding threads of a local run; each Dask task decodes its own partition
        limits: IngestLimits | None = None,
        on_decoded: Callable[[Decoded], None] | None = None,
        threads: int | None = None,  # torch threads of a local run; workers keep their own setting
        prefetch: int = 2,  # batches decoded ahead in a local run; here `max_in_flight` partitions
    ) -> Iterator[EmbeddedBatch]:
        """Like `embed_files`: batches (one per partition) in input order; `on_decoded` per file, in order."""
        from distributed import as_completed

        files = list(files)
        if not files:
            return
        limits = limits or IngestLimits()
        parts = [files[i : i + self.partition_size] for i in range(0, len(files), self.partition_size)]
        # the weights go to every worker once; tasks then refer to the scattered copy
        [blob] = self.client.scatter([self._model_payload(encoder)], broadcast=True, hash=False)
        window = self.max_in_flight or max(2, 2 * sum(self.client.nthreads().values()))

        def submit(i: int):  # noqa: ANN202 - a distributed.Future
            fut = self.client.submit(
                embed_partition, blob, encoder.fingerprint, parts[i], batch_size, limits,
                pure=False, retries=self.retries,
            )  # fmt: skip
            index_of[fut.key] = i
            return fut

        index_of: dict[str, int] = {}
        pending = as_completed([submit(i) for i in range(min(window, len(parts)))], with_results=True)
        next_part = len(index_of)
        done: dict[int, EmbeddedBatch] = {}
        expected = 0
        try:
            for fut, batch in pending:
                done[index_of.pop(fut.key)] = batch
                if next_part < len(parts):
                    pending.add(submit(next_part))
                    next_part += 1
                while expected in done:  # hand results over in input order
                    batch = done.pop(expected)
                    if on_decoded:
                        position = {f.rel_path: i for i, f in enumerate(parts[expected])}
                        for d in sorted(batch.ok + batch.rejected, key=lambda d: position[d.file.rel_path]):
                            on_decoded(d)
                    yield batch
                    expected += 1
        finally:
            pending.clear()
            blob.release()
        logger.info("embedded %d files in %d partitions on Dask", len(files), len(parts))

    def _model_payload(self, encoder: Encoder) -> dict[str, bytes]:
        """What workers rebuild the encoder from: the model dir's files, else the pickled encoder.

        :raise ValueError: `model_dir` holds another model than `encoder`, or the encoder cannot be pickled.
        """
        if self.model_dir is not None:
            from encoder.model_dir import read_fingerprint

            if read_fingerprint(self.model_dir) != encoder.fingerprint:
                raise ValueError(
                    f"{self.model_dir} is not the model being indexed with (fingerprints differ)"
                )
            root = Path(self.model_dir)
            return {name: (root / name).read_bytes() for name in model_files(root)}  # graphs included
        try:
            return {PICKLED: pickle.dumps(encoder)}
        except (TypeError, pickle.PicklingError) as e:
            raise ValueError(f"this encoder cannot be pickled ({e}): give DaskEmbedder its model_dir") from e


# --- worker side ---

_ENCODERS: dict[str, Encoder] = {}  # per worker process: fingerprint -> encoder loaded once
_ENCODERS_LOCK = threading.Lock()


def worker_encoder(payload: dict[str, bytes], fingerprint: str) -> Encoder:
    """The encoder for `fingerprint` in this worker process, loaded from `payload` on first use."""
    with _ENCODERS_LOCK:
        if fingerprint not in _ENCODERS:
            if PICKLED in payload:
                encoder = pickle.loads(payload[PICKLED])
            else:  # the model dir's own files, loaded the way every imgrec process loads a model
                from encoder import load_encoder

                with tempfile.TemporaryDirectory(prefix="imgrec-model-") as tmp:
                    for name, data in payload.items():
                        (Path(tmp) / name).write_bytes(data)
                    encoder = load_encoder(tmp)
            if encoder.fingerprint != fingerprint:
                raise ValueError("the shipped model does not match the requested fingerprint")
            _ENCODERS.clear()  # one model per worker at a time
            _ENCODERS[fingerprint] = encoder
        return _ENCODERS[fingerprint]


def embed_partition(
    blob: dict[str, bytes], fingerprint: str, files: list[ScannedFile], batch_size: int, limits: IngestLimits
) -> EmbeddedBatch:
    """One task: decode `files` as a local run does, embed the readable ones in batches."""
    encoder = worker_encoder(blob, fingerprint)
    ok: list[Decoded] = []
    rejected: list[Decoded] = []
    for f in files:
        d = decode_file(f, encoder.preprocess, limits)
        (ok if d.outcome == "ok" else rejected).append(d)
    chunks = [
        encoder.embed_pixels([d.pixels for d in ok[i : i + batch_size]])
        for i in range(0, len(ok), batch_size)
    ]
    for d in ok:
        d.pixels = None  # only outcomes and vectors travel back
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, encoder.dim), np.float32)
    return EmbeddedBatch(ok, vectors, rejected)
