"""The pseudo-lda reducer: k-means pseudo-classes of the inventory (no labels), then a discriminant
projection after the PCA; fitted by `imgrec train`, loaded and embedded like every preset."""

from pathlib import Path

import numpy as np
import pytest

from encoder import load_encoder, load_image
from encoder.config import ModelDirError, config_to_dict, parse_model_config
from encoder.fit import PSEUDO_CLASS_MIN_SIZE, fit_pretrained
from encoder.images import find_images
from encoder.pretrained import PRESETS, PretrainedEncoder, preset
from encoder.reducer import Reducer, fit_pca, fit_pseudo_lda, spherical_kmeans
from imgrec.synthetic import make_catalog

TINY = 64


def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """3 tight clusters apart along axes 0 and 1 (120 degrees apart around the mean), and a larger spread
    along axis 2 that is the same for every cluster (PCA keeps it; it tells the clusters nothing)."""
    rng = np.random.default_rng(seed)
    centres = 5 * np.array([[1.0, 0.0], [-0.5, 0.866], [-0.5, -0.866]])
    labels = np.repeat(np.arange(3), 40)
    X = np.zeros((len(labels), 6))
    X[:, :2] = centres[labels] + rng.normal(0, 0.3, (len(labels), 2))
    X[:, 2] = rng.normal(0, 4.0, len(labels))
    X[:, 3:] = rng.normal(0, 0.1, (len(labels), 3))
    return X, labels


def test_spherical_kmeans_finds_separated_directions_and_is_deterministic():
    X, labels = _blobs()
    Z = X[:, :2]  # directions differ by cluster
    a = spherical_kmeans(Z, 3, seed=0)
    assert np.array_equal(a, spherical_kmeans(Z, 3, seed=0))
    for c in range(3):  # each cluster is one pseudo-class
        assert len(set(a[labels == c])) == 1
    assert len(set(a)) == 3


def test_the_projection_keeps_what_separates_the_pseudo_classes_not_the_largest_spread():
    X, labels = _blobs()
    st = fit_pca(X, 3)
    assert abs(st["reducer.components"][0, 2]) > 0.9  # PCA's first direction: the useless spread
    Z = Reducer(st).pca(X)
    p = fit_pseudo_lda(Z, 3, 2, seed=0)
    W = st["reducer.components"].T @ p["reducer.projection"]  # (6, 2): the whole map from the features
    assert np.abs(W[2]).max() < 0.05  # the spread along axis 2 is dropped
    assert np.allclose(np.linalg.norm(p["reducer.projection"], axis=0), 1, atol=1e-5)
    codes = (Z - p["reducer.projection_mean"]) @ p["reducer.projection"]
    # in the codes, every point's nearest other point is of its own cluster
    d = ((codes[:, None] - codes[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (labels[d.argmin(1)] == labels).all()


def test_the_reducer_encodes_through_the_projection_and_keeps_the_pca_error():
    X, _ = _blobs(1)
    st = fit_pca(X, 4)
    plain = Reducer(dict(st))
    st.update(fit_pseudo_lda(plain.pca(X), 3, 2))
    r = Reducer(st)
    assert r.code_dim == 2 and plain.code_dim == 4
    want = (plain.encode(X) - st["reducer.projection_mean"]) @ st["reducer.projection"]
    np.testing.assert_allclose(r.encode(X), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r.error(X), plain.error(X), rtol=1e-6)  # novelty: the PCA's error


@pytest.mark.parametrize(("classes", "dim"), [(1, 1), (200, 2), (3, 3)])
def test_impossible_pseudo_lda_settings_are_refused(classes, dim):
    X, _ = _blobs()
    with pytest.raises(ValueError, match="pseudo-lda"):
        fit_pseudo_lda(X[:, :4], classes, dim)


LDA_PRESETS = ("effnet-lite01-lda-qe", "effnet-lite01-whole-lda-qe")


@pytest.mark.parametrize("name", LDA_PRESETS)
def test_the_lda_presets_are_typed_and_a_bad_reducer_is_refused(name):
    cfg = preset(name)
    assert cfg.reducer == "pseudo-lda" and cfg.code_dim == 64 and cfg.query_expansion == 3
    assert cfg.pseudo_classes == 128 and cfg.lda_input_dim == 128
    assert all(p.reducer == "pca" for name, p in PRESETS.items() if name not in LDA_PRESETS)


@pytest.fixture(scope="module")
def small_inventory(tmp_path_factory) -> list[Path]:
    inventory, _ = make_catalog(tmp_path_factory.mktemp("lda") / "catalog", 16, 1, seed=2, size=64)
    return find_images(inventory)  # 96 images -> 96 // 16 = 6 pseudo-classes -> codes of at most 5-d


def _small(code_dim: int):
    return preset("effnet-lite01-lda-qe", backbone="efficientnet-lite0", image_size=TINY, runtime="torch",
                  code_dim=code_dim, lda_input_dim=12)  # fmt: skip


def test_a_pseudo_lda_model_fits_loads_and_embeds(small_inventory: list[Path], tmp_path: Path):
    paths = small_inventory
    assert len(paths) // PSEUDO_CLASS_MIN_SIZE - 1 == 5
    _, config = fit_pretrained(paths, tmp_path / "m", _small(4), "lda-test", feature_cache=False)
    assert config.code_dim == 4 and config.training["reducer"] == "pseudo-lda (6 pseudo-classes)"
    enc = load_encoder(tmp_path / "m")
    assert isinstance(enc, PretrainedEncoder) and enc.dim == 4
    assert enc.reducer.components.shape[0] == 12 and enc.reducer.projection.shape == (12, 4)
    x = np.stack([enc.preprocess.to_array(load_image(p)) for p in paths[:4]])
    f = enc.features(x)
    codes = enc.embed(x)
    assert codes.shape == (4, 4) and codes.dtype == np.float32
    np.testing.assert_allclose(codes, enc.reducer.encode(f), rtol=1e-4, atol=1e-5)
    raw = config_to_dict(config)
    assert parse_model_config(raw).pretrained.reducer == "pseudo-lda"
    raw["pretrained"]["reducer"] = "magic"
    with pytest.raises(ModelDirError, match="unknown reducer"):
        parse_model_config(raw)


def test_too_few_images_for_the_pseudo_classes_fit_the_pca_instead(small_inventory: list[Path], tmp_path: Path):
    _, config = fit_pretrained(small_inventory, tmp_path / "m", _small(8), "lda-small", feature_cache=False)
    assert config.code_dim == 8 and config.training["reducer"] == "pca"  # 6 pseudo-classes: at most 5-d
    enc = load_encoder(tmp_path / "m")
    assert enc.dim == 8 and enc.reducer.projection is None and enc.reducer.components.shape[0] == 8
