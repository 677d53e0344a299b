"""The autoencoder kind: an `Encoder` whose code is the encoder half's output.

Model dirs written by `imgrec train` hold `autoencoder.onnx` (codes and novelty from one graph, run
by onnxruntime: loading one imports no torch); dirs written before graphs existed are rebuilt from
their weights and run by torch. Both give the same vectors (tests/test_autoencoder_graph.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from encoder.compute import TorchThreads, configured_threads
from encoder.config import AutoencoderModelConfig, ModelDirError, config_to_dict, parse_model_config
from encoder.embedder import Encoder
from encoder.runtime import batch_key


class AutoencoderEncoder(Encoder):
    """An autoencoder trained by `imgrec train`."""

    kind = "autoencoder"

    def __init__(
        self, state_dict: dict[str, np.ndarray], config: dict, fingerprint: str, graph: bytes | None = None
    ):
        typed = parse_model_config(config)
        assert isinstance(typed, AutoencoderModelConfig)
        self.model_config = typed
        self.config = config_to_dict(typed)
        self.fingerprint = fingerprint
        self.preprocess = typed.preprocess
        self.dim = typed.code_dim
        if typed.graph:
            if graph is None:
                raise ModelDirError(f"{typed.arch}: the model's graph ({typed.graph}) was not loaded")
            self.runner: _GraphRunner | _TorchRunner = _GraphRunner(graph)
        else:
            self.runner = _TorchRunner(typed, state_dict)
        if (n := configured_threads()) is not None:  # set at the entry point
            self.set_threads(n)

    @classmethod
    def from_model_dir(
        cls, path: Path, state_dict: dict[str, np.ndarray], config: dict, fingerprint: str
    ) -> AutoencoderEncoder:
        """Load with the graph file the config names (read_model_dir has checked its sha256)."""
        typed = parse_model_config(config)
        graph = (Path(path) / typed.graph).read_bytes() if getattr(typed, "graph", None) else None
        return cls(state_dict, config, fingerprint, graph)

    def _embed(self, x: np.ndarray) -> np.ndarray:
        return self.runner.codes(x)  # (B, code_dim)

    def _novelty(self, x: np.ndarray) -> np.ndarray:
        return self.runner.novelty(x)  # (B,)

    def set_threads(self, n: int) -> None:
        self.runner.set_threads(n)

    def get_threads(self) -> int:
        return self.runner.threads


class _GraphRunner:
    """The exported graph: one run gives a batch's codes and novelty; the last batch's are kept, so
    a query's `embed` then `novelty` costs one run."""

    def __init__(self, graph: bytes):
        from encoder.runtime import OnnxGraph

        self.graph = OnnxGraph(graph)
        self._last: tuple[bytes, list[np.ndarray]] | None = None

    @property
    def threads(self) -> int:
        return self.graph.threads

    def set_threads(self, n: int) -> None:
        self.graph.set_threads(n)

    def _outputs(self, x: np.ndarray) -> list[np.ndarray]:
        key = batch_key(x)
        last = self._last  # one reference read: safe against another thread replacing it
        if last is not None and last[0] == key:
            return last[1]
        out = self.graph.outputs(x)
        self._last = (key, out)
        return out

    def codes(self, x: np.ndarray) -> np.ndarray:
        return self._outputs(x)[0]

    def novelty(self, x: np.ndarray) -> np.ndarray:
        return self._outputs(x)[1]

    def __getstate__(self) -> dict:
        return {"graph": self.graph, "_last": None}


class _TorchRunner(TorchThreads):
    """Model dirs without a graph: the architecture rebuilt from config.json, run by torch eager."""

    def __init__(self, typed: AutoencoderModelConfig, state_dict: dict[str, np.ndarray]):
        import torch

        from encoder.models import build_model

        self.model = build_model(typed.model)
        try:
            self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()})
        except RuntimeError as e:  # strict: every key used, none missing, shapes equal
            raise ModelDirError(
                f"{typed.model.arch}: the weights do not fit the architecture in config.json; "
                "retrain with `imgrec train`"
            ) from e
        self.model.eval()

    def codes(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model.encode(torch.from_numpy(x)).numpy()

    def novelty(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            t = torch.from_numpy(x)
            return ((self.model(t) - t) ** 2).flatten(1).mean(1).numpy()
