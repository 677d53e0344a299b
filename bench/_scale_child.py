"""The measured side of bench/scale.py: one indexer run or one search loop, in its own process.

Runs against whichever imgrec the interpreter imports (this branch, or an older checkout with its
own environment: the parent picks the interpreter), through the public API only: `run_index(..., embedder=)`,
`IndexOptions`, `open_snapshot`, `Snapshot.search_vectors`. Prints one JSON line.

    python bench/_scale_child.py '{"task": "index", "inventory": ..., "model": ..., "index": ...}'
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def rss_mb() -> float:
    """Peak resident memory of this process so far (MB): VmHWM, which starts afresh at exec.

    (`getrusage`'s ru_maxrss does not: a child starts with its parent's peak, here the driver's.)
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children (planning workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def hash_embedder(files, encoder, *, batch_size=32, workers=2, limits=None):  # noqa: ANN001, ANN201
    """A fast stand-in for decoding and embedding: each file's bytes are read and hashed (as the
    real ingest does), and its vector is a fixed random projection of the sha256 digest.

    The subject of the benchmark is the indexer's bookkeeping, not image decoding; the vectors
    are still distinct, deterministic and unit-normalised.
    """
    import numpy as np

    from indexer.ingest import Decoded, EmbeddedBatch

    proj = np.random.default_rng(0).standard_normal((32, encoder.dim)).astype(np.float32)
    chunk = max(batch_size, 1024)
    batch, digests = [], []
    for f in files:
        with open(f.abs_path, "rb") as fh:
            data = fh.read()
            st = os.fstat(fh.fileno())
        digest = hashlib.sha256(data).digest()
        batch.append(
            Decoded(f, "ok", sha256=digest.hex(), size=st.st_size, mtime_ns=st.st_mtime_ns, width=1, height=1)
        )
        digests.append(digest)
        if len(batch) == chunk:
            yield _batch(batch, digests, proj, EmbeddedBatch)
            batch, digests = [], []
    if batch:
        yield _batch(batch, digests, proj, EmbeddedBatch)


def _batch(batch, digests, proj, EmbeddedBatch):  # noqa: ANN001, ANN202, N803
    import numpy as np

    x = np.frombuffer(b"".join(digests), np.uint8).reshape(len(digests), 32).astype(np.float32) - 127.5
    xb = x @ proj
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    return EmbeddedBatch(batch, xb.astype(np.float32), [])


def index(args: dict) -> dict:
    from indexer import IndexOptions, run_index

    before = rss_mb()
    opts = IndexOptions(checkpoint_every=args.get("checkpoint_every", 5000))
    started = time.time()
    t, cpu = time.perf_counter(), cpu_seconds()
    summary = run_index(args["inventory"], args["model"], args["index"], opts, embedder=hash_embedder)
    return {
        "started": started,
        "seconds": time.perf_counter() - t,
        "cpu_seconds": cpu_seconds() - cpu,
        "rss_after_imports_mb": before,
        "peak_rss_mb": rss_mb(),
        "added": summary.added,
        "unchanged": summary.unchanged,
        "published": summary.published,
        "generation": summary.generation_id,
    }


def search(args: dict) -> dict:
    import numpy as np

    from indexer import open_snapshot

    t = time.perf_counter()
    snap = open_snapshot(args["index"])
    opened = time.perf_counter() - t
    rng = np.random.default_rng(1)
    xq = rng.standard_normal((args.get("queries", 200), snap.generation.dim)).astype(np.float32)
    snap.search_vectors(xq[:5], k=10)  # warm-up
    times = []
    for q in xq:
        t = time.perf_counter()
        hits = snap.search_vectors(q[None], k=10)
        times.append(time.perf_counter() - t)
        assert len(hits[0]) == 10
    n_segments = len(getattr(snap, "parts", [None]))
    snap.close()
    return {
        "open_seconds": opened,
        "p50_ms": float(np.median(times) * 1000),
        "p90_ms": float(np.percentile(times, 90) * 1000),
        "segments": n_segments,
        "peak_rss_mb": rss_mb(),
    }


if __name__ == "__main__":
    request = json.loads(sys.argv[1])
    result = {"index": index, "search": search}[request["task"]](request)
    print(json.dumps(result))
