"""The pretrained encoder: weights load strictly and classify correctly, batch-norm folding keeps
outputs, the reducer round-trips, the model dir embeds, and novelty separates foreign images."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import cbook

from encoder import load_encoder, load_image
from encoder.pretrained import (
    PretrainedConfig,
    PretrainedEncoder,
    Reducer,
    backbone_names,
    fit_pca,
    fit_pretrained,
    fold_batch_norm,
    load_backbone,
    preprocess_for,
)
from encoder.train import find_images
from imgrec.synthetic import make_catalog

MILITARY_UNIFORM, SUIT, WINDSOR_TIE, MORTARBOARD = 652, 834, 906, 667  # ImageNet class ids


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


def test_pca_reducer_round_trips():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 8)) @ rng.normal(size=(8, 40)) + 3.0  # rank-8 data in 40-d
    reducer = Reducer(fit_pca(X, 8))
    z = reducer.encode(torch.from_numpy(X).float())
    assert z.shape == (200, 8) and reducer.code_dim == 8
    assert torch.allclose(reducer.decode(z), torch.from_numpy(X).float(), atol=1e-3)
    comps = reducer.components.double()
    assert torch.allclose(comps @ comps.T, torch.eye(8, dtype=torch.float64), atol=1e-5)  # orthonormal
    with pytest.raises(ValueError):
        fit_pca(X[:5], 8)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A 16-d reducer fitted at 64 px on a small generated catalog."""
    root = tmp_path_factory.mktemp("pretrained")
    inventory, queries = make_catalog(root / "catalog", per_class=6, queries_per_class=1, seed=1, size=64)
    cfg = PretrainedConfig(image_size=64, code_dim=16)
    fit_pretrained(find_images(inventory), root / "model", cfg, "effnet-lite0-pca-test", val_fraction=0.15)
    return root / "model", inventory, queries


def test_model_dir_embeds_to_the_configured_dimension(fitted: tuple[Path, Path, Path]):
    model_dir, inventory, _ = fitted
    enc = load_encoder(model_dir)
    assert isinstance(enc, PretrainedEncoder) and enc.dim == 16
    assert enc.config["backbone_sha256"] and enc.config["training"]["images"] == 36
    x = np.stack([enc.preprocess.to_array(load_image(p)) for p in find_images(inventory)[:3]])
    codes = enc.embed(x)
    assert codes.shape == (3, 16) and codes.dtype == np.float32
    f = enc.features(torch.from_numpy(x))  # (3, 1280), unit norm
    assert torch.allclose(f.norm(dim=1), torch.ones(3), atol=1e-5)
    assert np.allclose(codes, enc.reducer.encode(f).numpy(), atol=1e-5)


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
    _, config = fit_pretrained(paths, tmp_path / "m", PretrainedConfig(image_size=64), "small")
    # 8 images: 1 held out, folds of 2 -> the smallest fitting set has 6 images -> at most 5 components
    assert config["code_dim"] == 5
    assert load_encoder(tmp_path / "m").dim == 5


def test_an_ensemble_of_two_backbones_fits_and_embeds(tmp_path: Path):
    """Lite0 + Lite2 (both loaded strictly): concatenated unit features, one reducer over them."""
    inventory, _ = make_catalog(tmp_path / "catalog", per_class=3, queries_per_class=0, seed=2, size=64)
    cfg = PretrainedConfig(backbone="efficientnet-lite0+efficientnet-lite2", image_size=64, code_dim=8)
    fit_pretrained(find_images(inventory), tmp_path / "model", cfg, "ensemble-test", val_fraction=0.2)
    enc = load_encoder(tmp_path / "model")
    assert enc.dim == 8 and len(enc.extractor.trunks) == 2
    x = np.stack([enc.preprocess.to_array(load_image(p)) for p in find_images(inventory)[:2]])
    f = enc.features(torch.from_numpy(x))
    assert f.shape == (2, 2 * 1280) and torch.allclose(f.norm(dim=1), torch.ones(2), atol=1e-5)
    assert enc.embed(x).shape == (2, 8)
    with pytest.raises(ValueError, match="unknown backbone"):
        backbone_names("efficientnet-lite0+resnet50")
