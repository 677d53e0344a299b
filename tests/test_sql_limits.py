"""No SQL statement carries one parameter per file: everything works with SQLite's variable limit
lowered to 50 and eight times as many files (issue 13: at 250,000 files the index was wedged).

Every connection opened in this module (and in the indexing test modules that use the
`low_sql_variable_limit` fixture, and in their child processes) has the limit set by
`sqlite3.Connection.setlimit`.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import delete, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from imgrec.cli import cli
from indexer import IndexOptions, open_snapshot, run_index
from indexer.db import Item, LedgerEntry, open_database
from indexer.ledger import ledger_report
from tests.support import (
    assert_same_index,
    full_rebuild,
    index_contents,
    make_inventory,
    mutate_inventory,
)

LIMIT = 50
N_FILES = 400

pytestmark = pytest.mark.usefixtures("low_sql_variable_limit")


def test_the_limit_is_in_force(tmp_path):
    (tmp_path / "index").mkdir()
    engine = open_database(tmp_path / "index")
    try:
        with Session(engine) as session, pytest.raises(OperationalError, match="too many SQL variables"):
            session.execute(select(Item).where(Item.id.in_(list(range(LIMIT + 1)))))
    finally:
        engine.dispose()


def test_every_kind_of_run_with_eight_times_more_files_than_the_limit(tmp_path, model):
    inventory, index = tmp_path / "inventory", tmp_path / "index"
    paths = make_inventory(inventory, N_FILES)
    opts = IndexOptions(batch_size=32, checkpoint_every=64)
    first = run_index(inventory, model, index, opts)
    assert first.added == N_FILES and first.merged >= 0
    assert run_index(inventory, model, index).published == []

    for p in paths:  # a restore or a copy: every mtime changes, no byte does
        os.utime(p, ns=(1, 1))
    touched = run_index(inventory, model, index)
    assert (touched.decoded, touched.unchanged, touched.published) == (0, N_FILES, [])

    rng = np.random.default_rng(5)
    mutate_inventory(inventory, rng, 10_000, n=60)  # 60 each: deleted, rewritten, renamed, added
    s = run_index(inventory, model, index, opts)
    assert (s.deleted, s.updated) == (120, 60)
    assert_same_index(index_contents(index), full_rebuild(inventory, model, tmp_path / "ref"))
    before_full = index_contents(index)

    for p in inventory.rglob("*.*"):  # every mtime changes again, and a rebuild is asked for
        os.utime(p, ns=(2, 2))
    s = run_index(inventory, model, index, IndexOptions(full=True))
    assert s.updated == N_FILES + 60 - 60 and len(s.published) == 1
    assert_same_index(index_contents(index), full_rebuild(inventory, model, tmp_path / "ref"))

    rolled = CliRunner().invoke(cli, ["rollback", str(index)])
    assert rolled.exit_code == 0, rolled.output
    assert_same_index(index_contents(index), before_full)
    s = run_index(inventory, model, index)  # the files' new mtimes: hashed, same bytes, ledger only
    assert (s.decoded, s.unchanged, s.published) == (0, N_FILES, [])
    compacted = CliRunner().invoke(cli, ["compact", str(index), "--all"])
    assert compacted.exit_code == 0, compacted.output
    assert_same_index(index_contents(index), full_rebuild(inventory, model, tmp_path / "ref"))

    snap = open_snapshot(index, verify="full")
    try:
        ids = snap.live_ids()
        assert len(snap.items(ids.tolist())) == len(ids) == N_FILES
        xq = snap.vectors(ids[:8])
        assert [len(h) for h in snap.search_vectors(xq, k=100)] == [100] * 8  # 800 hits, one lookup
        label = snap.items([int(ids[0])])[int(ids[0])].label
        assert len(snap.label_ids(label)) == snap.labels()[label] > LIMIT
        hits = snap.search_vectors(xq, k=100, label=label)[0]
        assert len(hits) == snap.labels()[label] and {h.item.label for h in hits} == {label}
    finally:
        snap.close()
    report = ledger_report(index)
    assert report["states"]["embedded"] == N_FILES


def test_a_ledger_that_lost_rows_is_reconciled_through_the_items(tmp_path, model):
    """The plan checks the ledger's live count against the generation; when they differ it plans
    against the ledger joined with the items (still streamed, still chunked)."""
    inventory, index = tmp_path / "inventory", tmp_path / "index"
    paths = make_inventory(inventory, 200)
    run_index(inventory, model, index)
    engine = open_database(index)
    with engine.begin() as conn:  # 80 files forgotten by the ledger; 20 of them gone from disk too
        lost = [p.relative_to(inventory).as_posix() for p in paths[:80]]
        conn.execute(delete(LedgerEntry).where(LedgerEntry.path.in_(lost[:40])))
        conn.execute(delete(LedgerEntry).where(LedgerEntry.path.in_(lost[40:])))
    engine.dispose()
    for p in paths[:20]:
        p.unlink()
    s = run_index(inventory, model, index)
    assert (s.deleted, s.updated) == (20, 60)
    assert_same_index(index_contents(index), full_rebuild(inventory, model, tmp_path / "ref"))
    assert run_index(inventory, model, index).published == []
