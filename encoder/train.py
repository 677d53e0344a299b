"""Train an autoencoder, without labels, on a folder of images; write a model dir.

The loop reads straight down: shuffle, batch, forward, backward, step, evaluate, keep the best,
stop early when validation loss stops improving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from encoder.augment import corrupt, random_view
from encoder.config import AutoencoderModelConfig, PretrainedModelConfig
from encoder.export import export_autoencoder
from encoder.images import find_images  # noqa: F401 - re-exported (callers import it from here)
from encoder.model_dir import save_model_dir
from encoder.models import EncoderConfig, build_model, code_dim
from encoder.novelty import novelty_reference
from encoder.plots import save_loss_curve, save_reconstructions
from encoder.preprocess import ImageDecodeError, ImageTooLargeError, Preprocess, load_image

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    arch: str = "conv-ae"  # one of encoder.TRAINABLE_MODELS: an autoencoder of MODELS or a pretrained preset
    image_size: int | None = None  # square input side; None: 64 for autoencoders, the preset's for pretrained
    code_dim: int = 128  # simple-ae, res-ae
    filters: tuple[int, ...] = field(default=(16, 8, 8))  # conv-ae only
    width: int = 16  # res-ae: channels of the first stage
    # robustness knobs (None: the arch's own default, ARCH_DEFAULTS; the original recipe uses none)
    augment: bool | None = None  # reconstruct random crop/shift/mirror views instead of the images
    noise: float | None = None  # denoising: input jitter (brightness/contrast/saturation) and noise std
    invariance: float | None = None  # weight of 1 - cos(code(view 1), code(view 2)): views agree
    max_minutes: float | None = None  # stop after this much time (the best epoch so far is kept)
    epochs: int = 30  # upper bound; early stopping usually ends sooner
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    val_fraction: float = 0.15  # share of images held out for validation
    patience: int = 5  # epochs without validation improvement before stopping
    min_delta: float = 1e-5  # smaller improvements do not count
    seed: int = 0
    max_images: int | None = None  # train on a random subset (None: all)
    # pretrained presets only
    runtime: str | None = None  # None: the preset's (onnx); "torch": eager, no graph (the pre-issue-11 path)
    feature_cache: bool = True  # keep the extracted features in the model dir for `imgrec index`


ARCH_DEFAULTS: dict[str, dict] = {
    "res-ae": {
        "augment": True,
        "noise": 0.05,
        "invariance": 1.0,
        "max_minutes": 13.0,
        "epochs": 40,
        "image_size": 48,
    },
}


def resolved(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with knobs left at None filled from the arch's defaults (then off)."""
    arch = ARCH_DEFAULTS.get(cfg.arch, {})
    fill = {"augment": False, "noise": 0.0, "invariance": 0.0}
    out = replace(cfg, **{k: arch.get(k, fill.get(k)) for k in ("augment", "noise", "invariance", "max_minutes")
                          if getattr(cfg, k) is None})  # fmt: skip
    if "epochs" in arch and cfg.epochs == TrainConfig.epochs:
        out = replace(out, epochs=arch["epochs"])
    if "image_size" in arch and cfg.image_size is None:
        out = replace(out, image_size=arch["image_size"])
    return out


# A tiny CPU preset: `imgrec demo` and the tests use it (cf. nanoGPT's train_shakespeare_char).
DEMO_PRESET = TrainConfig(arch="conv-ae", image_size=32, epochs=12, batch_size=32, patience=3)


@dataclass
class TrainResult:
    model_dir: Path
    fingerprint: str
    train_losses: list[float]
    val_losses: list[float]
    best_epoch: int
    seconds: float
    n_train: int
    n_val: int
    fitted: PretrainedModelConfig | None = None  # pretrained presets: the config written


def load_training_images(paths: list[Path], pre: Preprocess) -> np.ndarray:
    """Decode and resize every readable image to uint8 (N, S, S, 3); unreadable ones are skipped."""
    arrays = []
    for p in paths:
        try:
            arrays.append(pre.to_uint8(load_image(p, draft_size=pre.image_size)))
        except (ImageDecodeError, ImageTooLargeError, OSError) as e:
            logger.warning("skipping %s: %s", p, e)
    if not arrays:
        raise ValueError("no readable images to train on")
    return np.stack(arrays)


def is_pretrained(arch: str) -> bool:
    """True for a pretrained preset (fitted: features then a reducer), False for an autoencoder (trained)."""
    from encoder.pretrained import PRESETS

    return arch in PRESETS


def train(
    images_dir: str | Path,
    out_dir: str | Path,
    cfg: TrainConfig,
    progress: Callable[[int, float, float], None] | None = None,
    on_stage: Callable[[str, int, int], None] | None = None,
) -> TrainResult:
    """Train `cfg.arch` on the images under `images_dir` and save it into `out_dir`.

    Autoencoders train epoch by epoch: `progress(epoch, train_loss, val_loss)` after each one.
    Pretrained presets go through stages (export the graph, extract features, fit the reducer):
    `on_stage(stage, done, total)` as they advance (encoder.fit).
    """
    if is_pretrained(cfg.arch):
        return fit_reducer(images_dir, out_dir, cfg, on_stage)
    return train_autoencoder(images_dir, out_dir, cfg, progress)


def select_images(images_dir: str | Path, max_images: int | None, rng: np.random.Generator) -> list[Path]:
    """The images to train on: all of them, or a seeded random subset of `max_images`."""
    paths = find_images(images_dir)
    if max_images and len(paths) > max_images:
        paths = sorted(rng.choice(np.array(paths, dtype=object), max_images, replace=False).tolist())
    return paths


def fit_reducer(
    images_dir: str | Path,
    out_dir: str | Path,
    cfg: TrainConfig,
    on_stage: Callable[[str, int, int], None] | None = None,
) -> TrainResult:
    """A pretrained preset: backbone features of every image, a reducer fitted on them (no labels)."""
    from encoder.fit import fit_pretrained
    from encoder.pretrained import preset

    t0 = time.perf_counter()
    chosen = preset(cfg.arch, image_size=cfg.image_size, runtime=cfg.runtime)
    paths = select_images(images_dir, cfg.max_images, np.random.default_rng(cfg.seed))
    if not paths:
        raise ValueError(f"no images found under {images_dir}")
    fp, config = fit_pretrained(
        paths, out_dir, chosen, cfg.arch, val_fraction=cfg.val_fraction, seed=cfg.seed,
        feature_cache=cfg.feature_cache, on_stage=on_stage,
    )  # fmt: skip
    t = config.training
    val = t["val_error"] if t["val_error"] is not None else t["train_error"]
    return TrainResult(
        Path(out_dir),
        fp,
        [t["train_error"]],
        [val],
        1,
        time.perf_counter() - t0,
        t["images"] - t["n_val"],
        t["n_val"],
        fitted=config,
    )


def train_autoencoder(
    images_dir: str | Path,
    out_dir: str | Path,
    cfg: TrainConfig,
    progress: Callable[[int, float, float], None] | None = None,
) -> TrainResult:
    """Train the autoencoder `cfg.arch` (one of MODELS) epoch by epoch; keep the best validation epoch."""
    t0 = time.perf_counter()
    cfg = resolved(cfg)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    image_size = cfg.image_size or 64
    pre = Preprocess(image_size=image_size)

    paths = select_images(images_dir, cfg.max_images, rng)
    data = torch.from_numpy(pre.normalize(load_training_images(paths, pre)))  # (N, 3, S, S)
    if len(data) < 2:
        raise ValueError(f"need at least 2 readable images to train, found {len(data)} in {images_dir}")
    order = rng.permutation(len(data))
    n_val = max(1, int(round(len(data) * cfg.val_fraction)))
    x_val, x_train = data[order[:n_val]], data[order[n_val:]]

    model_cfg = EncoderConfig(
        arch=cfg.arch, image_size=image_size, code_dim=cfg.code_dim, filters=cfg.filters, width=cfg.width
    )
    model = build_model(model_cfg)
    if cfg.invariance and not hasattr(model, "decode"):
        raise ValueError(f"{cfg.arch} has no separate decoder: train it with invariance 0")
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    loss_fn = nn.MSELoss()

    train_losses: list[float] = []
    val_losses: list[float] = []
    best_val, best_epoch, best_state = float("inf"), 0, None
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        perm = torch.from_numpy(rng.permutation(len(x_train)))
        total = 0.0
        for i in range(0, len(x_train), cfg.batch_size):
            xb = x_train[perm[i : i + cfg.batch_size]]  # (B, 3, S, S)
            target = random_view(xb) if cfg.augment else xb  # what to reconstruct
            inp = corrupt(target, noise_std=cfg.noise) if cfg.noise else target  # what the model sees
            if cfg.invariance:  # a second view's code must agree with the first's
                other = random_view(xb) if cfg.augment else xb
                z1, z2 = model.encode(torch.cat([inp, corrupt(other, noise_std=cfg.noise)])).chunk(
                    2
                )  # (B, D) x2
                recon = loss_fn(model.decode(z1), target)
                loss = recon + cfg.invariance * (1 - F.cosine_similarity(z1, z2).mean())
            else:
                recon = loss = loss_fn(model(inp), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += recon.item() * len(xb)
        train_losses.append(total / len(x_train))

        model.eval()
        with torch.inference_mode():  # clean reconstruction of held-out images
            val_losses.append(
                float(sum(loss_fn(model(v), v) * len(v) for v in x_val.split(256)) / len(x_val))
            )
        if progress:
            progress(epoch, train_losses[-1], val_losses[-1])
        if val_losses[-1] < best_val - cfg.min_delta:
            best_val, best_epoch = val_losses[-1], epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= cfg.patience:
            logger.info("early stop at epoch %d (best %d)", epoch, best_epoch)
            break
        if cfg.max_minutes and time.perf_counter() - t0 > 60 * cfg.max_minutes:
            logger.info(
                "time budget of %.1f min reached at epoch %d (best %d)", cfg.max_minutes, epoch, best_epoch
            )
            break

    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    with torch.inference_mode():  # reference for "how unlike the inventory": unseen images' errors
        ref = x_val if len(x_val) >= 20 else data  # (too few held out: all, slightly optimistic)
        errors = torch.cat([((model(xb) - xb) ** 2).flatten(1).mean(1) for xb in ref.split(256)])
    out_dir = Path(out_dir)
    graph, graph_sha256 = export_autoencoder(model, out_dir, image_size)  # inference without torch
    seconds = time.perf_counter() - t0
    config = AutoencoderModelConfig(
        model=model_cfg,
        preprocess=pre,
        code_dim=code_dim(model, image_size),
        novelty_reference=novelty_reference(errors.numpy()),
        training={
            "config": asdict(cfg),
            "images": len(data),
            "n_train": len(x_train),
            "n_val": n_val,
            "best_epoch": best_epoch,
            "best_val_loss": best_val,
            "train_losses": train_losses,
            "val_losses": val_losses,
            "seconds": round(seconds, 2),
        },
        graph=graph,
        graph_sha256=graph_sha256,
    )
    fp = save_model_dir(out_dir, best_state, config)
    save_loss_curve(out_dir / "loss_curve.png", train_losses, val_losses, best_epoch)
    with torch.inference_mode():
        sample = x_val[:8]
        save_reconstructions(out_dir / "reconstructions.png", sample.numpy(), model(sample).numpy(), pre)
    return TrainResult(out_dir, fp, train_losses, val_losses, best_epoch, seconds, len(x_train), n_val)
