"""The typed, versioned model config: every kind round-trips, version 1 dirs load, bad ones fail in one
clear line, and `/v1/stats` and `imgrec info` report each kind's real architecture."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from encoder import (
    CONFIG_VERSION,
    Encoder,
    ModelDirError,
    Preprocess,
    load_encoder,
    parse_model_config,
    register_kind,
)
from encoder.config import (
    AutoencoderModelConfig,
    OtherModelConfig,
    PretrainedModelConfig,
    config_to_dict,
)
from encoder.model_dir import save_model_dir
from imgrec.cli import cli
from indexer import run_index


class MeanColour(Encoder):
    """A kind registered outside encoder/: the mean colour of the image; no novelty reference."""

    kind = "test-config-mean-colour"

    def __init__(self, state_dict: dict, config: dict, fingerprint: str):
        self.config, self.fingerprint = config, fingerprint
        self.preprocess = Preprocess.from_dict(config["preprocess"])
        self.dim = 3

    def _embed(self, x: np.ndarray) -> np.ndarray:
        return x.mean((2, 3)) - 0.5  # (B, 3)


register_kind(MeanColour.kind, MeanColour)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("other") / "model"
    config = {"kind": MeanColour.kind, "preprocess": Preprocess(image_size=16).to_dict(), "code_dim": 3}
    save_model_dir(path, {"unused": np.zeros(1, np.float32)}, config)
    return path


@pytest.fixture(scope="module", params=["autoencoder", "pretrained", "other"])
def kind_model(request: pytest.FixtureRequest, other_model: Path) -> tuple[str, Path]:
    if request.param == "autoencoder":
        return request.param, request.getfixturevalue("catalog").model
    if request.param == "pretrained":
        return request.param, request.getfixturevalue("pretrained_model")
    return request.param, other_model


EXPECTED = {  # fixture param -> (type, kind, name, arch, runtime, novelty reference)
    "autoencoder": (AutoencoderModelConfig, "autoencoder", "conv-ae", "conv-ae", "onnx", True),
    "pretrained": (
        PretrainedModelConfig,
        "pretrained",
        "effnet-lite0-pca-tiny",
        "efficientnet-lite0",
        "onnx",
        True,
    ),
    "other": (OtherModelConfig, MeanColour.kind, MeanColour.kind, MeanColour.kind, "python", False),
}


def test_every_kind_round_trips(kind_model: tuple[str, Path]):
    kind, model = kind_model
    raw = json.loads((model / "config.json").read_text())
    cfg = parse_model_config(raw)
    typ, kind_name, name, arch, runtime, novelty = EXPECTED[kind]
    assert isinstance(cfg, typ) and (cfg.kind, cfg.name, cfg.arch, cfg.runtime) == (
        kind_name,
        name,
        arch,
        runtime,
    )
    assert (cfg.novelty_reference is not None) == novelty
    assert parse_model_config(config_to_dict(cfg)) == cfg
    assert load_encoder(model).model_config == cfg


def test_a_version_1_autoencoder_config_is_upgraded_in_memory(catalog):
    raw = json.loads((catalog.model / "config.json").read_text())
    v1 = {k: v for k, v in raw.items() if k != "version"}
    del v1["kind"]  # the oldest dirs had no kind either
    cfg = parse_model_config(v1)
    assert isinstance(cfg, AutoencoderModelConfig) and cfg.version == CONFIG_VERSION
    assert cfg == parse_model_config(raw)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 99}, "config version 99 is not one this imgrec reads"),
        ({"code_dim": None}, "not a valid autoencoder model config"),
        ({"model": "conv-ae"}, "not a valid autoencoder model config"),
        ({"preprocess": {}}, "missing field 'image_size'"),
    ],
)
def test_a_bad_config_fails_in_one_clear_line(tmp_path: Path, change: dict, message: str, catalog):
    raw = json.loads((catalog.model / "config.json").read_text())
    save_model_dir(tmp_path / "m", {"w": np.zeros(1, np.float32)}, {**raw, **change})
    with pytest.raises(ModelDirError, match=message) as info:
        load_encoder(tmp_path / "m")
    assert "\n" not in str(info.value) and "imgrec train" in str(info.value)


def test_a_pretrained_config_naming_no_graph_is_refused(pretrained_model):
    raw = json.loads((pretrained_model / "config.json").read_text())
    with pytest.raises(ModelDirError, match="no graph"):
        parse_model_config({**raw, "graph": None})


def test_a_missing_or_changed_graph_is_refused(tmp_path: Path, pretrained_model):
    shutil.copytree(pretrained_model, tmp_path / "m", ignore=shutil.ignore_patterns("features"))
    graph = tmp_path / "m" / "features.onnx"
    graph.write_bytes(graph.read_bytes()[:-1] + b"\0")
    with pytest.raises(ModelDirError, match="features.onnx changed since training"):
        load_encoder(tmp_path / "m")
    graph.unlink()
    with pytest.raises(ModelDirError, match="features.onnx is missing"):
        load_encoder(tmp_path / "m")


@pytest.fixture(scope="module")
def kind_index(
    kind_model: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory, catalog
) -> tuple[str, Path]:
    kind, model = kind_model
    inventory = catalog.inventory
    index = tmp_path_factory.mktemp(f"index-{kind}") / "index"
    run_index(inventory, model, index)
    return kind, index


def test_stats_report_the_real_architecture_of_every_kind(kind_index: tuple[str, Path], make_app, catalog):
    kind, index = kind_index
    _, kind_name, name, arch, runtime, novelty = EXPECTED[kind]
    client = make_app(INDEX=str(index), RELOAD_INTERVAL=0).test_client()
    s = client.get("/v1/stats").get_json()
    m = s["model"]
    assert (m["kind"], m["name"], m["arch"], m["runtime"]) == (kind_name, name, arch, runtime)
    assert (
        m["dim"] == s["dim"] and m["image_size"] > 0 and m["fingerprint"] == s["index"]["model_fingerprint"]
    )
    assert s["novelty_available"] is novelty
    if novelty:  # and the answers carry it
        image = catalog.query_bytes(0)
        body = client.post("/v1/search", data={"image": (io.BytesIO(image), "q.jpg")}).get_json()
        assert body["novelty_percentile"] is not None, body
    off = make_app(INDEX=str(index), RELOAD_INTERVAL=0, NOVELTY=False).test_client()
    assert off.get("/v1/stats").get_json()["novelty_available"] is False


def test_info_reports_the_real_architecture_of_every_kind(kind_index: tuple[str, Path]):
    kind, index = kind_index
    _, _, name, arch, runtime, _ = EXPECTED[kind]
    out = CliRunner().invoke(cli, ["info", str(index), "--json"])
    assert out.exit_code == 0, out.output
    record = json.loads(out.output)
    assert (record["model"], record["model_arch"], record["model_runtime"]) == (name, arch, runtime)


def test_every_autoencoder_is_listed_without_importing_torch():
    import encoder
    from encoder.models import MODELS

    assert list(MODELS) == encoder.MODELS
    assert dataclasses.fields(encoder.EncoderConfig)
