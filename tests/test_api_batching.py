"""Micro-batching: the leader-collects Batcher, and the engine's batched search."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from search_api.batching import Batcher, stacking


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.001)


class Recorder:
    """A process function that records its batches; the first call can be held until released."""

    def __init__(self, hold_first: bool = False):
        self.batches: list[list] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, jobs: list) -> list:
        self.entered.set()
        self.release.wait(30)
        self.batches.append(list(jobs))
        return [("answer", j) for j in jobs]


def test_jobs_arriving_during_a_batch_share_the_next_one():
    rec = Recorder(hold_first=True)
    batcher = Batcher(rec, window_ms=1, max_batch=64)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(batcher.submit, 0)
        rec.entered.wait(30)  # job 0 is being processed, alone
        rest = [pool.submit(batcher.submit, i) for i in range(1, 8)]
        wait_until(lambda: batcher.queued == 7)
        rec.release.set()
        results = [first.result()] + [f.result() for f in rest]
    assert results == [("answer", i) for i in range(8)]  # each caller gets its own answer
    assert [len(b) for b in rec.batches] == [1, 7]
    assert batcher.stats.batches == 2 and batcher.stats.largest == 7


def test_max_batch_splits_the_queue():
    rec = Recorder(hold_first=True)
    batcher = Batcher(rec, window_ms=1, max_batch=3)
    with ThreadPoolExecutor(10) as pool:
        first = pool.submit(batcher.submit, 0)
        rec.entered.wait(30)
        rest = [pool.submit(batcher.submit, i) for i in range(1, 10)]
        wait_until(lambda: batcher.queued == 9)
        rec.release.set()
        assert [f.result() for f in [first, *rest]] == [("answer", i) for i in range(10)]
    assert [len(b) for b in rec.batches] == [1, 3, 3, 3]


def test_sizes_count_rows_not_jobs():
    rec = Recorder(hold_first=True)
    batcher = Batcher(rec, window_ms=1, max_batch=5)
    jobs = [np.zeros((n, 2)) for n in (1, 2, 2, 2, 4)]
    with ThreadPoolExecutor(5) as pool:
        first = pool.submit(batcher.submit, jobs[0])
        rec.entered.wait(30)
        rest = [pool.submit(batcher.submit, j) for j in jobs[1:]]
        wait_until(lambda: batcher.queued == 4)
        rec.release.set()
        for f in [first, *rest]:
            f.result()
    sizes = [sum(len(j) for j in batch) for batch in rec.batches]
    assert sizes[0] == 1 and all(s <= 5 for s in sizes) and sum(sizes) == 11


def test_a_lone_caller_never_waits_for_the_window():
    batcher = Batcher(Recorder(), window_ms=60_000, max_batch=8)
    t0 = time.monotonic()
    assert [batcher.submit(i) for i in range(5)] == [("answer", i) for i in range(5)]
    assert time.monotonic() - t0 < 30  # a wait would have taken 60 s per call
    assert batcher.stats.batches == 5


def test_window_zero_goes_straight_through_concurrently():
    inside = threading.Barrier(4, timeout=30)

    def process(jobs: list) -> list:
        inside.wait()  # only passes if four calls run at the same time
        return jobs

    batcher = Batcher(process, window_ms=0)
    assert not batcher.enabled
    with ThreadPoolExecutor(4) as pool:
        assert sorted(pool.map(batcher.submit, range(4))) == [0, 1, 2, 3]
    assert batcher.stats.batches == 4 and batcher.stats.largest == 1


def test_a_failing_batch_fails_its_callers_and_the_batcher_carries_on():
    calls = []

    def process(jobs: list) -> list:
        calls.append(jobs)
        if "bad" in jobs:
            raise RuntimeError("model exploded")
        return jobs

    batcher = Batcher(process, window_ms=1)
    with pytest.raises(RuntimeError, match="exploded"):
        batcher.submit("bad")
    assert batcher.submit("good") == "good"


def test_process_must_answer_every_job():
    batcher = Batcher(lambda jobs: [], window_ms=1)
    with pytest.raises(RuntimeError, match="0 results for 1 jobs"):
        batcher.submit(1)


def test_stacking_splits_outputs_back_per_job():
    process = stacking(lambda x: (x * 2, x.sum(axis=1)))
    jobs = [np.ones((1, 3)), np.arange(6.0).reshape(2, 3), np.zeros((3, 3))]
    out = process(jobs)
    assert len(out) == 3
    for job, (doubled, sums) in zip(jobs, out, strict=True):
        np.testing.assert_array_equal(doubled, job * 2)
        np.testing.assert_array_equal(sums, job.sum(axis=1))
    (single,) = stacking(lambda x: x + 1)([np.zeros((2, 2))])
    np.testing.assert_array_equal(single, np.ones((2, 2)))


def test_faiss_search_through_the_batcher_matches_direct_search():
    import faiss

    rng = np.random.default_rng(0)
    xb = rng.standard_normal((500, 16)).astype("float32")
    xq = rng.standard_normal((40, 16)).astype("float32")
    index = faiss.IndexFlatL2(16)
    index.add(xb)
    D_ref, I_ref = index.search(xq, 5)  # noqa: N806
    batcher = Batcher(stacking(lambda x: index.search(x, 5)), window_ms=2, max_batch=16)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: batcher.submit(xq[i : i + 1]), range(40)))
    for i, (D, I) in enumerate(answers):  # noqa: E741, N806
        np.testing.assert_array_equal(I[0], I_ref[i])
        np.testing.assert_allclose(D[0], D_ref[i], rtol=1e-5)


def test_engine_batch_mixes_k_and_labels_correctly(catalog):
    """One batched forward + FAISS calls per label give each query what it would get alone."""
    from encoder.preprocess import load_image
    from search_api.engine import Query, SearchEngine

    eng = SearchEngine(catalog.index, reload_interval=0, batch_window_ms=0)
    eng.start()
    try:
        with eng.snapshot() as snap:
            pre = snap.encoder.preprocess
            px = [pre.to_uint8(load_image(p)) for p in catalog.query_paths()[:4]]
            queries = [
                Query(snap, [px[0]], eng.plan(snap, k=3)),
                Query(snap, [px[1]], eng.plan(snap, k=7, label="rings")),
                Query(snap, [px[2], px[3]], eng.plan(snap, k=5)),
                Query(snap, [px[3]], eng.plan(snap, k=2, label="mugs")),
            ]
            together = eng._process(queries)
            alone = [eng._process([q])[0] for q in queries]
        assert [len(a) for a in together] == [1, 1, 2, 1]
        for t, a, q in zip(together, alone, queries, strict=True):
            for t_answer, a_answer in zip(t, a, strict=True):
                assert [h.id for h in t_answer.hits] == [h.id for h in a_answer.hits]
                assert len(t_answer.hits) == q.plan.k
            if q.plan.allowed is not None:  # the label's items
                assert {h.item.label for h in t[0].hits} == {"rings" if q.plan.k == 7 else "mugs"}
        assert together[0][0].batch_size == 5
    finally:
        eng.close()
