"""A trained model on disk: weights (safetensors), config (JSON) and a fingerprint.

MODEL_DIR/
    model.safetensors   weights
    config.json         kind, architecture, preprocessing, code dimension, training figures
    FINGERPRINT         sha256 over the weights' bytes and the canonical config

Every index records the fingerprint of the model that built it, and copies the model dir into
itself, so an index always embeds queries with its own model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FINGERPRINT = "FINGERPRINT"


class ModelDirError(ValueError):
    """A model directory is missing, incomplete or does not match its fingerprint."""


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


def save_model_dir(out: str | Path, state_dict: dict[str, torch.Tensor], config: dict) -> str:
    """Write weights, config and fingerprint into `out`; return the fingerprint."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    save_file(tensors, out / WEIGHTS)
    (out / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    fp = fingerprint(out / WEIGHTS, config)
    (out / FINGERPRINT).write_text(fp + "\n")
    return fp


def read_model_dir(path: str | Path) -> tuple[dict[str, torch.Tensor], dict, str]:
    """Return (state_dict, config, fingerprint), verifying the fingerprint.

    :raise ModelDirError: files missing or the fingerprint does not match.
    """
    path = Path(path)
    for name in (WEIGHTS, CONFIG):
        if not (path / name).is_file():
            raise ModelDirError(
                f"{path} is not a model directory: {name} is missing (train one with `imgrec train`)"
            )
    config = json.loads((path / CONFIG).read_text())
    fp = fingerprint(path / WEIGHTS, config)
    recorded = (path / FINGERPRINT).read_text().strip() if (path / FINGERPRINT).is_file() else fp
    if recorded != fp:
        raise ModelDirError(f"{path}: weights or config changed since training (fingerprint mismatch)")
    return load_file(path / WEIGHTS), config, fp


def read_fingerprint(path: str | Path) -> str:
    """The fingerprint of a model dir, computed from its files."""
    path = Path(path)
    return fingerprint(path / WEIGHTS, json.loads((path / CONFIG).read_text()))


def copy_model_dir(src: str | Path, dst: str | Path) -> None:
    """Copy the files that define a model (not its pictures) into `dst`, atomically."""
    dst = Path(dst)
    if (dst / FINGERPRINT).is_file():
        return
    tmp = dst.with_name(dst.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in (WEIGHTS, CONFIG, FINGERPRINT):
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, tmp / name)
    os.replace(tmp, dst)
