"""Process-wide compute settings: the one owner of thread counts and the OpenMP wait policy.

Entry points set them once, before any work: the `imgrec` CLI group (`passive_openmp`), the API's
app factory (`set_threads` with IMGREC_COMPUTE_THREADS), `search_api.gunicorn_conf` (OMP_NUM_THREADS
in the environment before the workers load FAISS) and the bench scripts. Library modules never set
them at import or per call; they read `configured_threads()`.

    compute.passive_openmp()     # before torch/FAISS load OpenMP: waiting threads sleep, never spin
    compute.set_threads(1)       # onnxruntime sessions, torch intra-op, FAISS (OpenMP) threads
    compute.pin_this_thread()    # in a thread that searches: FAISS's count, once per thread

FAISS's thread count is OpenMP's, which is per calling thread (`omp_set_num_threads` sets only the
caller's value, and threads started later read the value OMP_NUM_THREADS gave at load): a thread
that searches calls `pin_this_thread`, which sets it the first time only.
"""

from __future__ import annotations

import os
import sys
import threading

_threads: int | None = None  # set by an entry point; None: the libraries' defaults (every core)
_pinned = threading.local()  # .threads: what this thread's FAISS (OpenMP) count was set to


def passive_openmp() -> None:
    """OMP_WAIT_POLICY=PASSIVE unless the environment sets it: threads waiting at a barrier sleep.

    Only effective before torch or FAISS load their OpenMP runtime. On a busy or shared machine
    spinning made 2-thread forward passes 3-4x slower than 1 thread (docs/performance.md).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def set_threads(n: int) -> None:
    """Compute threads of this process: onnxruntime sessions created from now on, torch (now if it
    is loaded, else when an encoder loads it) and FAISS in the calling thread (other threads:
    `pin_this_thread`). 0 keeps the libraries' defaults. Call at entry points only."""
    global _threads
    if n <= 0:
        return
    _threads = int(n)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != _threads:
        torch.set_num_threads(_threads)
    pin_this_thread()


def configured_threads() -> int | None:
    """The thread count set at the entry point, if any."""
    return _threads


def pin_this_thread() -> None:
    """Set FAISS's (OpenMP) thread count of the calling thread to the configured one, once."""
    if _threads is None or getattr(_pinned, "threads", None) == _threads:
        return
    faiss = sys.modules.get("faiss")
    if faiss is None:  # not loaded yet: the thread that searches will pin itself
        return
    faiss.omp_set_num_threads(_threads)
    _pinned.threads = _threads


class TorchThreads:
    """`threads` / `set_threads` of a runner that computes with torch (intra-op threads are
    process-wide in torch: an encoder sets them when an entry point configured a count, or when
    `ThreadTuner` switches them between batches)."""

    @property
    def threads(self) -> int:
        import torch

        return torch.get_num_threads()

    def set_threads(self, n: int) -> None:
        import torch

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
