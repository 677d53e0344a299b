"""The pretrained encoder: weights load strictly and classify correctly, batch-norm folding keeps
outputs, the exported graph gives the torch features, the reducer round-trips, the model dir embeds
without torch, and novelty separates foreign images."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import cbook

from encoder import PRETRAINED_PRESETS, load_encoder, load_image
from encoder.backbones import FeatureExtractor, backbone_names, fold_batch_norm, load_backbone
from encoder.config import CONFIG_VERSION, PretrainedConfig
from encoder.export import export_graph
from encoder.fit import GRAPH, fit_pretrained
from encoder.images import find_images
from encoder.pretrained import PretrainedEncoder, preprocess_for
from encoder.reducer import Reducer, fit_pca
from encoder.runtime import OnnxGraph
from imgrec.synthetic import make_catalog
from indexer import run_index

MILITARY_UNIFORM, SUIT, WINDSOR_TIE, MORTARBOARD = 652, 834, 906, 667  # ImageNet class ids
TINY = 64  # input side for tests: cheap forward passes and exports


@pytest.fixture(scope="module")
def backbone() -> torch.nn.Module:
    return load_backbone("efficientnet-lite0")


@pytest.fixture(scope="module")
def hopper() -> torch.Tensor:
    """matplotlib's sample photo of Grace Hopper in uniform, as the weights expect it."""
    img = load_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    pre = preprocess_for(PretrainedConfig(resize="center-crop"))
    return torch.from_numpy(pre.to_array(img)[None])  # (1, 3, 224, 224)


def test_weights_load_strictly_and_classify_the_sample_photo(backbone: torch.nn.Module, hopper: torch.Tensor):
    with torch.inference_mode():
        probs = backbone(hopper).softmax(1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert top5[0] == MILITARY_UNIFORM
    assert {SUIT, WINDSOR_TIE, MORTARBOARD} & set(top5)


def test_folding_batch_norm_keeps_outputs(backbone: torch.nn.Module, hopper: torch.Tensor):
    folded = fold_batch_norm(copy.deepcopy(backbone))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.cat([hopper, torch.rand(1, 3, 224, 224) * 2 - 1])
    with torch.inference_mode():
        assert torch.allclose(backbone(x), folded(x), atol=1e-4, rtol=1e-4)


def trunk_configs() -> list[PretrainedConfig]:
    """The graphs the presets export, at the tests' tiny size: every backbone any preset uses, in one
    ensemble graph (the same code path as each preset's own), once per distinct pooling and flip setting."""
    backbones = sorted({b for p in PRETRAINED_PRESETS.values() for b in backbone_names(p.backbone)})
    settings = sorted({(p.gem_p, p.flip) for p in PRETRAINED_PRESETS.values()})
    return [
        PretrainedConfig(backbone="+".join(backbones), gem_p=g, flip=f, image_size=TINY) for g, f in settings
    ]


@pytest.mark.parametrize("cfg", trunk_configs(), ids=lambda c: f"p{c.gem_p}-flip{int(c.flip)}")
def test_exported_graph_gives_the_torch_features(cfg: PretrainedConfig, tmp_path: Path):
    """onnxruntime and torch agree on every preset's trunks: cosine >= 0.9999 per image."""
    module = FeatureExtractor(cfg)
    graph = OnnxGraph(export_graph(module, tmp_path / "g.onnx", TINY).read_bytes())
    x = np.random.default_rng(0).uniform(-1, 1, (3, 3, TINY, TINY)).astype(np.float32)
    with torch.inference_mode():
        want = module(torch.from_numpy(x)).numpy()
    got = graph(x)
    assert got.shape == want.shape == (3, 1280 * len(backbone_names(cfg.backbone)))
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() >= 0.9999, cosine


def test_pca_reducer_round_trips():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 8)) @ rng.normal(size=(8, 40)) + 3.0  # rank-8 data in 40-d
    reducer = Reducer(fit_pca(X, 8))
    z = reducer.encode(X.astype(np.float32))
    assert z.shape == (200, 8) and reducer.code_dim == 8
    assert np.allclose(reducer.decode(z), X, atol=1e-3)
    comps = reducer.components.astype(np.float64)
    assert np.allclose(comps @ comps.T, np.eye(8), atol=1e-5)  # orthonormal
    with pytest.raises(ValueError):
        fit_pca(X[:5], 8)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A 16-d reducer fitted at 64 px on a small generated catalog (runtime onnx)."""
    root = tmp_path_factory.mktemp("pretrained")
    inventory, queries = make_catalog(root / "catalog", per_class=6, queries_per_class=1, seed=1, size=64)
    cfg = PretrainedConfig(image_size=TINY, code_dim=16)
    fit_pretrained(find_images(inventory), root / "model", cfg, "effnet-lite0-pca-test", val_fraction=0.15)
    return root / "model", inventory, queries


def test_model_dir_embeds_to_the_configured_dimension(fitted: tuple[Path, Path, Path]):
    model_dir, inventory, _ = fitted
    enc = load_encoder(model_dir)
    assert isinstance(enc, PretrainedEncoder) and enc.dim == 16
    cfg = enc.model_config
    assert cfg.graph == GRAPH and cfg.runtime == "onnx" and cfg.training["images"] == 36
    assert cfg.arch == "efficientnet-lite0" and cfg.name == "effnet-lite0-pca-test"
    x = np.stack([enc.preprocess.to_array(load_image(p)) for p in find_images(inventory)[:3]])
    codes = enc.embed(x)
    assert codes.shape == (3, 16) and codes.dtype == np.float32
    f = enc.features(x)  # (3, 1280), unit norm
    assert np.allclose(np.linalg.norm(f, axis=1), 1, atol=1e-5)
    assert np.allclose(codes, enc.reducer.encode(f), atol=1e-5)


def test_the_model_dir_graph_matches_torch(fitted: tuple[Path, Path, Path]):
    """The graph written by `train` (what index and queries run) gives the torch extractor's features."""
    model_dir, inventory, _ = fitted
    enc = load_encoder(model_dir)
    x = np.stack([enc.preprocess.to_array(load_image(p)) for p in find_images(inventory)[:4]])
    with torch.inference_mode():
        want = FeatureExtractor(enc.cfg)(torch.from_numpy(x)).numpy()
    assert ((enc.features(x) * want).sum(1) >= 0.9999).all()


def test_query_and_index_path_import_no_torch(fitted: tuple[Path, Path, Path], tmp_path: Path):
    """Loading the model, embedding, novelty and a whole index run: numpy and onnxruntime only."""
    model_dir, inventory, queries = fitted
    code = f"""
import sys
import numpy as np
from encoder import load_encoder, load_image
from indexer import run_index, open_snapshot
enc = load_encoder({str(model_dir)!r})
x = enc.preprocess.to_array(load_image({str(find_images(queries)[0])!r}))[None]
enc.embed(x), enc.novelty_percentile(x)
summary = run_index({str(inventory)!r}, {str(model_dir)!r}, {str(tmp_path / "index")!r})
snap = open_snapshot({str(tmp_path / "index")!r})
snap.search_vectors(snap.encoder.embed(x), 3)
assert summary.added == 36, summary
print("torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_an_api_worker_starts_without_torch_or_alembic(fitted: tuple[Path, Path, Path], tmp_path: Path):
    """Worker start-up pays for neither: the model runs in onnxruntime, the catalog's schema
    revision is read with one SELECT (`indexer.db.SCHEMA_REVISION`)."""
    model_dir, inventory, _ = fitted
    run_index(inventory, model_dir, tmp_path / "index")
    code = f"""
import sys
from search_api import create_app
app = create_app({{"INDEX": {str(tmp_path / "index")!r}, "RELOAD_INTERVAL": 0}})
assert app.extensions["imgrec"].status().ready
print(" ".join(m for m in ("torch", "alembic") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported at start-up: {out.stdout.strip()} {out.stderr}"


def test_novelty_is_higher_for_a_foreign_image(fitted: tuple[Path, Path, Path]):
    model_dir, inventory, queries = fitted
    enc = load_encoder(model_dir)
    own = np.stack(
        [enc.preprocess.to_array(load_image(p)) for p in find_images(queries)]
    )  # held back, same domain
    hopper = load_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    foreign = enc.preprocess.to_array(hopper)[None]
    p_own, p_foreign = enc.novelty_percentile(own), enc.novelty_percentile(foreign)
    assert p_foreign.shape == (1,) and 0.0 <= float(p_foreign[0]) <= 100.0
    assert p_foreign[0] > np.median(p_own)
    assert p_foreign[0] >= 99.0


def test_a_small_inventory_gets_a_smaller_code(fitted: tuple[Path, Path, Path], tmp_path: Path):
    _, inventory, _ = fitted
    paths = find_images(inventory)[:8]
    cfg = PretrainedConfig(image_size=TINY, runtime="torch")  # no export: the sizes are what is tested
    _, config = fit_pretrained(paths, tmp_path / "m", cfg, "small")
    # 8 images: 1 held out, folds of 2 -> the smallest fitting set has 6 images -> at most 5 components
    assert config.code_dim == 5
    assert load_encoder(tmp_path / "m").dim == 5


def test_an_ensemble_of_two_backbones_fits_and_embeds(tmp_path: Path):
    """Lite0 + Lite2 (both loaded strictly): concatenated unit features, one reducer over them."""
    inventory, _ = make_catalog(tmp_path / "catalog", per_class=3, queries_per_class=0, seed=2, size=64)
    cfg = PretrainedConfig(backbone="efficientnet-lite0+efficientnet-lite2", image_size=TINY, code_dim=8)
    fit_pretrained(find_images(inventory), tmp_path / "model", cfg, "ensemble-test", val_fraction=0.2)
    enc = load_encoder(tmp_path / "model")
    assert enc.dim == 8 and enc.model_config.feature_dim == 2 * 1280
    x = np.stack([enc.preprocess.to_array(load_image(p)) for p in find_images(inventory)[:2]])
    f = enc.features(x)
    assert f.shape == (2, 2 * 1280) and np.allclose(np.linalg.norm(f, axis=1), 1, atol=1e-5)
    assert enc.embed(x).shape == (2, 8)
    with pytest.raises(ValueError, match="unknown backbone"):
        backbone_names("efficientnet-lite0+resnet50")


def test_a_model_dir_written_before_graphs_still_loads(fitted: tuple[Path, Path, Path], tmp_path: Path):
    """Version 1 (no "version", no graph, torch at run time) is upgraded in memory and embeds the same."""
    from safetensors.numpy import load_file

    from encoder.model_dir import save_model_dir

    model_dir, inventory, _ = fitted
    new = json.loads((model_dir / "config.json").read_text())
    old = {k: new[k] for k in ("kind", "name", "backbone_sha256", "preprocess", "code_dim", "feature_dim",
                               "novelty_reference", "training")}  # fmt: skip
    old["pretrained"] = {
        k: v for k, v in new["pretrained"].items() if k not in ("reducer", "runtime", "quantize")
    }
    save_model_dir(tmp_path / "v1", load_file(model_dir / "model.safetensors"), old)
    enc_v1, enc_v2 = load_encoder(tmp_path / "v1"), load_encoder(model_dir)
    assert enc_v1.model_config.version == CONFIG_VERSION and enc_v1.model_config.runtime == "torch"
    assert enc_v1.fingerprint == (tmp_path / "v1" / "FINGERPRINT").read_text().strip()
    x = np.stack([enc_v1.preprocess.to_array(load_image(p)) for p in find_images(inventory)[:3]])
    a, b = enc_v1.embed(x), enc_v2.embed(x)
    assert np.allclose(a, b, atol=2e-3)


def test_index_reuses_the_features_train_kept(fitted: tuple[Path, Path, Path], tmp_path: Path):
    """Files `train` extracted are neither decoded nor embedded again; a changed or new file is; same vectors."""
    import shutil

    from encoder.model_dir import model_files
    from imgrec.synthetic import CLASSES, draw_item
    from indexer import open_snapshot, run_index
    from indexer.ingest import embed_files
    from indexer.scan import scan_inventory

    model_dir, inventory, _ = fitted
    inv = tmp_path / "inventory"
    shutil.copytree(inventory, inv)
    changed = sorted(inv.rglob("*.jpg"))[0]
    shape, color = list(CLASSES.values())[3]
    draw_item(shape, color, np.random.default_rng(99), 64).save(changed, quality=90)  # new bytes, new sha256
    draw_item(shape, color, np.random.default_rng(98), 64).save(changed.parent / "new.jpg", quality=90)

    enc = load_encoder(model_dir)
    assert len(enc.feature_cache) == 36
    decoded, cached = [], []
    batches = list(
        embed_files(
            scan_inventory(inv),
            enc,
            batch_size=8,
            on_decoded=lambda d: (cached if d.features is not None else decoded).append(d.file.rel_path),
        )
    )
    assert sorted(decoded) == sorted(
        [changed.relative_to(inv).as_posix(), changed.parent.relative_to(inv).as_posix() + "/new.jpg"]
    )
    assert len(cached) == 35 and all(d.width == 64 == d.height for b in batches for d in b.ok)
    # the same vectors as decoding and embedding every file
    got = {d.file.rel_path: v for b in batches for d, v in zip(b.ok, b.vectors, strict=True)}
    pre = enc.preprocess
    for rel in cached[:5]:
        want = enc.embed(pre.to_array(load_image(inv / rel))[None])[0]
        assert np.allclose(got[rel], want, atol=1e-4), rel

    # and through `imgrec index`: an index built without the cache holds the same vectors
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in model_files(model_dir):
        shutil.copy2(model_dir / name, bare / name)
    assert load_encoder(bare).feature_cache is None
    run_index(inv, model_dir, tmp_path / "with-cache")
    run_index(inv, bare, tmp_path / "without")
    a, b = open_snapshot(tmp_path / "with-cache"), open_snapshot(tmp_path / "without")
    try:
        ids = range(1, 38)  # a new index numbers its items from 1
        assert a.generation.item_count == b.generation.item_count == 37
        paths_a = {a.item(int(i)).path: a.vector(int(i)) for i in ids}
        paths_b = {b.item(int(i)).path: b.vector(int(i)) for i in ids}
        assert paths_a.keys() == paths_b.keys()
        assert max(float(np.abs(paths_a[p] - paths_b[p]).max()) for p in paths_a) < 1e-4
    finally:
        a.close(), b.close()
