"""Export models to ONNX once, at train time, so that inference needs onnxruntime only; optional int8.

    export_graph(FeatureExtractor(cfg), path, cfg.image_size)          # float32, same features
    quantize_graph(path, out, calibration_batches)                      # static int8 (QDQ, per channel)
    export_autoencoder(model, out_dir, image_size)                      # codes + novelty in one graph

The exported graph takes a normalised (B, 3, S, S) float32 batch (B dynamic) and returns the
(B, C) unit features; onnxruntime runs it without torch. int8 changes the vectors (cosine to the
float features ~0.97-0.99): it is its own preset, with its own fingerprint and measured figures.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

INPUT, OUTPUT = "image", "features"
AUTOENCODER_OUTPUTS = ("code", "novelty")  # (B, code_dim) and (B,) per-image reconstruction error
AUTOENCODER_GRAPH = "autoencoder.onnx"


def export_graph(
    module,  # noqa: ANN001 - nn.Module
    path: str | Path,
    image_size: int,
    max_batch: int = 1024,
    outputs: tuple[str, ...] = (OUTPUT,),
    any_shape: bool = False,
) -> Path:
    """Write `module` (normalised (B, 3, S, S) -> `outputs`) as an ONNX graph at `path`, atomically.

    `any_shape`: height and width stay free (from S up to 4 S) instead of fixed at S, for inputs that
    keep the image's orientation (preprocess resize "whole").
    """
    import torch

    path = Path(path)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    if any_shape:  # an example that is not square, so no trace can take H == W for granted
        example = torch.zeros(2, 3, round(image_size * 4 / 3), image_size)
        height = torch.export.Dim("height", min=image_size, max=4 * image_size)
        width = torch.export.Dim("width", min=image_size, max=4 * image_size)
        dynamic: dict[int, object] = {0: batch, 2: height, 3: width}
    else:
        example = torch.zeros(2, 3, image_size, image_size)
        dynamic = {0: batch}
    with warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")  # the exporter's own deprecation chatter, not ours
        program = torch.onnx.export(
            module.eval(),
            (example,),
            dynamo=True,
            input_names=[INPUT],
            output_names=list(outputs),
            dynamic_shapes=(dynamic,),
            verbose=False,
        )
        program.save(str(tmp))
    os.replace(tmp, path)
    return path


def quantize_graph(src: str | Path, dst: str | Path, calibration: Iterable[np.ndarray]) -> Path:
    """Static int8 quantisation of the graph at `src` (QDQ, per-channel weights), calibrated on batches.

    `calibration`: normalised (B, 3, S, S) float32 batches of inventory images (a few hundred images).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self) -> dict | None:
            x = next(self.batches, None)
            return None if x is None else {INPUT: np.ascontiguousarray(x, np.float32)}

    dst = Path(dst)
    prepared = dst.with_name(dst.name + f".pre-{os.getpid()}")
    tmp = dst.with_name(dst.name + f".tmp-{os.getpid()}")
    try:
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(tmp),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        os.replace(tmp, dst)
    finally:
        prepared.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return dst


def export_autoencoder(model, out_dir: str | Path, image_size: int) -> tuple[str, str]:  # noqa: ANN001
    """Export an autoencoder (encoder.models) as one graph giving codes and novelty; (file name, sha256).

    Inference then needs onnxruntime only (importing it takes ~0.25 s against torch's 1.2-2.7 s,
    which an `imgrec index` run on a large, barely changed inventory would otherwise pay first).
    """
    import torch

    from encoder.model_dir import file_sha256

    class CodesAndNovelty(torch.nn.Module):
        def __init__(self, ae: torch.nn.Module):
            super().__init__()
            self.ae = ae

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.ae.encode(x), ((self.ae(x) - x) ** 2).flatten(1).mean(1)

    path = Path(out_dir) / AUTOENCODER_GRAPH
    path.parent.mkdir(parents=True, exist_ok=True)
    export_graph(CodesAndNovelty(model.eval()), path, image_size, outputs=AUTOENCODER_OUTPUTS)
    return path.name, file_sha256(path)


class _quiet_exporter:
    """Silence the exporter's progress prints and torchvision notices (it logs through `logging` and stdout)."""

    def __enter__(self) -> None:
        import contextlib
        import io

        self._loggers = [
            logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")
        ]
        self._levels = [lg.level for lg in self._loggers]
        for lg in self._loggers:
            lg.setLevel(logging.ERROR)
        self._out = contextlib.redirect_stdout(io.StringIO())
        self._out.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._out.__exit__(*exc)
        for lg, level in zip(self._loggers, self._levels, strict=True):
            lg.setLevel(level)
