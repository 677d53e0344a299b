"""Indexing through Dask gives the index a local run gives: same items, vectors, ledger outcomes.

One LocalCluster (2 single-threaded worker processes) serves the whole module.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

pytest.importorskip("distributed", reason="dask[distributed] is not installed (pip install imgrec[dask])")

from distributed import Client, LocalCluster  # noqa: E402
from distributed.diagnostics.plugin import WorkerPlugin  # noqa: E402

from encoder.train import TrainConfig, train  # noqa: E402
from imgrec.synthetic import make_catalog  # noqa: E402
from indexer import IndexOptions, open_snapshot, run_index  # noqa: E402
from indexer.dask_embed import DaskEmbedder, dask_client  # noqa: E402
from indexer.db import Item, LedgerEntry, make_engine  # noqa: E402
from indexer.db import database_url as db_url  # noqa: E402
from indexer.ingest import IngestLimits  # noqa: E402

LIMITS = IngestLimits(max_pixels=4_000_000)
LOCAL_SUMMARY: dict = {}  # the local build's figures, for the Dask build to match


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> tuple[Path, Path]:
    """(inventory with hostile files, tiny model dir)."""
    root = tmp_path_factory.mktemp("shop")
    inventory, _ = make_catalog(root / "catalog", per_class=5, queries_per_class=0, size=48)
    hostile = inventory / "hostile"
    hostile.mkdir()
    (hostile / "not-an-image.jpg").write_bytes(b"this is text, not a JPEG\n" * 10)
    (hostile / "empty.png").write_bytes(b"")
    good = next((inventory / "mugs").iterdir()).read_bytes()
    (hostile / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (hostile / "bomb.png").write_bytes(_png_header(30_000, 30_000))  # declares 900 Mpx
    (hostile / "notes.txt").write_text("not an image extension")
    model = root / "model"
    cfg = TrainConfig(arch="conv-ae", image_size=16, filters=(8, 4, 4), epochs=1, batch_size=16, patience=1)
    train(inventory / "mugs", model, cfg)
    return inventory, model


def _png_header(w: int, h: int) -> bytes:
    """A PNG that declares w x h pixels (and holds almost no data)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def _contents(index_dir: Path) -> tuple[dict, dict, dict]:
    """(items by path, vectors by path, ledger by path) of the current generation."""
    snap = open_snapshot(index_dir, mmap=False)
    try:
        engine = make_engine(db_url(index_dir))
        with Session(engine) as s:
            items = {
                i.path: (i.id, i.label, i.sha256, i.width, i.height)
                for i in s.scalars(select(Item).where(Item.deleted_generation.is_(None)))
            }
            ledger = {e.path: (e.state, e.reason) for e in s.scalars(select(LedgerEntry))}
        engine.dispose()
        vectors = {path: snap.vector(row[0]) for path, row in items.items()}
    finally:
        snap.close()
    return items, vectors, ledger


def _assert_same_index(a: Path, b: Path) -> None:
    items_a, vec_a, ledger_a = _contents(a)
    items_b, vec_b, ledger_b = _contents(b)
    assert items_a == items_b  # same paths, ids (input order kept), hashes, sizes
    assert ledger_a == ledger_b  # same outcomes and reasons for every file, hostile ones included
    for path in vec_a:
        np.testing.assert_allclose(vec_a[path], vec_b[path], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def local_index(shop, tmp_path_factory) -> Path:
    inventory, model = shop
    out = tmp_path_factory.mktemp("local") / "index"
    summary = run_index(inventory, model, out, IndexOptions(limits=LIMITS))
    assert summary.added == 30 and summary.skipped >= 4  # 4 hostile images (+ notes.txt)
    LOCAL_SUMMARY.update(skipped=summary.skipped, failed=summary.failed, problems=sorted(summary.problems))
    return out


def test_dask_build_equals_local_build(client, shop, local_index, tmp_path):
    inventory, model = shop
    summary = run_index(
        inventory,
        model,
        tmp_path / "index",
        IndexOptions(limits=LIMITS, checkpoint_every=8),
        embedder=DaskEmbedder(client, partition_size=4, model_dir=model),
    )
    assert summary.added == 30
    assert (summary.skipped, summary.failed) == (LOCAL_SUMMARY["skipped"], LOCAL_SUMMARY["failed"])
    assert sorted(summary.problems) == LOCAL_SUMMARY["problems"]
    assert len(summary.published) > 1  # checkpoints still publish generations on the Dask path
    _assert_same_index(local_index, tmp_path / "index")
    reasons = dict(summary.problems)
    assert "hostile/bomb.png" in reasons and "hostile/truncated.jpg" in reasons


def test_dask_update_matches_local_update(client, shop, tmp_path):
    """An update (file added, changed, deleted) through Dask ends where a local update ends."""
    inventory, model = shop
    changed = tmp_path / "inventory"
    import shutil

    shutil.copytree(inventory, changed)
    local, dask = tmp_path / "local", tmp_path / "dask"
    run_index(changed, model, local, IndexOptions(limits=LIMITS))
    run_index(changed, model, dask, IndexOptions(limits=LIMITS), embedder=DaskEmbedder(client))  # pickled
    (changed / "mugs" / "mugs-000.jpg").unlink()
    shutil.copy(changed / "boxes" / "boxes-000.jpg", changed / "boxes" / "boxes-new.jpg")
    shutil.copy(changed / "rugs" / "rugs-001.jpg", changed / "tents" / "tents-002.jpg")
    a = run_index(changed, model, local, IndexOptions(limits=LIMITS))
    b = run_index(
        changed, model, dask, IndexOptions(limits=LIMITS), embedder=DaskEmbedder(client, partition_size=1)
    )
    assert (a.added, a.updated, a.deleted) == (b.added, b.updated, b.deleted) == (1, 1, 1)
    _assert_same_index(local, dask)


def test_worker_killed_mid_run_costs_a_retry(client, shop, local_index, tmp_path):
    inventory, model = shop
    marker = tmp_path / "killed-once"

    class KillOnFirstTask(WorkerPlugin):
        """Kills its worker process the first time any worker starts an embedding task."""

        def __init__(self, marker: str):
            self.marker = marker

        def transition(self, key, start, finish, **kwargs):  # noqa: ANN001, ANN003
            if finish == "executing" and "embed_partition" in str(key):
                try:
                    fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    return
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                os._exit(1)  # the worker dies while its task runs

    pids_before = set(client.run(os.getpid).values())
    client.register_plugin(KillOnFirstTask(str(marker)), name="kill-on-first-task")
    try:
        summary = run_index(
            inventory,
            model,
            tmp_path / "index",
            IndexOptions(limits=LIMITS),
            embedder=DaskEmbedder(client, partition_size=3, model_dir=model),
        )
    finally:
        client.unregister_worker_plugin("kill-on-first-task")
    assert marker.exists(), "no worker was killed: the test proved nothing"
    assert int(marker.read_text()) in pids_before
    assert summary.added == 30
    _assert_same_index(local_index, tmp_path / "index")
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the dead worker


def test_dask_client_rejects_bad_local_spec():
    with pytest.raises(ValueError, match="positive number"), dask_client("local:zero"):
        pass


def test_cli_index_on_a_dask_scheduler(client, shop, local_index, tmp_path):
    from click.testing import CliRunner

    from imgrec.cli import cli

    inventory, model = shop
    args = ["index", "--inventory", str(inventory), "--model", str(model), "--index", str(tmp_path / "index")]
    result = CliRunner().invoke(cli, [*args, "--dask", client.scheduler.address, "--json"])
    assert result.exit_code == 0, result.output
    _assert_same_index(local_index, tmp_path / "index")


def test_embedder_has_the_signature_of_embed_files_and_reports_in_order(client, shop):
    import inspect

    from encoder import load_encoder
    from indexer.ingest import embed_files
    from indexer.scan import scan_inventory

    local = inspect.signature(embed_files).parameters
    dask = inspect.signature(DaskEmbedder.__call__).parameters
    assert [p for p in local] == [p for p in dask if p != "self"]
    inventory, model = shop
    files = list(scan_inventory(inventory))
    encoder = load_encoder(model)
    seen_local, seen_dask = [], []
    local_batches = list(embed_files(files, encoder, limits=LIMITS, on_decoded=seen_local.append))
    dask_batches = list(
        DaskEmbedder(client, partition_size=7)(files, encoder, limits=LIMITS, on_decoded=seen_dask.append)
    )
    assert [(d.file.rel_path, d.outcome, d.reason) for d in seen_dask] == [
        (d.file.rel_path, d.outcome, d.reason) for d in seen_local
    ]
    np.testing.assert_allclose(
        np.concatenate([b.vectors for b in dask_batches]),
        np.concatenate([b.vectors for b in local_batches]),
        rtol=1e-4,
        atol=1e-5,
    )


def test_encoders_that_do_not_pickle_travel_as_their_model_dir(client, shop):
    """The default (pretrained) encoder holds a lock: workers load the model dir's files instead."""
    import threading

    from encoder import load_encoder
    from indexer.scan import scan_inventory

    inventory, model = shop
    encoder = load_encoder(model)
    encoder._lock = threading.Lock()  # like PretrainedEncoder
    files = [f for f in scan_inventory(inventory / "mugs")]
    with pytest.raises(ValueError, match="model_dir"):
        list(DaskEmbedder(client)(files, encoder))
    batches = list(DaskEmbedder(client, model_dir=model)(files, encoder))
    assert sum(len(b.ok) for b in batches) == len(files)
    with pytest.raises(ValueError, match="fingerprints differ"):
        other = load_encoder(model)
        other.fingerprint = "0" * 64
        list(DaskEmbedder(client, model_dir=model)(files, other))
