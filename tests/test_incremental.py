"""Incremental re-indexing: only what changed is decoded, and the result equals a full rebuild."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from imgrec.cli import cli
from indexer import IndexLockedError, IndexOptions, ModelMismatchError, open_snapshot, run_index
from indexer.generations import index_lock
from tests.support import (
    assert_same_index,
    full_rebuild,
    imgrec_command,
    index_contents,
    make_inventory,
    make_model_dir,
    write_image,
)

pytestmark = pytest.mark.usefixtures("low_sql_variable_limit")


def test_add_change_delete_rename_equal_a_full_rebuild(tmp_path, model):
    inventory, index = tmp_path / "inventory", tmp_path / "index"
    paths = make_inventory(inventory, 40)
    first = run_index(inventory, model, index)
    assert (first.added, first.decoded, len(first.published)) == (40, 40, 1)

    same = run_index(inventory, model, index)
    assert (same.unchanged, same.decoded, same.published) == (40, 0, [])

    os.utime(paths[0], ns=(1, 1))  # new mtime, same bytes: hashed, not decoded
    touched = run_index(inventory, model, index)
    assert (touched.unchanged, touched.decoded, touched.published) == (40, 0, [])

    make_inventory(inventory, 5, start=100)  # 5 added
    for p in paths[1:4]:  # 3 changed
        write_image(p, seed=500 + paths.index(p), size=30)
    for p in paths[4:8]:  # 4 deleted
        p.unlink()
    paths[8].rename(paths[8].with_name("renamed.jpg"))  # 2 renamed: delete + add
    (inventory / "new-label").mkdir()
    paths[9].rename(inventory / "new-label" / paths[9].name)
    s = run_index(inventory, model, index)
    assert (s.added, s.updated, s.deleted, s.unchanged, s.skipped) == (7, 3, 6, 31, 0)
    assert s.decoded == 10  # the new, changed and renamed files only
    assert_same_index(index_contents(index), full_rebuild(inventory, model, tmp_path / "ref"))

    snap = open_snapshot(index)
    try:
        assert snap.labels()["new-label"] == 1
        assert snap.generation.run_summary["added"] == 7
    finally:
        snap.close()


def test_a_file_that_turns_bad_leaves_the_index(tmp_path, model):
    inventory, index = tmp_path / "inventory", tmp_path / "index"
    paths = make_inventory(inventory, 6)
    run_index(inventory, model, index)
    paths[0].write_bytes(paths[0].read_bytes()[:100])  # truncated in place
    s = run_index(inventory, model, index)
    assert (s.skipped, s.deleted) == (1, 1)
    assert_same_index(index_contents(index), full_rebuild(inventory, model, tmp_path / "ref"))
    write_image(paths[0], seed=0)  # repaired: back under its old item
    s = run_index(inventory, model, index)
    assert s.added == 1
    assert_same_index(index_contents(index), full_rebuild(inventory, model, tmp_path / "ref"))


def test_a_killed_first_build_resumes_from_its_checkpoints(tmp_path, model):
    inventory, index = tmp_path / "inventory", tmp_path / "index"
    make_inventory(inventory, 30)

    class Stopped(Exception):
        pass

    def dies_after_two_batches(files, encoder, **kw):  # noqa: ANN001, ANN003
        from indexer.ingest import embed_files

        for n, batch in enumerate(embed_files(files, encoder, **kw)):
            if n == 2:
                raise Stopped  # the run stops here, after its checkpoints
            yield batch

    with pytest.raises(Stopped):
        run_index(
            inventory,
            model,
            index,
            IndexOptions(batch_size=4, checkpoint_every=4),
            embedder=dies_after_two_batches,
        )
    assert len(index_contents(index)) == 8
    resumed = run_index(inventory, model, index)
    assert (resumed.added, resumed.unchanged, resumed.decoded) == (22, 8, 22)
    assert_same_index(index_contents(index), full_rebuild(inventory, model, tmp_path / "ref"))


def test_another_model_is_refused_and_full_rebuilds_with_it(tmp_path, model):
    inventory, index = tmp_path / "inventory", tmp_path / "index"
    make_inventory(inventory, 8)
    run_index(inventory, model, index)
    other = make_model_dir(tmp_path / "other-model", seed=1)
    with pytest.raises(ModelMismatchError, match="pass --full to rebuild with the new one"):
        run_index(inventory, other, index)

    args = ["index", "--inventory", str(inventory), "--model", str(other), "--index", str(index)]
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 1 and "was built with model" in refused.output and "--full" in refused.output
    rebuilt = CliRunner().invoke(cli, args + ["--full"])
    assert rebuilt.exit_code == 0, rebuilt.output
    snap = open_snapshot(index)
    try:
        assert snap.generation.model_fingerprint == snap.encoder.fingerprint != ""
        assert (index / "models" / snap.generation.model_fingerprint).is_dir()
    finally:
        snap.close()
    assert_same_index(index_contents(index), full_rebuild(inventory, other, tmp_path / "ref"))
    assert CliRunner().invoke(cli, args).exit_code == 0  # the new model is now the index's


def test_a_second_run_refuses_while_the_first_holds_the_lock_or_waits(tmp_path, model):
    inventory, index = tmp_path / "inventory", tmp_path / "index"
    make_inventory(inventory, 5)
    cmd = imgrec_command() + [
        "index",
        "--inventory",
        str(inventory),
        "--model",
        str(model),
        "--index",
        str(index),
    ]
    with index_lock(index):  # the run in progress
        with pytest.raises(IndexLockedError, match=f"being updated by indexer pid {os.getpid()}"):
            run_index(inventory, model, index)
        refused = CliRunner().invoke(cli, cmd[len(imgrec_command()) :])
        assert refused.exit_code == 1 and "wait for it to finish (or pass --wait)" in refused.output

        waiting = subprocess.Popen(cmd + ["--wait", "120"], stdout=subprocess.PIPE, text=True)
        lock = str((index / "indexer.lock").resolve())
        fds = Path(f"/proc/{waiting.pid}/fd")
        while waiting.poll() is None and not any(os.path.realpath(fd) == lock for fd in _listdir(fds)):
            time.sleep(0.05)  # until the second run has opened the lock file (and waits on it)
        time.sleep(0.5)
        assert waiting.poll() is None, "the second run should wait while the lock is held"
    out, _ = waiting.communicate(timeout=120)
    assert waiting.returncode == 0
    assert "added 5, updated 0, deleted 0, unchanged 0, skipped 0, failed 0 in" in out


def _listdir(d: Path) -> list[str]:
    try:
        return [str(p) for p in d.iterdir()]
    except OSError:  # the process ended
        return []


@pytest.mark.parametrize("workers", [2, 3])
def test_planning_in_several_processes_equals_one(tmp_path, model, workers):
    """Workers split the folder by top-level ranges; their joined plan is the one-process plan."""
    from indexer.db import open_database
    from indexer.job import plan_changes

    inventory, index = tmp_path / "inventory", tmp_path / "index"
    paths = make_inventory(inventory, 60)
    (inventory / "top-level.jpg").write_bytes(paths[0].read_bytes())  # a file beside the folders
    run_index(inventory, model, index)
    for p in paths[:5]:
        p.unlink()
    for p in paths[5:8]:
        write_image(p, seed=900 + paths.index(p), size=30)
    for p in paths[8:12]:
        os.utime(p, ns=(5, 5))
    make_inventory(inventory, 4, start=300)
    (inventory / "zz-new-folder").mkdir()
    write_image(inventory / "zz-new-folder" / "a.png", seed=77)

    engine = open_database(index)
    try:
        live = open_snapshot(index).generation.item_count
        one = plan_changes(engine, index, inventory, False, live, workers=1)
        many = plan_changes(engine, index, inventory, False, live, workers=workers)
    finally:
        engine.dispose()
    assert many == one
    assert (len(one.embed), len(one.delete), len(one.touch), one.unchanged) == (8, 5, 4, 53)
    s = run_index(inventory, model, index, IndexOptions(plan_workers=workers))
    assert (s.added, s.updated, s.deleted) == (5, 3, 5)
    assert_same_index(index_contents(index), full_rebuild(inventory, model, tmp_path / "ref"))


def settled_folders(index: Path) -> dict[str, tuple]:
    import sqlite3

    db = sqlite3.connect(index / "catalog.sqlite")
    try:
        return {p: (d, live, skipped) for p, d, live, skipped in db.execute("SELECT * FROM folders")}
    finally:
        db.close()


def test_settled_folders_skip_the_ledger_and_follow_every_change(tmp_path, model):
    import shutil

    inventory, index = tmp_path / "inventory", tmp_path / "index"
    paths = make_inventory(inventory, 36)
    (inventory / "boxes" / "notes.txt").write_text("not an image")
    run_index(inventory, model, index)
    settled = settled_folders(index)
    assert settled[""][1:] == (0, 0)  # the root holds only folders
    assert settled["boxes/"][1:] == (6, 1) and len(settled) == 7
    assert run_index(inventory, model, index).published == []
    assert settled_folders(index) == settled  # a no-change run writes nothing

    gone = sorted((inventory / "mugs").iterdir())
    shutil.rmtree(inventory / "mugs")  # a settled folder vanishes: its items leave
    os.utime(paths[1], ns=(7, 7))  # touched: same bytes
    s = run_index(inventory, model, index)
    assert (s.deleted, s.decoded, s.unchanged) == (len(gone), 0, 30)
    assert "mugs/" not in settled_folders(index)
    assert settled_folders(index)[f"{paths[1].parent.name}/"][0] != settled[f"{paths[1].parent.name}/"][0]
    assert_same_index(index_contents(index), full_rebuild(inventory, model, tmp_path / "ref"))

    assert CliRunner().invoke(cli, ["rollback", str(index)]).exit_code == 0
    assert settled_folders(index) == {}  # rollback rewrote ledger rows: every folder is compared again
    s = run_index(inventory, model, index)
    assert s.deleted == len(gone) and len(settled_folders(index)) == 6
    assert_same_index(index_contents(index), full_rebuild(inventory, model, tmp_path / "ref"))


def test_a_folder_with_a_failed_file_is_compared_every_run(tmp_path, model):
    inventory, index = tmp_path / "inventory", tmp_path / "index"
    make_inventory(inventory, 12)
    run_index(inventory, model, index)

    def fails_once(files, encoder, **kw):  # noqa: ANN001, ANN003, ANN202 - one file "cannot be read"
        from indexer.ingest import Decoded, EmbeddedBatch, embed_files

        for batch in embed_files(files, encoder, **kw):
            bad = [d for d in batch.ok if d.file.rel_path.endswith("new.png")]
            keep = [i for i, d in enumerate(batch.ok) if d not in bad]
            failed = [Decoded(d.file, "failed", "permission denied") for d in bad]
            yield EmbeddedBatch([batch.ok[i] for i in keep], batch.vectors[keep], batch.rejected + failed)

    write_image(inventory / "rugs" / "new.png", seed=99)
    s = run_index(inventory, model, index, embedder=fails_once)
    assert s.failed == 1 and "rugs/" not in settled_folders(index)
    s = run_index(inventory, model, index)  # retried: the folder was not settled
    assert s.added == 1 and "rugs/" in settled_folders(index)
    assert_same_index(index_contents(index), full_rebuild(inventory, model, tmp_path / "ref"))
