"""Training lowers validation loss, is reproducible, and a reloaded model embeds identically."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from encoder import load_encoder
from encoder.model_dir import ModelDirError
from encoder.train import train
from tests.support import TINY_TRAIN


@pytest.mark.parametrize("arch", ["simple-ae", "conv-ae"])
def test_training_lowers_validation_loss_and_writes_model_dir(tmp_path, arch, catalog):
    inventory = catalog.inventory
    cfg = dataclasses.replace(TINY_TRAIN, arch=arch, epochs=5, patience=5, code_dim=32)
    result = train(inventory, tmp_path / "m", cfg)
    assert min(result.val_losses) < result.val_losses[0]
    files = ("model.safetensors", "config.json", "FINGERPRINT", "autoencoder.onnx", "loss_curve.png")
    for name in (*files, "reconstructions.png"):
        assert (tmp_path / "m" / name).is_file(), name
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model"]["arch"] == arch
    assert config["graph"] == "autoencoder.onnx"
    assert load_encoder(tmp_path / "m").model_config.runtime == "onnx"
    assert config["training"]["best_epoch"] == result.best_epoch
    # originals above reconstructions: two rows of square tiles
    with Image.open(tmp_path / "m" / "reconstructions.png") as im:
        assert im.width == im.height // 2 * min(8, result.n_val)


def test_saved_model_reloads_and_embeds_bit_identically(tmp_path, catalog):
    inventory = catalog.inventory
    train(inventory, tmp_path / "m", TINY_TRAIN)
    a, b = load_encoder(tmp_path / "m"), load_encoder(tmp_path / "m")
    x = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    va, vb = a.embed(x), b.embed(x)
    assert va.dtype == np.float32 and va.shape == (4, a.dim)
    assert np.array_equal(va, vb)
    assert a.fingerprint == b.fingerprint == (tmp_path / "m" / "FINGERPRINT").read_text().strip()


def test_same_seed_same_model(tmp_path, catalog):
    inventory = catalog.inventory
    cfg = dataclasses.replace(TINY_TRAIN, epochs=2)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(inventory, tmp_path / name, dataclasses.replace(cfg, seed=seed))
    weights = {n: (tmp_path / n / "model.safetensors").read_bytes() for n in "abc"}
    assert weights["a"] == weights["b"] != weights["c"]


def test_tampered_model_dir_is_refused(tmp_path, catalog):
    inventory = catalog.inventory
    train(inventory, tmp_path / "m", dataclasses.replace(TINY_TRAIN, epochs=1))
    cfg = tmp_path / "m" / "config.json"
    cfg.write_text(cfg.read_text().replace('"image_size": 32', '"image_size": 64', 1))
    with pytest.raises(ModelDirError, match="fingerprint"):
        load_encoder(tmp_path / "m")
