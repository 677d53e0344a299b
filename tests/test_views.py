"""Trunk views and whole-photo inputs: the preprocess keeps orientation (three batchable shapes), each
trunk sees its own view inside the exported graph (onnxruntime = torch on every shape), and photos of
mixed orientations go through fit, index, the CLI query path and the API's batch search, one forward
pass per shape, each finding itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from encoder import load_encoder
from encoder.backbones import FeatureExtractor
from encoder.config import PretrainedConfig, trunk_views
from encoder.fit import GRAPH, fit_pretrained
from encoder.images import find_images
from encoder.preprocess import Preprocess, batches_by_shape, map_by_shape
from encoder.runtime import OnnxGraph
from imgrec.synthetic import make_catalog
from indexer.querying import SearchOptions, answer_images
from indexer.store import open_snapshot
from tests.support import Api, build_index

SIZE = 64  # the input's short side: cheap forward passes and exports
VIEWS = "whole@48+center@64"
LONG = round(SIZE * 4 / 3)  # the long side of a 3:4 or 4:3 input: 85
# two Lite0 trunks (cheaper than Lite0 + Lite1), one on the whole photo at 48, one on its centre at 64
VIEW_MODEL = PretrainedConfig(
    backbone="efficientnet-lite0+efficientnet-lite0",
    image_size=SIZE,
    resize="whole",
    views=VIEWS,
    code_dim=16,
)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((400, 533), (60, 80)),  # 3:4, the usual product photo
        ((533, 400), (80, 60)),  # landscape stays landscape
        ((400, 400), (60, 60)),
        ((400, 440), (60, 60)),  # nearly square: snapped to square
        ((400, 711), (60, 80)),  # 9:16: snapped to 3:4, the ends cropped
        ((711, 400), (80, 60)),
    ],
)
def test_whole_keeps_orientation_in_three_shapes(size, expected):
    pre = Preprocess(image_size=60, resize="whole")
    assert pre.output_size(*size) == expected
    img = Image.new("RGB", size, (200, 30, 30))
    assert pre.to_uint8(img).shape == (expected[1], expected[0], 3)
    assert Preprocess(image_size=60, resize="center-crop").output_size(*size) == (60, 60)


def test_batches_by_shape_groups_and_keeps_positions():
    a, b, c = (np.full(shape, i, np.uint8) for i, shape in enumerate([(4, 3, 3), (3, 4, 3), (4, 3, 3)]))
    groups = list(batches_by_shape([a, b, c]))
    assert [list(p) for p, _ in groups] == [[0, 2], [1]]
    assert groups[0][1].shape == (2, 4, 3, 3) and (groups[0][1][1] == 2).all()
    assert groups[1][1].shape == (1, 3, 4, 3)
    means = map_by_shape([a, b, c], lambda stack: stack.reshape(len(stack), -1).mean(1))
    assert means.tolist() == [0.0, 1.0, 2.0]  # one call per shape, rows back in input order


@pytest.mark.parametrize(
    ("views", "match"),
    [
        ("whole@48", "1 views for 2 trunks"),
        ("whole@48+edge@64", "CROP one of"),
        ("whole@48+center@65", "SIZE <= image_size"),
        ("whole@48+center", "CROP@SIZE"),
    ],
)
def test_bad_views_are_refused_with_a_clear_error(views, match):
    cfg = PretrainedConfig(backbone="efficientnet-lite0+efficientnet-lite1", image_size=SIZE, views=views)
    with pytest.raises(ValueError, match=match):
        trunk_views(cfg)


def test_views_default_to_the_input_for_every_trunk():
    cfg = PretrainedConfig(backbone="efficientnet-lite0+efficientnet-lite1", image_size=SIZE)
    assert trunk_views(cfg) == [("whole", SIZE), ("whole", SIZE)]


@pytest.fixture(scope="module")
def two_views() -> FeatureExtractor:
    return FeatureExtractor(VIEW_MODEL)


def test_the_view_graph_gives_the_torch_features_on_every_shape(two_views, mixed):
    """The graph `train` exported (the `mixed` model's, same config) against the torch module."""
    graph = OnnxGraph((mixed[0] / "model" / GRAPH).read_bytes())
    rng = np.random.default_rng(0)
    for shape in [(2, 3, LONG, SIZE), (1, 3, SIZE, LONG), (3, 3, SIZE, SIZE)]:
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        with torch.inference_mode():
            want = two_views(torch.from_numpy(x)).numpy()
        got = graph(x)
        assert got.shape == want.shape == (shape[0], 2 * 1280)
        cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cosine.min() >= 0.9999, (shape, cosine)


def test_a_center_view_sees_the_centre_square_and_a_whole_view_all(two_views):
    x = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, (2, 3, 86, SIZE)).astype(np.float32))
    with torch.inference_mode():
        center = two_views._pooled(two_views.trunks[1], two_views._view(x, "center", SIZE))
        by_hand = two_views._pooled(two_views.trunks[1], x[:, :, 11:75, :].contiguous())
        whole = two_views._view(x, "whole", 48)
    assert torch.allclose(center, by_hand, atol=1e-5)
    assert whole.shape == (2, 3, 64, 48)  # all of it, the short side scaled to 48


# --- photos of mixed orientations, end to end ----------------------------------------------------


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A catalog whose photos are portrait, landscape or square; a whole-view model fitted on it; its index."""
    root = tmp_path_factory.mktemp("views")
    inventory, _ = make_catalog(root / "catalog", per_class=6, queries_per_class=1, seed=3, size=SIZE)
    paths = find_images(inventory)
    for i, p in enumerate(paths):
        img = Image.open(p).convert("RGB")
        if i % 3 < 2:  # portrait or landscape, with a border in the photo's own corner colour
            size = (SIZE, 86) if i % 3 == 0 else (86, SIZE)
            img = ImageOps.pad(img, size, color=img.getpixel((0, 0)))
        img.save(p)
    fit_pretrained(paths, root / "model", VIEW_MODEL, "effnet-views-test", feature_cache=False)
    build_index(inventory, root / "model", root / "index")
    return root, inventory, paths


def test_mixed_orientations_are_fitted_indexed_and_found(mixed):
    root, inventory, paths = mixed
    enc = load_encoder(root / "model")
    shapes = {enc.preprocess.to_uint8(Image.open(p).convert("RGB")).shape for p in paths}
    assert shapes == {(LONG, SIZE, 3), (SIZE, LONG, 3), (SIZE, SIZE, 3)}
    snap = open_snapshot(root / "index")
    try:
        assert len(snap.live_ids()) == len(paths)
        images = [Image.open(p).convert("RGB") for p in paths]
        answers, _ = answer_images(snap, images, SearchOptions(k=1, group_by="none"))
    finally:
        snap.close()
    found = [a.hits[0].item.path for a in answers]
    assert found == [str(p.relative_to(inventory)) for p in paths]


def test_the_api_batch_searches_mixed_orientations(mixed, make_app, serve):
    root, inventory, paths = mixed
    picks = paths[:3]  # a portrait, a landscape and a square photo
    snap = open_snapshot(root / "index")
    try:
        answers, _ = answer_images(snap, [Image.open(p).convert("RGB") for p in picks], SearchOptions(k=1))
    finally:
        snap.close()
    assert [a.hits[0].item.path for a in answers] == [str(p.relative_to(inventory)) for p in picks]
    with Api(serve(make_app(INDEX=str(root / "index"), RELOAD_INTERVAL=0))) as api:
        files = [("images", (p.name, p.read_bytes(), "image/png")) for p in picks]
        r = api.post("/v1/search/batch", params={"k": 1}, files=files)
    assert r.status_code == 200, r.text
    assert [a["results"][0]["id"] for a in r.json()["answers"]] == [a.hits[0].id for a in answers]
