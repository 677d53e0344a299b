"""Generations: rollback, keep-N pruning, and `imgrec status` reporting the ledger."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy.orm import Session

from imgrec.cli import cli
from indexer import IndexOptions, current_generation_id, open_snapshot, run_index
from indexer.compaction import MergePolicy
from indexer.db import open_database
from indexer.generations import live_segment_files
from tests.support import (
    assert_same_index,
    full_rebuild,
    index_contents,
    make_inventory,
    write_image,
)

pytestmark = pytest.mark.usefixtures("low_sql_variable_limit")


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_rollback_then_the_next_run_reconciles(tmp_path, model):
    inventory, index = tmp_path / "inventory", tmp_path / "index"
    paths = make_inventory(inventory, 12)
    first = run_index(inventory, model, index).generation_id
    before = index_contents(index)

    make_inventory(inventory, 3, start=100)  # added
    write_image(paths[0], seed=777, size=30)  # updated
    paths[1].unlink()  # deleted
    second = run_index(inventory, model, index).generation_id
    assert second != first

    out = invoke("rollback", index)
    assert f"generation {first} is current again (12 items)" in out
    assert current_generation_id(index) == first
    assert_same_index(index_contents(index), before)  # exactly the previous generation

    s = run_index(inventory, model, index)  # the folder has not changed back: reconcile
    assert (s.added, s.updated, s.deleted) == (3, 1, 1)
    assert_same_index(index_contents(index), full_rebuild(inventory, model, tmp_path / "ref"))

    invoke("rollback", index)  # back to `first` again (the reconciling generation is undone)
    assert current_generation_id(index) == first
    result = CliRunner().invoke(cli, ["rollback", str(index)])
    assert result.exit_code == 1 and "nothing to roll back to" in result.output


def test_rollback_restores_an_item_deleted_and_added_back(tmp_path, model):
    inventory, index = tmp_path / "inventory", tmp_path / "index"
    paths = make_inventory(inventory, 5)
    run_index(inventory, model, index)
    original, rel = paths[0].read_bytes(), paths[0].relative_to(inventory).as_posix()
    paths[0].unlink()
    run_index(inventory, model, index)  # deleted
    deleted_state = index_contents(index)
    write_image(paths[0], seed=4242)  # back, with other bytes: the same item revived
    run_index(inventory, model, index)
    invoke("rollback", index)
    assert_same_index(index_contents(index), deleted_state)
    invoke("rollback", index)  # to the first generation: the item's first bytes and vector
    assert len(index_contents(index)) == 5
    snap = open_snapshot(index)
    try:
        item = next(i for i in snap.items(list(range(1, 6))).values() if i.path == rel)
        assert item.sha256 == hashlib.sha256(original).hexdigest()  # catalog row matches the vector
    finally:
        snap.close()
    paths[0].write_bytes(original)
    run_index(inventory, model, index)
    assert_same_index(index_contents(index), full_rebuild(inventory, model, tmp_path / "ref"))


def segment_files(index: Path) -> tuple[set[str], set[str]]:
    """(segment files on disk, files of the segments the current and kept generations list)."""
    engine = open_database(index, migrate=False)
    try:
        with Session(engine) as session:
            listed = live_segment_files(session)
    finally:
        engine.dispose()
    return {f"segments/{p.name}" for p in (index / "segments").iterdir()}, listed


def test_keep_n_generations(tmp_path, model):
    inventory, index = tmp_path / "inventory", tmp_path / "index"
    make_inventory(inventory, 4)
    merges = MergePolicy(factor=3)  # merges often: merged-away segments go once no kept generation lists them
    for i in range(6):
        make_inventory(inventory, 1, start=100 + i)
        run_index(inventory, model, index, IndexOptions(keep_generations=2, merge_policy=merges))
    on_disk, listed = segment_files(index)
    assert on_disk == listed
    out = invoke("status", index)
    assert out.count(" current ") == 1 and out.count(" kept ") == 1
    snap = open_snapshot(index)
    try:
        assert len(snap.parts) < 7 and snap.generation.item_count == 10  # merged, nothing lost
    finally:
        snap.close()
    assert_same_index(index_contents(index), full_rebuild(inventory, model, tmp_path / "ref"))


def test_status_lists_what_was_skipped_or_failed_and_why(tmp_path, model):
    inventory, index = tmp_path / "inventory", tmp_path / "index"
    make_inventory(inventory, 3)
    (inventory / "empty.jpg").write_bytes(b"")
    (inventory / "readme.txt").write_text("hello")
    run_index(inventory, model, index)
    out = invoke("status", index)
    assert "3 embedded" in out and "2 skipped" in out
    assert "empty.jpg: empty file (0 bytes)" in out
    assert "readme.txt: not an image file extension" in out
    assert "and 1 more" in invoke("status", index, "--limit", "1")
    assert '"problems_not_listed": 0' in invoke("status", index, "--json")
