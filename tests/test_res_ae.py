"""The from-scratch `res-ae`: trains with augmentation, denoising and invariance; codes as configured."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from encoder import load_encoder, load_image
from encoder.augment import corrupt, random_view
from encoder.models import EncoderConfig, build_model
from encoder.train import TrainConfig, find_images, resolved, train
from imgrec.synthetic import make_catalog


def test_res_ae_shapes():
    model = build_model(EncoderConfig(arch="res-ae", image_size=32, code_dim=24, width=4))
    x = torch.rand(3, 3, 32, 32)
    assert model.encode(x).shape == (3, 24)
    assert model(x).shape == (3, 3, 32, 32)


def test_augmentations_keep_shape_and_range():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16)
    for y in (random_view(x), corrupt(x, noise_std=0.1)):
        assert y.shape == x.shape and float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert not torch.equal(random_view(x), x)


def test_arch_defaults_fill_only_unset_knobs():
    cfg = resolved(TrainConfig(arch="res-ae", noise=0.0))
    assert cfg.augment is True and cfg.noise == 0.0 and cfg.invariance > 0 and cfg.image_size == 48
    plain = resolved(TrainConfig(arch="conv-ae"))
    assert (
        plain.augment is False and plain.noise == 0.0 and plain.invariance == 0.0 and plain.image_size is None
    )


def test_res_ae_trains_and_reports_novelty(tmp_path: Path):
    inventory, _ = make_catalog(tmp_path / "cat", per_class=4, queries_per_class=0, seed=2, size=32)
    cfg = TrainConfig(arch="res-ae", image_size=16, width=4, code_dim=8, epochs=2, batch_size=8)
    result = train(inventory, tmp_path / "model", cfg)
    assert len(result.val_losses) == 2
    enc = load_encoder(tmp_path / "model")
    assert enc.dim == 8
    assert enc.config["training"]["config"]["invariance"] == resolved(dataclasses.replace(cfg)).invariance
    x = np.stack([enc.preprocess.to_array(load_image(p)) for p in find_images(inventory)[:3]])
    assert enc.embed(x).shape == (3, 8)
    pct = enc.novelty_percentile(x)
    assert pct.shape == (3,) and np.all((pct >= 0) & (pct <= 100))
