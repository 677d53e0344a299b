"""A trained model on disk: weights (safetensors), config (JSON), graph files and a fingerprint.

MODEL_DIR/
    model.safetensors   weights (an autoencoder's, or a pretrained preset's reducer)
    config.json         typed by encoder.config: kind, version, architecture, preprocessing, figures
    features.onnx       pretrained presets (runtime onnx): the trunks and pooling, run by onnxruntime
    FINGERPRINT         sha256 over the weights' bytes and the canonical config; the config records
                        the sha256 of every graph file, so the fingerprint covers them too
    features/           the feature cache (encoder.feature_cache): NOT part of the model, never
                        copied into an index, not covered by the fingerprint

Every index records the fingerprint of the model that built it, and copies the model's files into
itself, so an index always embeds queries with its own model. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from encoder.config import ModelConfig, ModelDirError, config_to_dict, parse_model_config

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FINGERPRINT = "FINGERPRINT"

__all__ = ["ModelDirError", "file_sha256", "model_files", "read_model_dir", "save_model_dir"]


def _update_from_file(h, path: str | Path) -> None:  # noqa: ANN001 - a hashlib object
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    _update_from_file(h, path)
    return h.hexdigest()


def fingerprint(weights_path: Path, config: dict) -> str:
    """sha256 over the weights file's bytes and the canonical JSON of the config."""
    h = hashlib.sha256()
    _update_from_file(h, weights_path)
    h.update(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()


def _numpy(v) -> np.ndarray:  # noqa: ANN001 - a torch tensor or an array
    if hasattr(v, "detach"):
        v = v.detach().cpu().contiguous().numpy()
    return np.ascontiguousarray(v)


def save_model_dir(out: str | Path, state_dict: dict, config: dict | ModelConfig) -> str:
    """Write weights (torch tensors or arrays), config and fingerprint into `out`; return the fingerprint.

    Graph files named by the config must already be in `out` (their sha256 is in the config).
    """
    from safetensors.numpy import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not isinstance(config, dict):
        config = config_to_dict(config)
    save_file({k: _numpy(v) for k, v in state_dict.items()}, out / WEIGHTS)
    (out / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    fp = fingerprint(out / WEIGHTS, config)
    (out / FINGERPRINT).write_text(fp + "\n")
    return fp


def _read_config(path: Path) -> dict:
    for name in (WEIGHTS, CONFIG):
        if not (path / name).is_file():
            raise ModelDirError(
                f"{path} is not a model directory: {name} is missing (train one with `imgrec train`)"
            )
    try:
        return json.loads((path / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelDirError(f"{path / CONFIG} is not valid JSON ({e}): retrain with `imgrec train`") from e


def read_model_dir(path: str | Path) -> tuple[dict[str, np.ndarray], dict, str]:
    """Return (weights as arrays, config dict as written, fingerprint), verifying the fingerprint.

    The config is validated (`encoder.config.parse_model_config`), and every graph file it names
    must be present with the recorded sha256.

    :raise ModelDirError: files missing, an unreadable config, or the fingerprint does not match.
    """
    from safetensors.numpy import load_file

    path = Path(path)
    raw = _read_config(path)
    typed = parse_model_config(raw, source=str(path / CONFIG))
    fp = fingerprint(path / WEIGHTS, raw)
    recorded = (path / FINGERPRINT).read_text().strip() if (path / FINGERPRINT).is_file() else fp
    if recorded != fp:
        raise ModelDirError(f"{path}: weights or config changed since training (fingerprint mismatch)")
    for name, sha in graph_files(typed).items():
        if not (path / name).is_file():
            raise ModelDirError(f"{path}: {name} is missing (retrain with `imgrec train`)")
        if file_sha256(path / name) != sha:
            raise ModelDirError(f"{path}: {name} changed since training (fingerprint mismatch)")
    return load_file(path / WEIGHTS), raw, fp


def graph_files(cfg: ModelConfig) -> dict[str, str]:
    """File name -> sha256 of the graph files a model needs besides its weights."""
    graph, sha = getattr(cfg, "graph", None), getattr(cfg, "graph_sha256", None)
    return {graph: sha} if graph and sha else {}


def model_files(path: str | Path) -> list[str]:
    """The names of the files that define the model in `path` (what an index or a worker copies)."""
    path = Path(path)
    typed = parse_model_config(_read_config(path), source=str(path / CONFIG))
    return [WEIGHTS, CONFIG, FINGERPRINT, *graph_files(typed)]


def read_fingerprint(path: str | Path) -> str:
    """The fingerprint of a model dir, computed from its files."""
    path = Path(path)
    return fingerprint(path / WEIGHTS, json.loads((path / CONFIG).read_text()))


def copy_model_dir(src: str | Path, dst: str | Path) -> None:
    """Copy the files that define a model (not its pictures, not its feature cache) into `dst`, atomically."""
    dst = Path(dst)
    if (dst / FINGERPRINT).is_file():
        return
    tmp = dst.with_name(dst.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in model_files(src):
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, tmp / name)
    os.replace(tmp, dst)
