"""Alpha query expansion: the arithmetic, the setting a model carries, and the one query path
(`indexer.querying`) answering with it on a real index, through the API and the CLI too."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from encoder import load_image
from encoder.config import (
    CONFIG_VERSION,
    ModelDirError,
    PretrainedModelConfig,
    config_to_dict,
    parse_model_config,
)
from encoder.model_dir import read_model_dir, save_model_dir
from encoder.pretrained import preprocess_for, preset
from imgrec.cli import cli
from indexer import open_snapshot, run_index
from indexer.query_expansion import QueryExpansion, expand
from indexer.querying import SearchOptions, embed, plan_search, search


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# --- the arithmetic ------------------------------------------------------------------------------


def test_expand_is_the_query_plus_neighbours_weighted_by_similarity_to_the_alpha():
    q = np.array([[2.0, 0.0, 0.0]], np.float32)  # not unit: normalised first
    v = np.array([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]], np.float32)
    got = expand(q, np.array([[0.5, 0.25]]), v, alpha=2.0)
    np.testing.assert_allclose(got, _unit(np.array([[1.0, 0.25, 0.0625]])), rtol=1e-6)
    assert got.dtype == np.float32


def test_negative_or_missing_neighbours_do_not_move_the_query():
    q = np.array([[0.0, 3.0]], np.float32)
    v = np.array([[[1.0, 0.0], [0.0, 0.0]]], np.float32)
    got = expand(q, np.array([[-0.4, np.nan]]), v, alpha=3.0)
    np.testing.assert_allclose(got, [[0.0, 1.0]], atol=1e-7)


# --- the setting a model carries -----------------------------------------------------------------


def _config(name: str) -> PretrainedModelConfig:
    cfg = preset(name)
    return PretrainedModelConfig(
        name=name,
        pretrained=cfg,
        backbone_sha256="0" * 64,
        preprocess=preprocess_for(cfg),
        code_dim=64,
        feature_dim=2560,
        graph="features.onnx",
        graph_sha256="1" * 64,
    )


def test_the_qe_preset_carries_its_expansion_and_the_others_none():
    assert QueryExpansion.of(config_to_dict(_config("effnet-lite01-pca-qe"))) == QueryExpansion(3, 3.0)
    assert not QueryExpansion.of(config_to_dict(_config("effnet-lite01-pca"))).enabled
    assert not QueryExpansion.of({"kind": "autoencoder", "model": {"arch": "conv-ae"}}).enabled


def test_the_expansion_round_trips_and_is_covered_by_the_fingerprint(tmp_path):
    qe, plain = _config("effnet-lite01-pca-qe"), _config("effnet-lite01-pca")
    written = config_to_dict(qe)
    assert written["version"] == CONFIG_VERSION
    assert parse_model_config(written).pretrained.query_expansion == 3
    old = config_to_dict(plain)
    old["version"] = 2
    del old["pretrained"]["query_expansion"], old["pretrained"]["qe_alpha"]  # written before the setting
    assert parse_model_config(old).pretrained.query_expansion == 0
    assert not QueryExpansion.of(old).enabled
    state = {"reducer.mean": np.zeros(4, np.float32)}
    assert save_model_dir(tmp_path / "a", state, qe) != save_model_dir(tmp_path / "b", state, plain)


@pytest.mark.parametrize("bad", [{"query_expansion": -1}, {"query_expansion": 2.5}, {"qe_alpha": -1.0}])
def test_a_bad_expansion_setting_is_refused_with_a_clear_error(bad):
    d = config_to_dict(_config("effnet-lite01-pca-qe"))
    d["pretrained"].update(bad)
    with pytest.raises(ModelDirError, match="query_expansion"):
        parse_model_config(d)


# --- the one query path on a real index ----------------------------------------------------------


@pytest.fixture(scope="module")
def qe_index(catalog, pretrained_model, tmp_path_factory):
    """A pretrained model (cosine index) whose config asks for alpha-QE over 2 neighbours, alpha 1."""
    root = tmp_path_factory.mktemp("qe")
    model = root / "model"
    shutil.copytree(pretrained_model, model, ignore=shutil.ignore_patterns("features"))
    state, config, _ = read_model_dir(model)
    config["pretrained"].update(query_expansion=2, qe_alpha=1.0)
    save_model_dir(model, state, config)  # a new fingerprint covering the setting
    shutil.copytree(catalog.inventory, root / "inventory")
    run_index(root / "inventory", model, root / "index")
    return root / "index", catalog.queries


@pytest.fixture(scope="module")
def snap(qe_index):
    s = open_snapshot(qe_index[0])
    yield s
    s.close()


def _reference(snap, xq, n: int, alpha: float, k: int, ids: np.ndarray, exclude: int | None = None):
    """alpha-QE by brute force over the stored vectors of `ids`: the expected answer ids."""
    ids = np.sort(ids[ids != exclude]) if exclude is not None else np.sort(ids)
    V = snap.vectors(ids).astype(np.float64)
    out = []
    for q in _unit(np.asarray(xq, np.float64)):
        s = V @ q
        top = np.argsort(-s, kind="stable")[:n]
        q2 = _unit(q + ((s[top].clip(0) ** alpha)[:, None] * V[top]).sum(0))
        out.append(ids[np.argsort(-(V @ q2), kind="stable")[:k]].tolist())
    return out


def _ids(answers) -> list[list[int]]:
    return [[h.id for h in a.hits] for a in answers]


def _queries(snap, n: int = 4, seed: int = 0) -> np.ndarray:
    ids = snap.live_ids()
    rng = np.random.default_rng(seed)
    xq = snap.vectors(ids[rng.choice(len(ids), n, replace=False)])
    return (xq + rng.normal(0, 0.3, xq.shape)).astype(np.float32)


def test_the_plan_takes_the_models_expansion_unless_turned_off(snap):
    assert plan_search(snap, SearchOptions(k=5)).expansion == QueryExpansion(2, 1.0)
    assert not plan_search(snap, SearchOptions(k=5, expand=False)).expansion.enabled


def test_search_expands_as_the_brute_force_reference(snap):
    xq = _queries(snap)
    got = _ids(search(snap, xq, plan_search(snap, SearchOptions(k=5, group_by="none"))))
    assert got == _reference(snap, xq, 2, 1.0, 5, snap.live_ids())
    plan3 = dataclasses.replace(plan_search(snap, SearchOptions(k=5, group_by="none")), expansion=QueryExpansion(3))
    assert _ids(search(snap, xq, plan3)) == _reference(snap, xq, 3, 3.0, 5, snap.live_ids())


def test_without_expansion_the_answer_is_the_plain_search(snap):
    xq = _queries(snap, seed=1)
    plain = _ids(search(snap, xq, plan_search(snap, SearchOptions(k=4, group_by="none", expand=False))))
    D, I = snap.search(xq, 4)  # noqa: E741
    assert plain == I.tolist()
    expanded = _ids(search(snap, xq, plan_search(snap, SearchOptions(k=4, group_by="none"))))
    assert expanded == _reference(snap, xq, 2, 1.0, 4, snap.live_ids())


def test_a_label_restricts_the_expansion_neighbours_too(snap):
    label = sorted(snap.labels())[0]
    xq = _queries(snap, seed=2)
    got = search(snap, xq, plan_search(snap, SearchOptions(k=3, label=label, group_by="none")))
    assert _ids(got) == _reference(snap, xq, 2, 1.0, 3, snap.label_ids(label))
    assert all(h.item.label == label for a in got for h in a.hits)


def test_an_excluded_item_is_neither_answered_nor_used_to_expand(snap):
    item = int(snap.live_ids()[5])
    xq = snap.vectors(np.array([item]))  # similar-item search: the item's own vector
    got = search(snap, xq, plan_search(snap, SearchOptions(k=4, group_by="none", exclude=item)))
    assert _ids(got) == _reference(snap, xq, 2, 1.0, 4, snap.live_ids(), exclude=item)


def test_a_model_without_expansion_searches_plainly(catalog):
    s = open_snapshot(catalog.index)  # the session's conv-ae index
    try:
        assert not plan_search(s, SearchOptions(k=3)).expansion.enabled
    finally:
        s.close()


# --- every caller answers alike -------------------------------------------------------------------


def _expected(index, queries, expand_on: bool) -> list[list[int]]:
    snap = open_snapshot(index)
    try:
        plan = plan_search(snap, SearchOptions(k=5, group_by="none", expand=expand_on))
        out = []
        for p in sorted(queries.rglob("*.jpg")):
            xq, _ = embed(snap, [snap.encoder.preprocess.to_uint8(load_image(p))], novelty=False)
            out.append(_ids(search(snap, xq, plan))[0])
        return out
    finally:
        snap.close()


def test_the_api_answers_with_the_models_expansion_unless_turned_off(qe_index, make_app):
    index, queries = qe_index
    want = {on: _expected(index, queries, on) for on in (True, False)}
    assert want[True] != want[False]  # the expansion changes some answer: the checks below can tell
    paths = sorted(queries.rglob("*.jpg"))
    for on in (True, False):
        client = make_app(INDEX=str(index), RELOAD_INTERVAL=0, QUERY_EXPANSION=on).test_client()
        got = []
        for p in paths:
            r = client.post("/v1/search", query_string={"k": 5, "group_by": "none"}, data=p.read_bytes(),
                            content_type="image/jpeg")  # fmt: skip
            assert r.status_code == 200, r.get_data(as_text=True)
            got.append([h["id"] for h in r.json["results"]])
        assert got == want[on]


def test_the_cli_query_and_eval_expand_unless_told_not_to(qe_index):
    index, queries = qe_index
    paths = sorted(queries.rglob("*.jpg"))
    for on, flag in ((True, []), (False, ["--no-query-expansion"])):
        args = ["query", *map(str, paths), "--index", str(index), "-k", "5", "--group-by", "none", "--json", *flag]
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0, r.output
        assert [[h["id"] for h in a["results"]] for a in json.loads(r.output)] == _expected(index, queries, on)
        r = CliRunner().invoke(cli, ["eval", "--index", str(index), "--queries", str(queries), "--json",
                                     "--baseline-size", "0", *flag])  # fmt: skip
        assert r.exit_code == 0, r.output
        assert json.loads(r.output[r.output.index("{") :])["query_expansion"] == (2 if on else 0)
