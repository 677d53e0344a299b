"""An index written at schema 0001 (one `generations/NNNNNN.faiss` per generation) upgrades in place
to segments and products (0002, 0003), and an upgrade killed half-way leaves a usable 0001 catalog.

The 0001 index is built as the 0001 writer built it: the catalog created by migration 0001, rows
inserted with SQL, FAISS files written by `faiss.write_index`, vectors from the real encoder.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
from pathlib import Path

import faiss
import numpy as np
import pytest
from click.testing import CliRunner

from encoder import load_encoder
from encoder.model_dir import copy_model_dir
from imgrec.cli import cli
from indexer import current_generation_id, open_snapshot, run_index
from indexer.faiss_index import prepare
from indexer.ingest import embed_files
from indexer.migrate import current_revision, head_revision, upgrade
from indexer.scan import scan_inventory
from tests.support import (
    assert_same_index,
    cli_child,
    forkserver,
    full_rebuild,
    index_contents,
    make_inventory,
)

pytestmark = pytest.mark.usefixtures("low_sql_variable_limit")

NOW = "2026-11-30 12:00:00.000000"


def build_0001_index(inventory: Path, model: Path, index: Path) -> dict[str, np.ndarray]:
    """Three generations as schema 0001 wrote them: 1 (pruned: 20 items), 2 (kept: +6 items),
    3 (current: 2 items deleted, their files gone). Returns the current contents (path -> vector)."""
    index.mkdir(parents=True)
    url = f"sqlite:///{index / 'catalog.sqlite'}"
    upgrade(url, "0001")
    enc = load_encoder(model)
    copy_model_dir(model, index / "models" / enc.fingerprint)
    files = list(scan_inventory(inventory))
    decoded, vectors = [], []
    for batch in embed_files(files, enc, batch_size=8):
        decoded += batch.ok
        vectors.append(batch.vectors)
    xb = prepare(np.concatenate(vectors), "cosine")
    ids = np.arange(1, len(decoded) + 1, dtype=np.int64)
    members = {1: ids[:20], 2: ids[:26], 3: np.setdiff1d(ids[:26], [4, 9])}
    db = sqlite3.connect(index / "catalog.sqlite")
    with db:
        for gen, status in ((1, "pruned"), (2, "kept"), (3, "current")):
            gids = members[gen]
            path = index / "generations" / f"{gen:06d}.faiss"
            if status != "pruned":
                path.parent.mkdir(exist_ok=True)
                flat = faiss.IndexIDMap2(faiss.IndexFlatIP(enc.dim))
                flat.add_with_ids(xb[gids - 1], gids)
                faiss.write_index(flat, str(path))
            db.execute(
                "INSERT INTO generations (id, status, faiss_file, item_count, ids_sha256, model_fingerprint, "
                "model_config, dim, metric, index_type, inventory_root, parent_id, run_summary, eval_figures, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'cosine', 'flat', ?, ?, '{}', NULL, ?)",
                (gen, status, f"generations/{gen:06d}.faiss", len(gids),
                 hashlib.sha256(np.sort(gids).tobytes()).hexdigest(), enc.fingerprint, json.dumps(enc.config),
                 enc.dim, str(inventory.resolve()), gen - 1 or None, NOW),
            )  # fmt: skip
        for i, d in zip(ids.tolist(), decoded, strict=True):
            if i > 26:
                continue  # files the 0001 index had not seen yet
            added = 1 if i <= 20 else 2
            deleted = 3 if i in (4, 9) else None
            db.execute(
                "INSERT INTO items (id, path, label, sha256, size, mtime_ns, width, height, added_generation, "
                "deleted_generation, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (i, d.file.rel_path, d.file.label, d.sha256, d.size, d.mtime_ns, d.width, d.height, added,
                 deleted, NOW, NOW),
            )  # fmt: skip
            state, reason = ("deleted", "file no longer in the inventory") if deleted else ("embedded", None)
            db.execute(
                "INSERT INTO ledger (path, state, reason, size, mtime_ns, item_id, generation_id, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (d.file.rel_path, state, reason, d.size, d.mtime_ns, i, deleted or added, NOW),
            )  # fmt: skip
            if i > 20:
                db.execute(
                    "INSERT INTO generation_changes (generation_id, item_id, change) VALUES (2, ?, 'added')",
                    (i,),
                )
            if deleted:
                db.execute(
                    "INSERT INTO generation_changes (generation_id, item_id, change) VALUES (3, ?, 'deleted')",
                    (i,),
                )
        db.execute("INSERT INTO index_state (id, current_generation_id, updated_at) VALUES (1, 3, ?)", (NOW,))
    db.close()
    gone = [d for i, d in zip(ids.tolist(), decoded, strict=True) if i in (4, 9)]
    for d in gone:
        Path(d.file.abs_path).unlink()
    return {d.file.rel_path: xb[i - 1] for i, d in zip(ids.tolist(), decoded, strict=True) if i in members[3]}


@pytest.fixture()
def legacy(tmp_path, model):
    inventory, index = tmp_path / "inventory", tmp_path / "index"
    make_inventory(inventory, 30)  # the 0001 index saw 26 of them; 4 are new since
    want = build_0001_index(inventory, model, index)
    assert current_revision(f"sqlite:///{index / 'catalog.sqlite'}") == "0001"
    return inventory, model, index, want


def test_an_index_written_at_0001_upgrades_in_place(legacy, tmp_path):
    inventory, model, index, was_current = legacy
    files_before = {p: p.read_bytes() for p in (index / "generations").iterdir()}
    refused = CliRunner().invoke(cli, ["info", str(index)])  # a reader refuses an old schema, changes nothing
    assert refused.exit_code == 1 and "catalog schema is not up to date" in refused.output, refused.output
    assert current_revision(f"sqlite:///{index / 'catalog.sqlite'}") == "0001"

    engine_url = f"sqlite:///{index / 'catalog.sqlite'}"
    upgrade(engine_url)
    assert current_revision(engine_url) == head_revision()
    assert {p: p.read_bytes() for p in (index / "generations").iterdir()} == files_before  # read, not moved
    verified = CliRunner().invoke(cli, ["verify", str(index)])  # the upgrade hashed every file it kept
    assert verified.exit_code == 0 and "2 current or kept generations, 2 segment files" in verified.output
    assert_same_index(index_contents(index), was_current)  # verified in full: ids, counts, segment_id
    db = sqlite3.connect(index / "catalog.sqlite")  # through 0003: products, no item linked to one
    try:
        assert db.execute("SELECT count(*) FROM items WHERE product_id IS NOT NULL").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM products").fetchone() == (0,)
    finally:
        db.close()
    snap = open_snapshot(index)
    try:
        assert [s.file for s in snap.segments] == ["generations/000003.faiss"]
        assert (
            snap.segments[0].sha256
            == hashlib.sha256(files_before[index / "generations/000003.faiss"]).hexdigest()
        )
        assert sum(snap.labels().values()) == 24
    finally:
        snap.close()

    out = CliRunner().invoke(cli, ["rollback", str(index)])  # to the kept 0001 generation
    assert out.exit_code == 0, out.output
    assert current_generation_id(index) == 2 and len(index_contents(index)) == 26

    s = run_index(inventory, model, index)  # reconciles: 2 deleted again, 4 new
    assert (s.added, s.deleted) == (4, 2)
    snap = open_snapshot(index)  # built on a 0001 generation: its summary and checksum filled in
    try:
        assert snap.generation.ids_checksum is not None and sum(snap.labels().values()) == 28
    finally:
        snap.close()
    assert_same_index(index_contents(index), full_rebuild(inventory, model, tmp_path / "ref"))
    assert [p.name for p in (index / "generations").iterdir()] == ["000002.faiss"]  # a segment like any other
    out = CliRunner().invoke(cli, ["compact", str(index), "--all", "--keep", "1"])
    assert out.exit_code == 0 and "merged 1 time(s)" in out.output, out.output
    assert not list((index / "generations").iterdir())  # merged away, and no kept generation lists it
    assert_same_index(index_contents(index), full_rebuild(inventory, model, tmp_path / "ref"))
    assert "nothing to merge" in CliRunner().invoke(cli, ["compact", str(index), "--all"]).output


def test_a_killed_upgrade_leaves_a_usable_0001_catalog(legacy, tmp_path):
    inventory, model, index, was_current = legacy
    args = ["index", "--inventory", str(inventory), "--model", str(model), "--index", str(index)]
    # dies while the migration hashes the generation files: after its DDL, before its commit
    p = forkserver().Process(target=cli_child, args=(args, str(tmp_path / "log"), "hashlib:sha256"))
    p.start()
    p.join()
    assert p.exitcode == -signal.SIGKILL
    url = f"sqlite:///{index / 'catalog.sqlite'}"
    assert current_revision(url) == "0001"
    db = sqlite3.connect(index / "catalog.sqlite")
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        columns = {r[1] for r in db.execute("PRAGMA table_info(items)")}
        assert "segments" not in tables and "segment_id" not in columns  # the DDL was rolled back too
        assert "products" not in tables and "product_id" not in columns  # 0003 ran in the same transaction
        assert db.execute("SELECT count(*) FROM items WHERE deleted_generation IS NULL").fetchone() == (24,)
    finally:
        db.close()

    s = run_index(inventory, model, index)  # upgrades for real this time, then adds the 4 new files
    assert (s.added, s.deleted, s.unchanged) == (4, 0, 24)
    assert_same_index(index_contents(index), full_rebuild(inventory, model, tmp_path / "ref"))
