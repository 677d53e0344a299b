"""Filtered and grouped search on a real index (segments with a deletion set, SQLite products).

Property: over random catalogs and random filter expressions, filtered search returns exactly the
top-k of a brute-force scan over the items the SQL reference (`filter_sql`) selects, by both plans
(direct scoring of few matches, FAISS ID selector for many); grouped search returns the first k
distinct products of that ranking.
"""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session
from test_filter_backends import by_type, expressions, strings

from indexer import IndexOptions, filtered_search, open_snapshot, run_index
from indexer.db import Item, open_database
from indexer.filter_sql import item_condition
from indexer.filters import FilterError, to_text
from indexer.querying import SearchOptions, plan_search, search
from tests.support import ProductRow, insert_catalog, make_inventory


@pytest.fixture(scope="module")
def index(tmp_path_factory, model):
    """40 images indexed, then 6 deleted and 6 added: two segments, one with a deletion set."""
    root = tmp_path_factory.mktemp("filtered")
    inventory, index = root / "inventory", root / "index"
    files = make_inventory(inventory, 40)
    run_index(inventory, model, index, IndexOptions(compact=False))
    for f in files[::7]:
        f.unlink()
    make_inventory(inventory, 6, start=100)
    run_index(inventory, model, index, IndexOptions(compact=False))
    snap = open_snapshot(index)
    assert len(snap.parts) == 2 and any(len(p.deleted) for p in snap.parts)
    snap.close()
    engine = open_database(index)
    yield index, engine
    engine.dispose()


@st.composite
def shop(draw, live_ids: list[int]):
    names = draw(st.lists(st.sampled_from(["color", "size", "organic"]), unique=True, max_size=3))
    types = {n: draw(st.sampled_from(["string", "number", "boolean"])) for n in names}
    products = []
    for i in range(draw(st.integers(1, 10))):
        attrs = {n: draw(by_type[t]) for n, t in types.items() if draw(st.booleans())}
        products.append(
            ProductRow(f"P{i}", draw(st.none() | strings), None, draw(st.none() | by_type["number"]), attrs)
        )
    links = {i: draw(st.none() | st.integers(1, len(products))) for i in live_ids}
    return types, products, links


def store_shop(engine, types, products, links) -> None:
    with Session(engine) as session, session.begin():
        session.execute(sa.text("UPDATE items SET product_id = NULL"))
        for table in ("product_attributes", "attribute_types", "products"):
            session.execute(sa.text(f"DELETE FROM {table}"))
        insert_catalog(session, types, products, [])
        if not links:
            return
        session.execute(
            sa.update(Item.__table__)
            .where(Item.__table__.c.id == sa.bindparam("iid"))
            .values(product_id=sa.bindparam("pid")),
            [{"iid": i, "pid": p} for i, p in links.items()],
        )


def brute_force(snap, xq, ids) -> tuple[np.ndarray, np.ndarray]:
    """Similarities of every candidate, best first (ties by id), for each query."""
    xb = snap.vectors(ids)
    scores = xq @ xb.T  # cosine: both normalised
    order = np.lexsort((np.broadcast_to(ids, scores.shape), -scores), axis=1)
    return np.take_along_axis(scores, order, 1), ids[order]


@pytest.mark.parametrize("plan", ["direct", "selector"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_filtered_search_equals_brute_force_over_the_matches(index, plan, data, monkeypatch):
    if plan == "selector":
        monkeypatch.setattr(filtered_search, "DIRECT_MAX", 0)
        monkeypatch.setattr(filtered_search, "DIRECT_SHARE", 0.0)
    index_dir, engine = index
    snap = open_snapshot(index_dir)
    try:
        live = snap.live_ids()
        types, products, links = data.draw(shop(live.tolist()))
        store_shop(engine, types, products, links)
        expr = data.draw(expressions(types, [p.key for p in products]))
        k = data.draw(st.integers(1, 12))
        with Session(engine) as session:
            ids = np.asarray(
                session.scalars(
                    sa.select(Item.id).where(Item.deleted_generation.is_(None), item_condition(expr, types))
                ).all(),
                np.int64,
            )
        ids = np.sort(ids[np.isin(ids, live)])
        xq = np.random.default_rng(k).standard_normal((3, snap.generation.dim)).astype(np.float32)
        xq /= np.linalg.norm(xq, axis=1, keepdims=True)

        snap._catalog_view = None  # the shop changed: read it again
        p = plan_search(snap, SearchOptions(k=k, filter=to_text(expr), group_by="none"))
        assert np.array_equal(p.allowed, ids)
        answers = search(snap, xq, p)
        want_scores, want_ids = brute_force(snap, xq, ids)
        for q, a in enumerate(answers):
            got = [r.hit.id for r in a.results]
            assert len(got) == min(k, len(ids)) and a.exact and not a.grouped
            assert set(got) <= set(ids.tolist())
            np.testing.assert_allclose(
                [r.hit.score for r in a.results], want_scores[q, : len(got)], atol=1e-5
            )

        grouped = search(
            snap, xq, plan_search(snap, SearchOptions(k=k, filter=to_text(expr), group_by="product"))
        )
        for q, a in enumerate(grouped):
            firsts, seen = [], set()
            for i in want_ids[q]:
                key = ("p", links[int(i)]) if links[int(i)] is not None else ("i", int(i))
                if key not in seen:
                    seen.add(key)
                    firsts.append(int(i))
            want = firsts[:k]
            got = [r.hit.id for r in a.results]
            assert len(got) == len(want)
            np.testing.assert_allclose(
                [r.hit.score for r in a.results],
                [want_scores[q, list(want_ids[q]).index(i)] for i in want],
                atol=1e-5,
            )
            for r in a.results:
                pid = links[r.hit.id]
                assert (r.product is None) == (pid is None)
                if pid is not None:
                    assert r.product.product_id == products[pid - 1].key
                    others = {i for i, p in links.items() if p == pid} - {r.hit.id}
                    assert {im.id for im in r.images} == others
    finally:
        snap.close()


def test_a_bad_filter_points_at_the_position_and_names_the_attributes(index):
    index_dir, engine = index
    store_shop(engine, {"color": "string"}, [ProductRow("A", attributes={"color": "red"})], {})
    snap = open_snapshot(index_dir)
    try:
        with pytest.raises(FilterError) as e:
            plan_search(snap, SearchOptions(filter='colour = "red"'))
        assert e.value.column == 1 and "color" in e.value.known_names
        with pytest.raises(ValueError, match="group_by"):
            plan_search(snap, SearchOptions(group_by="brand"))
    finally:
        snap.close()
