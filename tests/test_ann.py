"""Approximate indexes (ivf, hnsw) against exact flat search, behind the same IDMap2 and job."""

from __future__ import annotations

import shutil

import faiss
import numpy as np
import pytest
from faiss.contrib.datasets import SyntheticDataset

from indexer import IndexOptions, ModelMismatchError, open_snapshot, run_index
from indexer import faiss_index as fi
from indexer.ann import (
    build_ann,
    default_nprobe,
    index_type_of,
    inner_index,
    nlist_for,
    search_params,
)

K = 10


@pytest.fixture(scope="module")
def ds() -> SyntheticDataset:
    return SyntheticDataset(32, 2000, 4000, 100, seed=1338)


def recall_at_k(I: np.ndarray, gt: np.ndarray, k: int = K) -> float:  # noqa: E741
    """Share of the true k nearest found among the k returned, averaged over queries."""
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(I, gt, strict=True)]))


_BUILT: dict[tuple, faiss.Index] = {}


def built(ds: SyntheticDataset, index_type: str, metric: str = "l2") -> faiss.Index:
    """The data set's database in an index of `index_type` (built once per module; do not modify)."""
    key = (id(ds), index_type, metric)
    if key not in _BUILT:
        index = fi.build_index(ds.d, metric, index_type, xt=ds.get_train())
        fi.add(index, np.arange(ds.nb) + 1000, ds.get_database(), metric)  # ids are not positions
        _BUILT[key] = index
    return _BUILT[key]


def exact(ds: SyntheticDataset, metric: str = "l2") -> np.ndarray:
    return fi.search(built(ds, "flat", metric), ds.get_queries(), K, metric)[1]


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize(("index_type", "knobs"), [("ivf", {"nprobe": 16}), ("hnsw", {"ef_search": 128})])
def test_recall_against_flat(ds, metric, index_type, knobs):
    index = built(ds, index_type, metric)
    assert index_type_of(index) == index_type
    _, I = fi.search(index, ds.get_queries(), K, metric, params=search_params(index_type, **knobs))  # noqa: E741
    assert recall_at_k(I, exact(ds, metric)) >= 0.9


def test_default_settings_give_useful_recall(ds):
    gt = exact(ds)
    for index_type in ("ivf", "hnsw"):
        _, I = fi.search(built(ds, index_type), ds.get_queries(), K, "l2")  # noqa: E741
        assert recall_at_k(I, gt) >= 0.8, index_type


def test_params_per_query_trade_recall_for_work(ds):
    gt = exact(ds)
    ivf = built(ds, "ivf")
    nlist = inner_index(ivf).nlist
    assert nlist == nlist_for(ds.nt) and inner_index(ivf).nprobe == default_nprobe(nlist)
    low = recall_at_k(fi.search(ivf, ds.get_queries(), K, "l2", params=search_params("ivf", nprobe=1))[1], gt)
    full = fi.search(ivf, ds.get_queries(), K, "l2", params=search_params("ivf", nprobe=nlist))[1]
    assert recall_at_k(full, gt) >= 0.999  # probing every list is exhaustive
    assert low < recall_at_k(full, gt)
    assert inner_index(ivf).nprobe == default_nprobe(nlist)  # per-query params leave the index alone

    hnsw = built(ds, "hnsw")
    r = [
        recall_at_k(
            fi.search(hnsw, ds.get_queries(), K, "l2", params=search_params("hnsw", ef_search=ef))[1], gt
        )
        for ef in (10, 256)
    ]
    assert r[0] < r[1] and r[1] >= 0.95


@pytest.mark.parametrize("index_type", ["ivf", "hnsw"])
def test_params_combine_with_a_label_filter(ds, index_type):
    index = built(ds, index_type)
    allowed = np.arange(1000, 1000 + ds.nb, 7)
    knobs = {"nprobe": 8} if index_type == "ivf" else {"ef_search": 64}
    _, I = fi.search(index, ds.get_queries(), K, "l2", allowed, search_params(index_type, **knobs))  # noqa: E741
    assert np.isin(I[I >= 0], allowed).all() and (I >= 0).any()


def test_search_params_reject_knobs_of_another_type():
    assert search_params("ivf") is None and search_params("flat") is None
    with pytest.raises(ValueError, match="nprobe"):
        search_params("hnsw", nprobe=4)
    with pytest.raises(ValueError, match="ef_search"):
        search_params("ivf", ef_search=4)
    with pytest.raises(ValueError, match="exact"):
        search_params("flat", nprobe=4)
    with pytest.raises(ValueError, match="at least 1"):
        search_params("ivf", nprobe=0)
    with pytest.raises(ValueError, match="unknown index type"):
        build_ann(8, "l2", "lsh", None)


def test_nlist_follows_the_training_count():
    assert nlist_for(0) == 1 and nlist_for(50) == 1 and nlist_for(400) == 10
    assert nlist_for(2000) == 51 and nlist_for(1_000_000) == 4000


@pytest.mark.parametrize("index_type", ["flat", "ivf", "hnsw"])
def test_incremental_add_and_reload(ds, index_type, tmp_path):
    xb = ds.get_database()
    index = fi.build_index(ds.d, "l2", index_type, xt=ds.get_train())
    fi.add(index, np.arange(2000), xb[:2000], "l2")
    fi.add(index, np.arange(2000, 3000), xb[2000:3000], "l2")  # a later batch adds more
    assert index.ntotal == 3000 and set(fi.ids_of(index)) == set(range(3000))
    path = tmp_path / "g.faiss"
    fi.write_index_atomic(index, path)
    again = fi.read_index(path)
    assert index_type_of(again) == index_type
    if index_type == "hnsw":
        assert inner_index(again).hnsw.efSearch == inner_index(index).hnsw.efSearch
    # the same vector searched for finds itself
    _, I = fi.search(again, xb[:3000:150], 1, "l2")  # noqa: E741
    assert (I[:, 0] == np.arange(0, 3000, 150)).mean() >= 0.9


def test_ivf_with_nothing_to_train_on_is_exact():
    index = fi.build_index(8, "cosine", "ivf", xt=np.zeros((0, 8), np.float32))
    assert inner_index(index).nlist == 1
    rng = np.random.default_rng(0)
    xb = rng.normal(size=(50, 8)).astype(np.float32)
    fi.add(index, np.arange(50), xb, "cosine")
    _, I = fi.search(index, xb[:5], 1, "cosine")  # noqa: E741
    assert (I[:, 0] == np.arange(5)).all()


# --- through the job: generations, catalog and snapshot ---


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    from encoder.train import TrainConfig, train
    from imgrec.synthetic import make_catalog

    root = tmp_path_factory.mktemp("ann-shop")
    inventory, _ = make_catalog(root / "catalog", per_class=8, queries_per_class=0, size=48)
    cfg = TrainConfig(arch="conv-ae", image_size=16, filters=(8, 4, 4), epochs=1, batch_size=16, patience=1)
    train(inventory / "mugs", root / "model", cfg)
    return inventory, root / "model"


def _search_all(index_dir, params=None):
    snap = open_snapshot(index_dir)
    try:
        ids = snap.live_ids()
        xq = snap.vectors(ids)
        hits = snap.search_vectors(xq, k=3, params=params)
        return snap.generation, ids, [h[0].id if h else None for h in hits]
    finally:
        snap.close()


@pytest.mark.parametrize("index_type", ["ivf", "hnsw"])
def test_job_builds_and_updates_an_approximate_index(shop, index_type, tmp_path):
    inventory, model = shop
    inv = tmp_path / "inventory"
    shutil.copytree(inventory, inv)
    index_dir = tmp_path / "index"
    run_index(inv, model, index_dir, IndexOptions(index_type=index_type))
    gen, ids, top = _search_all(index_dir)
    assert gen.index_type == index_type and len(ids) == 48
    assert np.mean([t == i for t, i in zip(top, ids, strict=True)]) >= 0.9  # each item finds itself

    shutil.copy(inv / "mugs" / "mugs-000.jpg", inv / "mugs" / "mugs-new.jpg")  # an addition only
    s = run_index(inv, model, index_dir)  # keeps the index's type
    assert s.added == 1
    knobs = {"nprobe": 64} if index_type == "ivf" else {"ef_search": 64}
    gen, ids, top = _search_all(index_dir, search_params(index_type, **knobs))
    assert gen.index_type == index_type and len(ids) == 49

    with pytest.raises(ModelMismatchError, match="--full"):
        run_index(inv, model, index_dir, IndexOptions(index_type="flat"))
    s = run_index(inv, model, index_dir, IndexOptions(index_type="flat", full=True))
    assert _search_all(index_dir)[0].index_type == "flat"


@pytest.mark.parametrize("index_type", ["ivf", "hnsw"])
def test_job_update_that_removes_items(shop, index_type, tmp_path):
    """Updates that delete or re-embed items of an approximate index keep ids mapping right."""
    _update_that_removes_items(shop, index_type, tmp_path)
    gen, ids, top = _search_all(tmp_path / "index")
    assert np.mean([t == i for t, i in zip(top, ids, strict=True)]) >= 0.9


def _update_that_removes_items(shop, index_type, tmp_path):
    inventory, model = shop
    inv = tmp_path / "inventory"
    shutil.copytree(inventory, inv)
    index_dir = tmp_path / "index"
    run_index(inv, model, index_dir, IndexOptions(index_type=index_type))
    (inv / "rugs" / "rugs-000.jpg").unlink()
    shutil.copy(inv / "boxes" / "boxes-001.jpg", inv / "tents" / "tents-001.jpg")  # changed bytes
    s = run_index(inv, model, index_dir)
    assert (s.deleted, s.updated) == (1, 1)
    gen, ids, top = _search_all(index_dir)
    assert gen.index_type == index_type and len(ids) == 47
