"""A full disk never publishes a damaged generation (issue 10, item 1).

The index lives on a real, small tmpfs; the real `imgrec index` command runs as a subprocess. When
the segment cannot be written the run says so in one line and exits 74, the previous generation
stays current and intact, and the next run after space is freed completes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from indexer import current_generation_id, open_snapshot, run_index
from tests.support import (
    assert_same_index,
    fill,
    full_rebuild,
    imgrec_command,
    index_contents,
    make_inventory,
)


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


def test_disk_full_keeps_the_previous_generation(tmp_path, small_disk, model):
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
