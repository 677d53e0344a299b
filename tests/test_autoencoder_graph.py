"""Autoencoders run from their exported graph (onnxruntime, no torch) give torch's codes and novelty."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from encoder import load_encoder
from encoder.config import EncoderConfig
from encoder.export import export_autoencoder
from encoder.model_dir import ModelDirError, model_files, save_model_dir
from encoder.models import build_model, code_dim
from encoder.preprocess import Preprocess

SIZE = 32


def write_dirs(tmp_path, arch: str):
    """The same random autoencoder written twice: with its graph (as `imgrec train` writes it) and
    without (as written before graphs existed: torch rebuilds it)."""
    torch.manual_seed(0)
    cfg = EncoderConfig(arch=arch, image_size=SIZE, code_dim=24, filters=(8, 8, 4), width=8)
    model = build_model(cfg).eval()
    config = {
        "kind": "autoencoder",
        "model": cfg.to_dict(),
        "preprocess": Preprocess(image_size=SIZE).to_dict(),
        "code_dim": code_dim(model, SIZE),
    }
    save_model_dir(tmp_path / "torch", model.state_dict(), config)
    graph, sha = export_autoencoder(model, tmp_path / "onnx", SIZE)
    save_model_dir(tmp_path / "onnx", model.state_dict(), {**config, "graph": graph, "graph_sha256": sha})
    return tmp_path / "onnx", tmp_path / "torch"


@pytest.mark.parametrize("arch", ["simple-ae", "conv-ae", "res-ae"])
def test_graph_and_torch_agree(tmp_path, arch):
    with_graph, without = write_dirs(tmp_path, arch)
    a, b = load_encoder(with_graph), load_encoder(without)
    assert (a.model_config.runtime, b.model_config.runtime) == ("onnx", "torch")
    assert a.fingerprint != b.fingerprint  # the graph is part of what the fingerprint covers
    x = np.random.default_rng(1).random((13, 3, SIZE, SIZE), dtype=np.float32)  # not a multiple of 8
    ca, cb = a.embed(x), b.embed(x)
    assert ca.shape == cb.shape == (13, a.dim)
    cos = (ca * cb).sum(1) / np.linalg.norm(ca, axis=1) / np.linalg.norm(cb, axis=1)
    assert cos.min() >= 0.9999
    np.testing.assert_allclose(a.novelty(x), b.novelty(x), rtol=1e-4, atol=1e-7)
    assert a.novelty(x[:3]).shape == (3,)  # another batch: not the kept one


def test_a_graph_model_loads_and_embeds_without_torch(tmp_path):
    with_graph, _ = write_dirs(tmp_path, "conv-ae")
    code = (
        "import sys, numpy as np\n"
        "from encoder import load_encoder\n"
        f"e = load_encoder({str(with_graph)!r})\n"
        "x = np.zeros((2, 3, 32, 32), np.float32)\n"
        "print(e.embed(x).shape == (2, e.dim), e.novelty(x).shape == (2,), 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "False"]


def test_a_changed_graph_is_refused(tmp_path):
    with_graph, _ = write_dirs(tmp_path, "conv-ae")
    assert "autoencoder.onnx" in model_files(with_graph)  # copied into every index with the model
    graph = with_graph / "autoencoder.onnx"
    graph.write_bytes(graph.read_bytes()[:-1] + b"\0")
    with pytest.raises(ModelDirError, match="autoencoder.onnx changed"):
        load_encoder(with_graph)


def test_a_graph_without_its_sha256_is_refused(tmp_path):
    with_graph, _ = write_dirs(tmp_path, "conv-ae")
    config = json.loads((with_graph / "config.json").read_text())
    del config["graph_sha256"]
    save_model_dir(with_graph, {}, config)  # a dir written by hand, fingerprint and all
    with pytest.raises(ModelDirError, match="needs its sha256"):
        load_encoder(with_graph)


def test_an_index_built_with_a_graph_model_answers_from_its_copy(tmp_path):
    from PIL import Image

    from indexer import open_snapshot, run_index
    from tests.support import make_inventory, make_model_dir

    model = make_model_dir(tmp_path / "model", graph=True)
    photos = make_inventory(tmp_path / "photos", 12)
    assert run_index(tmp_path / "photos", model, tmp_path / "index").added == 12
    snap = open_snapshot(tmp_path / "index")
    try:
        copy = tmp_path / "index" / "models" / snap.generation.model_fingerprint
        assert (copy / "autoencoder.onnx").is_file()
        assert snap.encoder.model_config.runtime == "onnx"
        pre = snap.encoder.preprocess
        for path in photos[:4]:  # each photo, embedded again by the copy, finds itself first
            with Image.open(path) as im:
                batch = pre.normalize(pre.to_uint8(im.convert("RGB"))[None])
            top = snap.search_images(batch, k=1)[0][0]
            assert top.item.path.endswith(path.name)
    finally:
        snap.close()
