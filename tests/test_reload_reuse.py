"""Hot reload costs only what changed: a new generation's snapshot shares the served one's open
segments (same files) and encoder (same model), and answers from all of them."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from imgrec.cli import cli
from indexer import IndexOptions, open_snapshot, run_index
from indexer.compaction import MergePolicy
from search_api.engine import SearchEngine, release_freed_heap
from tests.support import seed_embedder, seed_vector, write_seed_file


def add_files(root, start: int, n: int) -> None:
    for i in range(start, start + n):
        write_seed_file(root / f"f{i % 3}" / f"item-{i:05d}.jpg", i)


def test_a_new_generation_reuses_segments_and_encoder(tmp_path, model):
    inventory, index = tmp_path / "inventory", tmp_path / "index"
    add_files(inventory, 0, 60)
    opts = IndexOptions(merge_policy=MergePolicy(factor=3, floor=5))
    run_index(inventory, model, index, opts, embedder=seed_embedder)
    eng = SearchEngine(index, reload_interval=0)
    eng.start()
    try:
        with eng.snapshot() as first:
            old = {p.segment.info.id: p.segment for p in first.parts}
            encoder = first.encoder
        add_files(inventory, 60, 10)
        (inventory / "f0" / "item-00003.jpg").unlink()  # masked in an old segment
        run_index(inventory, model, index, opts, embedder=seed_embedder)
        assert eng.reload()
        with eng.snapshot() as second:
            assert second.generation.id != first.generation.id
            shared = [p.segment for p in second.parts if p.segment.info.id in old]
            assert shared and all(s is old[s.info.id] for s in shared)  # the same open objects
            assert len(second.parts) == len(shared) + 1  # one new segment
            assert second.encoder is encoder
            xq = np.stack([seed_vector(i, second.generation.dim) for i in (3, 65)])
            hits = second.search_vectors(xq, k=1)
            assert hits[0][0].item.path != "f0/item-00003.jpg" and hits[1][0].item.path == "f2/item-00065.jpg"

        add_files(inventory, 70, 40)
        run_index(inventory, model, index, opts, embedder=seed_embedder)
        merged = CliRunner().invoke(cli, ["compact", str(index), "--all"])  # one new segment, no old one
        assert merged.exit_code == 0, merged.output
        assert eng.reload()
        with eng.snapshot() as third:
            fresh = [
                p for p in third.parts if p.segment.info.id not in {q.segment.info.id for q in second.parts}
            ]
            assert fresh and third.encoder is encoder
            assert third.generation.item_count == 109
    finally:
        eng.close()
    snap = open_snapshot(index, verify="full")
    snap.close()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_heap_goes_back_to_the_os_after_a_swap():
    """Memory freed while opening a generation (many small blocks below a live one) is kept by glibc
    until trimmed; the engine trims after every swap."""

    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    blocks = [np.ones(1000) for _ in range(40_000)]  # 8 KB each: the malloc heap, not mmap
    pinned = np.ones(1000)  # above them: free() alone cannot shrink the heap
    del blocks
    before = rss()
    assert release_freed_heap()
    assert before - rss() > 200 * 2**20
    assert pinned.sum() == 1000
