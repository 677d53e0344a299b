"""A full disk never publishes a damaged generation (issue 10, item 1).

The index lives on a real, small tmpfs; the real `imgrec index` command runs as a subprocess. When
the segment cannot be written the run says so in one line and exits 74, the previous generation
stays current and intact, and the next run after space is freed completes.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from indexer import current_generation_id, open_snapshot, run_index
from tests.indexing_fixtures import (
    assert_same_index,
    full_rebuild,
    imgrec_command,
    index_contents,
    make_inventory,
    make_model_dir,
)

TMPFS_SIZE = "2m"


@pytest.fixture()
def small_disk(tmp_path) -> Path:
    """A 2 MB tmpfs mounted for the test (needs root and a kernel that lets it mount)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root: the disk-full test cannot run here")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): the disk-full test cannot run")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk is full; returns it (delete it to free the space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def imgrec_index(inventory: Path, model: Path, index: Path) -> subprocess.CompletedProcess:
    cmd = imgrec_command() + [
        "index",
        "--inventory",
        str(inventory),
        "--model",
        str(model),
        "--index",
        str(index),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_disk_full_keeps_the_previous_generation(tmp_path, small_disk):
    model = make_model_dir(tmp_path / "model")
    inventory, index = tmp_path / "inventory", small_disk / "index"
    make_inventory(inventory, 30)
    gen = run_index(inventory, model, index).generation_id
    before = index_contents(index)
    make_inventory(inventory, 200, start=100)

    # Nobody holds the catalog open (SQLite removed its WAL files): on a full disk it cannot even
    # create them to open the catalog.
    assert not list(index.glob("catalog.sqlite-*"))
    filler = fill(small_disk)
    failed = imgrec_index(inventory, model, index)
    assert failed.returncode == 74, (failed.stdout, failed.stderr)
    assert error_lines(failed) == [
        f"Error: disk full while opening the catalog: previous generation {gen} stays current"
    ]
    filler.unlink()

    # A server reading the index holds the catalog open: the run gets as far as the new segment.
    reader = open_snapshot(index)
    try:
        xq = reader.vectors(reader.live_ids()[:2])
        filler = fill(small_disk)
        failed = imgrec_index(inventory, model, index)
        assert failed.returncode == 74, (failed.stdout, failed.stderr)
        assert error_lines(failed) == [
            f"Error: disk full while writing segments/000002.faiss: previous generation {gen} stays current"
        ]
        hits = reader.search_vectors(xq, k=3)  # still serving
        assert [h[0].id for h in hits] == reader.live_ids()[:2].tolist()
    finally:
        reader.close()
    assert not [p for p in (index / "segments").iterdir() if ".tmp-" in p.name]

    filler.unlink()  # space freed: the previous generation is intact, and the next run publishes all
    assert current_generation_id(index) == gen
    assert_same_index(index_contents(index), before)  # verified in full: nothing half-written is served
    again = imgrec_index(inventory, model, index)
    assert again.returncode == 0, again.stderr
    assert current_generation_id(index) > gen
    assert_same_index(index_contents(index), full_rebuild(inventory, model, tmp_path / "ref"))


def error_lines(done: subprocess.CompletedProcess) -> list[str]:
    """The command's error lines (click prints "Error: ..."); there must be no traceback."""
    assert "Traceback" not in done.stderr, done.stderr
    return [line for line in done.stderr.splitlines() if line.startswith("Error:")]
