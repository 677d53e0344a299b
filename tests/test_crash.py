"""Crash safety: SIGKILL the indexer at random moments; the index must stay consistent and resume.

The kill loop forks indexer processes from a forkserver that has imported torch once, so a kill
costs well under a second instead of the seconds of start-up (`test_kill_real_command` kills the
installed `imgrec index` command itself).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pytest
from sqlalchemy.orm import Session

from indexer import IndexOptions, current_generation_id, open_snapshot, run_index
from indexer.db import open_database
from indexer.generations import current_generation, live_segment_files
from indexer.store import has_catalog
from tests.support import (
    assert_same_index,
    cli_child,
    copy_index,
    forkserver,
    full_rebuild,
    imgrec_command,
    index_contents,
    make_inventory,
    mutate_inventory,
)

pytestmark = pytest.mark.usefixtures("low_sql_variable_limit")

CI_KILLS = 32
SLOW_KILLS = 200
CHECKPOINT = 16  # files per checkpoint in the kill loop: a first build publishes ~19 and merges


@dataclass
class KillStats:
    kills: int = 0
    runs_completed: int = 0  # runs that finished before their kill came
    rounds: int = 0  # folder states indexed to completion and compared with a rebuild
    landed: Counter = field(default_factory=Counter)  # where kills landed
    seconds: Counter = field(default_factory=Counter)  # wall time: indexer runs, checks, rebuilds
    inconsistent: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        times = ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items())
        return (
            f"{self.kills} kills, {len(self.inconsistent)} inconsistent states, {self.runs_completed} runs "
            f"completed, {self.rounds} rounds; kills landed: {dict(sorted(self.landed.items()))}; {times}"
        )


def generation_files(index_dir: Path) -> tuple[set[str], set[str]]:
    """(files in segments/, files of the segments the current and kept generations list)."""
    on_disk = {f"segments/{p.name}" for p in (index_dir / "segments").glob("*")}
    engine = open_database(index_dir, migrate=False)
    try:
        with Session(engine) as session:
            live = live_segment_files(session)
    finally:
        engine.dispose()
    return on_disk, live


def current_is_a_merge(index_dir: Path) -> bool:
    engine = open_database(index_dir, migrate=False)
    try:
        with Session(engine) as session:
            return "merged_into" in (current_generation(session).run_summary or {})
    finally:
        engine.dispose()


def orphan_vectors(index_dir: Path, orphans: set[str]) -> int:
    """Vectors in the largest orphan segment (a killed merge writes more than one checkpoint)."""
    n = 0
    for rel in orphans:
        with contextlib.suppress(RuntimeError):  # a temp file cut short
            n = max(n, faiss.read_index(str(index_dir / rel)).ntotal)
    return n


def check_after_kill(
    index: Path, inventory: Path, model: Path, want: dict, scratch: Path, full: bool, gen_before: int | None
) -> str:
    """Check a killed index; return where the kill landed. Raises AssertionError if inconsistent."""
    gen_after = current_generation_id(index) if has_catalog(index) else None
    if gen_after is None:
        assert gen_before is None, "a published generation vanished"
        landed = "before the index's first generation"
    else:
        index_contents(index)  # opens the current generation verified: segments and SQLite agree
        on_disk, live = generation_files(index)
        assert live <= on_disk, f"segment files missing: {live - on_disk}"
        orphans = on_disk - live
        if orphans and not full and orphan_vectors(index, orphans) > CHECKPOINT:  # more than a publish writes
            landed = "mid-merge: merged segment written, not committed"
        elif orphans:
            landed = "mid-publish: segment written, not committed"
        elif gen_after != gen_before:
            landed = "after a merge of the killed run" if current_is_a_merge(index) else "after a checkpoint"
        else:
            landed = "before the killed run published"
    # a following run completes and equals a full rebuild (on a copy: the loop goes on killing)
    copy_index(index, scratch)
    run_index(inventory, model, scratch, IndexOptions(full=full, batch_size=8))
    assert_same_index(index_contents(scratch), want)
    return landed


def kill_loop(tmp: Path, model: Path, n_images: int, n_kills: int, seed: int) -> KillStats:
    """Index a changing folder, SIGKILLing the indexer at random moments, checking after each kill."""
    rng = np.random.default_rng(seed)
    ctx = forkserver()
    inventory, index, log = tmp / "inventory", tmp / "index", str(tmp / "indexer.log")
    make_inventory(inventory, n_images)
    next_seed = n_images
    t0 = time.perf_counter()
    want = full_rebuild(inventory, model, tmp / "rebuild")
    run_time = 3 * (time.perf_counter() - t0)  # first guess of an uninterrupted run; then measured
    stats, full, kills_in_round = KillStats(), False, 0
    while stats.kills < n_kills:
        args = ["index", "--inventory", str(inventory), "--model", str(model), "--index", str(index)]
        args += [
            "--batch-size",
            "8",
            "--checkpoint-every",
            str(CHECKPOINT),
            "--keep",
            "2",
            "--merge-factor",
            "3",
        ]
        args += ["--full"] if full else []
        # kills spread over the whole run; after several in one round, let a run finish
        kill_after = rng.uniform(0.0, run_time) if kills_in_round < 8 else None
        gen_before = current_generation_id(index) if has_catalog(index) else None
        p = ctx.Process(target=cli_child, args=(args, log))
        started = time.perf_counter()
        p.start()
        p.join(kill_after)
        if p.exitcode is None and kill_after is not None:
            p.kill()
            p.join()
            stats.seconds["killed runs"] += time.perf_counter() - started
            stats.kills += 1
            kills_in_round += 1
            t = time.perf_counter()
            try:
                landed = check_after_kill(index, inventory, model, want, tmp / "scratch", full, gen_before)
                stats.landed[landed] += 1
            except Exception as e:  # noqa: BLE001 - counted, reported, and fails the test below
                stats.inconsistent.append(f"kill {stats.kills}: {type(e).__name__}: {e}")
            stats.seconds["checks and resumes"] += time.perf_counter() - t
            continue
        p.join()
        stats.seconds["completed runs"] += time.perf_counter() - started
        if p.exitcode != 0:
            stats.inconsistent.append(f"run exited {p.exitcode}: {Path(log).read_text()[-2000:]}")
            break
        stats.runs_completed += 1
        run_time = 0.5 * run_time + 0.5 * (time.perf_counter() - started)
        try:
            assert_same_index(index_contents(index), want)
        except Exception as e:  # noqa: BLE001
            stats.inconsistent.append(f"round {stats.rounds}: {type(e).__name__}: {e}")
        stats.rounds += 1
        kills_in_round = 0
        # the next folder state: some deletes, changes, renames and additions; sometimes --full
        t = time.perf_counter()
        next_seed = mutate_inventory(inventory, rng, next_seed, n=int(rng.integers(5, 40)))
        full = bool(rng.random() < 0.25)
        want = full_rebuild(inventory, model, tmp / "rebuild")
        stats.seconds["reference rebuilds"] += time.perf_counter() - t
    return stats


def test_random_kills_leave_a_consistent_index_that_resumes(tmp_path, model):
    stats = kill_loop(tmp_path, model, n_images=300, n_kills=CI_KILLS, seed=1)
    print(f"\ncrash test: {stats}")
    assert stats.kills >= CI_KILLS
    assert not stats.inconsistent, "\n".join(stats.inconsistent)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_random_kills_long(tmp_path, model):
    stats = kill_loop(tmp_path, model, n_images=600, n_kills=SLOW_KILLS, seed=2)
    print(f"\ncrash test (long): {stats}")
    assert not stats.inconsistent, "\n".join(stats.inconsistent)


def test_kill_real_command(tmp_path, model):
    """The installed `imgrec index` command, killed after start-up at a random moment, twice."""
    rng = np.random.default_rng(3)
    inventory, index = tmp_path / "inventory", tmp_path / "index"
    make_inventory(inventory, 200)
    cmd = imgrec_command() + ["index", "--inventory", str(inventory), "--model", str(model)]
    cmd += ["--index", str(index), "--batch-size", "8", "--checkpoint-every", "16"]
    for _ in range(2):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        lock = index / "indexer.lock"
        while p.poll() is None and not (lock.exists() and f"pid {p.pid}" in lock.read_text()):
            time.sleep(0.01)  # start-up (imports) done once the run holds the lock
        time.sleep(rng.uniform(0.0, 1.0))
        p.send_signal(signal.SIGKILL)
        p.wait()
        if current_generation_id(index) is not None:
            index_contents(index)  # opens verified
    run_index(inventory, model, index)
    assert_same_index(index_contents(index), full_rebuild(inventory, model, tmp_path / "rebuild"))


@pytest.mark.parametrize(
    "die_at, new_is_current",
    [
        ("indexer.publish:make_current", False),  # segment renamed into place, SQLite not committed
        ("indexer.faiss_index:fsync_dir", False),  # renamed, directory not yet fsynced
        ("indexer.job:prune", True),  # committed, old generations not yet pruned
    ],
)
def test_kill_at_exact_points(tmp_path, die_at, new_is_current, model):
    inventory, index = tmp_path / "inventory", tmp_path / "index"
    make_inventory(inventory, 20)
    first = run_index(inventory, model, index).generation_id
    before = index_contents(index)
    make_inventory(inventory, 5, start=100)

    args = [
        "index",
        "--inventory",
        str(inventory),
        "--model",
        str(model),
        "--index",
        str(index),
        "--keep",
        "1",
    ]
    p = forkserver().Process(target=cli_child, args=(args, str(tmp_path / "log"), die_at))
    p.start()
    p.join()
    assert p.exitcode == -signal.SIGKILL

    on_disk, live = generation_files(index)
    if new_is_current:
        assert current_generation_id(index) != first and len(index_contents(index)) == 25
    else:
        assert current_generation_id(index) == first
        assert_same_index(index_contents(index), before)
        assert on_disk - live, "the killed run's FAISS file should be left as an orphan"
    summary = run_index(inventory, model, index, IndexOptions(keep_generations=1))
    assert_same_index(index_contents(index), full_rebuild(inventory, model, tmp_path / "rebuild"))
    on_disk, live = generation_files(index)
    snap = open_snapshot(index)
    try:
        current = {s.file for s in snap.segments}
    finally:
        snap.close()
    assert on_disk == live == current, (on_disk, live, current, summary)  # keep 1: the current's only


def test_orphans_are_cleaned_by_the_next_run(tmp_path, model):
    inventory, index = tmp_path / "inventory", tmp_path / "index"
    make_inventory(inventory, 10)
    run_index(inventory, model, index)
    gens = index / "segments"
    real = next(gens.glob("*.faiss"))
    (gens / ".000002.faiss.tmp-4242").write_bytes(b"half a faiss file")  # killed mid-write
    (gens / "000007.faiss").write_bytes(real.read_bytes())  # renamed, never committed
    (index / "generations").mkdir()
    (index / "generations" / "000003.faiss").write_bytes(real.read_bytes())  # schema 0001, pruned
    (index / "models" / "0123abcd.tmp-4242").mkdir()  # model copy cut short
    (index / "catalog.sqlite.tmp-4242").write_bytes(b"")  # catalog creation cut short

    summary = run_index(inventory, model, index)  # nothing changed in the folder
    assert summary.published == []
    assert sorted(p.name for p in gens.iterdir()) == [real.name]
    assert not list((index / "generations").iterdir())
    assert not list((index / "models").glob("*.tmp-*"))
    assert len(index_contents(index)) == 10


def test_stale_catalog_temp_is_removed_when_the_catalog_is_created(tmp_path, model):
    inventory, index = tmp_path / "inventory", tmp_path / "index"
    make_inventory(inventory, 3)
    index.mkdir()
    (index / "catalog.sqlite.tmp-4242").write_bytes(b"half a schema")  # first run killed mid-creation
    run_index(inventory, model, index)
    assert not list(index.glob("catalog.sqlite.tmp-*"))
    assert len(index_contents(index)) == 3
