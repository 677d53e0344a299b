"""Compaction: the size-tiered policy, merges as generations, and the disk a first build needs."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from indexer import IndexOptions, current_generation_id, open_snapshot, run_index
from indexer import faiss_index as fi
from indexer.compaction import MergePolicy
from indexer.db import WAL_CHECKPOINT_BYTES
from indexer.segments import SegmentInfo
from tests.support import (
    assert_same_index,
    forkserver,
    index_contents,
    make_model_dir,
    seed_embedder,
    write_seed_file,
)

pytestmark = pytest.mark.usefixtures("low_sql_variable_limit")


def seg(i: int, n: int) -> SegmentInfo:
    return SegmentInfo(i, f"segments/{i:06d}.faiss", n, 8, "l2", "flat", 0, "", "")


def test_size_tiers():
    policy = MergePolicy(factor=10, floor=1000)
    assert [policy.tier(n) for n in (0, 5, 999, 1000, 9_999, 10_000, 99_999, 100_000, 2_000_000)] == [
        0, 0, 0, 0, 0, 1, 1, 2, 3,
    ]  # fmt: skip
    nine_small = [(seg(i, 100), 0) for i in range(9)]
    assert policy.pick(nine_small) == []
    assert policy.pick(nine_small + [(seg(9, 5000), 0)]) == list(range(10))  # ten in tier 0
    big = [(seg(20 + i, 50_000), 0) for i in range(10)]
    assert policy.pick(nine_small + big) == list(range(20, 30))  # the full tier, not the others
    assert policy.pick([(seg(1, 1000), 300)]) == [1]  # 30% masked: rewritten without them
    assert policy.pick([(seg(1, 1000), 299)]) == []


def seed_inventory(root: Path, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        write_seed_file(root / f"f{i % 7}" / f"item-{i:05d}.jpg", i)


def index_bytes(index: Path) -> tuple[int, int]:
    """(bytes of segment files, bytes of the whole index folder but the model copy)."""
    segments = (
        sum(p.stat().st_size for p in (index / "segments").glob("*")) if (index / "segments").is_dir() else 0
    )
    catalog = sum(p.stat().st_size for p in index.glob("catalog.sqlite*"))
    return segments, segments + catalog


def test_a_first_build_needs_at_most_twice_the_final_disk(tmp_path, monkeypatch):
    """Measured after every file is renamed into place (the moment disk use peaks): checkpoints
    are superseded at once and merge inputs deleted after each merge."""
    model = make_model_dir(tmp_path / "model", code_channels=32)  # 128-d: vectors outweigh the catalog
    inventory, index = tmp_path / "inventory", tmp_path / "index"
    seed_inventory(inventory, 1200)
    peaks = [0, 0]
    real_fsync_dir = fi.fsync_dir

    def measuring_fsync_dir(path):  # noqa: ANN001, ANN202 - observes; the real fsync runs
        real_fsync_dir(path)
        if index.is_dir():
            peaks[:] = [max(a, b) for a, b in zip(peaks, index_bytes(index), strict=True)]

    monkeypatch.setattr(fi, "fsync_dir", measuring_fsync_dir)
    policy = MergePolicy(factor=4, floor=20)
    opts = IndexOptions(batch_size=25, checkpoint_every=50, merge_policy=policy)
    summary = run_index(inventory, model, index, opts, embedder=seed_embedder)
    assert len(summary.published) >= 24 and summary.merged >= 6
    final = index_bytes(index)
    print(f"\nfirst build: peak {peaks} bytes, final {list(final)} (segments, with catalog)")
    assert peaks[0] <= 2 * final[0]  # the vectors: what grew with N squared before segments
    assert peaks[1] <= 2 * final[1] + WAL_CHECKPOINT_BYTES  # all of it, SQLite's WAL included
    snap = open_snapshot(index, verify="full")
    try:
        assert snap.generation.item_count == 1200 and len(snap.parts) <= 3 * (policy.factor - 1)
    finally:
        snap.close()


@pytest.mark.parametrize(
    "die_at, merged",
    [
        ("indexer.compaction:make_current", False),  # merged segment written, not committed
        ("indexer.job:prune", True),  # the merge committed, its inputs not yet deleted
    ],
)
def test_kill_during_a_merge(tmp_path, die_at, merged, model):
    inventory, index = tmp_path / "inventory", tmp_path / "index"
    seed_inventory(inventory, 30)
    policy = MergePolicy(factor=3, floor=5)
    for start in range(30, 60, 10):  # publishes that leave two small segments (no merge yet)
        run_index(inventory, model, index, IndexOptions(compact=False), embedder=seed_embedder)
        seed_inventory(inventory, 10, start=start)
    before = current_generation_id(index)
    # the next run publishes a third segment, then the policy merges the tier: killed there
    p = forkserver().Process(
        target=_index_child, args=(inventory, model, index, policy, tmp_path / "log", die_at)
    )
    p.start()
    p.join()
    assert p.exitcode == -signal.SIGKILL
    snap = open_snapshot(index, verify="full")
    try:
        assert snap.generation.id != before and ("merged_into" in snap.generation.run_summary) == merged
    finally:
        snap.close()
    s = run_index(inventory, model, index, IndexOptions(merge_policy=policy), embedder=seed_embedder)
    assert s.published == [] or s.merged  # nothing left but (maybe) the merge the kill prevented
    assert_same_index(index_contents(index), _rebuild(inventory, model, tmp_path / "ref"))


def _rebuild(inventory: Path, model: Path, out: Path):
    run_index(inventory, model, out, IndexOptions(full=True), embedder=seed_embedder)
    return index_contents(out)


def _index_child(inventory, model, index, policy, log, die_at):  # noqa: ANN001, ANN202
    """`run_index` with the seed embedder in a child that SIGKILLs itself at `die_at`."""
    import importlib
    import os

    module, name = die_at.split(":")
    setattr(importlib.import_module(module), name, lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL))
    run_index(inventory, model, index, IndexOptions(merge_policy=policy), embedder=seed_embedder)


def test_compaction_keeps_rollback_to_the_run_before(tmp_path, model):
    """A merge is not a rollback target: rollback undoes the run that published and merged."""
    from click.testing import CliRunner

    from imgrec.cli import cli

    inventory, index = tmp_path / "inventory", tmp_path / "index"
    seed_inventory(inventory, 40)
    policy = MergePolicy(factor=2, floor=5)
    run_index(inventory, model, index, IndexOptions(merge_policy=policy), embedder=seed_embedder)
    before, gen_before = index_contents(index), current_generation_id(index)
    seed_inventory(inventory, 40, start=40)  # a second segment of the same tier: merged
    s = run_index(inventory, model, index, IndexOptions(merge_policy=policy), embedder=seed_embedder)
    assert s.merged >= 1 and s.added == 40
    out = CliRunner().invoke(cli, ["rollback", str(index)])
    assert out.exit_code == 0, out.output
    assert current_generation_id(index) == gen_before
    assert_same_index(index_contents(index), before)
