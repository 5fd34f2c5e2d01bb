"""Test oracle: CAM Back Again (Yasuki & Taki, CVPR 2024), snskysk/CAM-Back-Again, written anew.

Transcribes, for the tests only:

* ``convnext_func.py`` ``Net2Head`` and the ConvNeXt model that ``generate_heatmap.py`` builds:
  ``nn.Sequential(nn.Sequential(*list(convnext.children())[:-2]), Net2Head(K, C, size))``, i.e. timm's
  stem (``0.0.*``) and stages (``0.1.*``) with the head's LayerNorm *dropped*, then ``1.fc.*``. Its forward
  returns **softmax probabilities**, not logits.
* ``replknet_func.py`` ``build_model``: the official RepLKNet (``stem.*``, ``stages.*``, ``transitions.*``,
  ``norm.*``) with ``model.head = nn.Linear(channels[-1], K)``. Its forward (BN ``norm`` -> GAP -> head)
  returns **logits**. Checkpoints may be wrapped in ``{'model': ...}`` or ``{'state_dict': ...}``.
* ``utils.py`` ``get_feature_maps`` and ``get_heatmap_from_features`` (the maps before the script resizes
  them to the input size). Upstream runs under ``DataParallel`` (``model.module``) with batch size 1 and
  square maps; so do these functions (a plain model is accepted too).

Upstream quirks kept on purpose: the ReplKNet features are ``forward_features`` (before the head BN, which
the maps ignore); the CAM is the channel *mean* of the weighted features, ReLU'd and divided by its max
(no min-max, NaN if nothing is positive); PC1 min-max normalises each weighted channel (NaN for a constant
channel), runs ``sklearn.decomposition.PCA(n_components=30)`` on the (C, side^2) matrix (channels are the
samples), divides component 0 by its max, and flips it to ``1 - pc1`` when more than half of a "frame"
lies above the mean, where the frame is ``frame[1:side-2, 1:side-2] = 0`` (row 0, column 0 and the last
*two* rows and columns) counted against ``(side - 1) * 4`` pixels. The sign of ``components_[0]`` is
sklearn's: since 1.5 (``svd_flip(u_based_decision=False)``) its largest-magnitude entry is positive;
before 1.5 the sign followed the channel scores ``U``.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.decomposition import PCA
from torch import Tensor, nn
from torch.nn import functional as F

from wsol.models.replknet import RepLKNet

__all__ = [
    "Net2Head",
    "convnext_layout",
    "get_feature_maps",
    "get_heatmap_from_features",
    "replknet_layout",
    "upstream_frame_flip",
]


class Net2Head(nn.Module):
    """``convnext_func.py``: ``AvgPool2d(size, size)`` -> flatten -> ``fc`` -> softmax (probabilities)."""

    def __init__(self, class_n: int, unit_n: int, size: int) -> None:
        super().__init__()
        self.unit_n = unit_n
        self.size = size
        self.fc = nn.Linear(unit_n, class_n)
        self.cam = nn.AvgPool2d(size, size)

    def forward(self, x: Tensor) -> Tensor:
        """Softmax over the classes of ``fc(avgpool(x))``."""
        pooled = self.cam(x)
        return F.softmax(self.fc(pooled.view(pooled.size(0), -1)), dim=1)


def convnext_layout(convnext: nn.Module, num_classes: int, size: int) -> nn.Sequential:
    """``generate_heatmap.py``'s ConvNeXt: every child of the timm ConvNeXt but the last two
    (``norm_pre``, ``head``), then ``Net2Head(num_classes, num_features, size)``; ``size`` is the side of the
    last feature map (12 for 384 inputs)."""
    body = nn.Sequential(*list(convnext.children())[:-2])
    return nn.Sequential(body, Net2Head(num_classes, int(convnext.num_features), size))


def replknet_layout(replknet: RepLKNet, num_classes: int) -> RepLKNet:
    """``replknet_func.py`` ``build_model``: the official RepLKNet with ``head = nn.Linear(C, num_classes)``
    (``norm`` kept). Changes ``replknet`` in place and returns it."""
    replknet.head = nn.Linear(replknet.norm.num_features, num_classes)
    return replknet


def _unwrap(model: nn.Module) -> nn.Module:
    """``model.module`` under DataParallel, as upstream indexes it; the model itself otherwise."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


@torch.no_grad()
def get_feature_maps(model_family: str, x: Tensor, target_class: int, model: nn.Module) -> Tensor:
    """``utils.py``: the last feature map with channel ``c`` multiplied by ``W[target_class, c]``.

    ``convnext``: ``model[0](x)`` and ``model[1].fc.weight``; ``replknet``: ``model.forward_features(x)``
    (before the head BN) and ``model.head.weight``.
    """
    net = _unwrap(model)
    if model_family == "convnext":
        features = net[0](x).detach()
        class_weights = net[1].fc.weight.detach()
    elif model_family == "replknet":
        features = net.forward_features(x).detach()
        class_weights = net.head.weight.detach()
    else:
        raise ValueError(f"model family {model_family!r}: upstream knows convnext and replknet")
    return features * class_weights[int(target_class)].view(1, -1, 1, 1)


def upstream_frame_flip(pc1_matrix: np.ndarray) -> bool:
    """``utils.py``'s reversal test: binarise at the mean, zero ``[1:side-2, 1:side-2]``, and compare the
    count left (row 0, column 0, the last two rows and columns) divided by ``(side - 1) * 4`` with 0.5."""
    side = pc1_matrix.shape[0]
    on = np.where(pc1_matrix > np.mean(pc1_matrix), 1, 0)
    frame = on.copy()
    frame[1:side - 2, 1:side - 2] = 0
    return bool(np.sum(frame) / ((side - 1) * 4) > 0.5)


def get_heatmap_from_features(localization_method: str, features: Tensor, n_comp: int = 30) -> np.ndarray:
    """``utils.py``: the (side, side) map of ``"cam"`` or ``"pc1"`` from :func:`get_feature_maps`'s output
    (batch size 1, square map; the channel count and side are read from ``features``, upstream takes them
    from its model config). ``n_comp`` is upstream's 30; sklearn needs it <= min(C, side^2). ``features``
    is not modified (upstream's pc1 overwrites a CPU tensor in place)."""
    if features.shape[0] != 1 or features.shape[-1] != features.shape[-2]:
        raise ValueError(f"upstream works on one square map at a time, got {tuple(features.shape)}")
    if localization_method == "cam":
        heatmap = torch.mean(features, dim=1).squeeze().cpu()
        heatmap = torch.clamp(heatmap, min=0)
        return (heatmap / torch.max(heatmap)).numpy()
    if localization_method == "pc1":
        side = features.shape[-1]
        maps = features.cpu().numpy()[0].copy()
        for i, one_map in enumerate(maps):
            hi, lo = np.max(one_map), np.min(one_map)
            maps[i] = (one_map - lo) / (hi - lo)
        pca = PCA(n_components=n_comp)
        pca.fit(maps.reshape(maps.shape[0], side * side))
        pc1 = pca.components_[0].reshape(side, side)
        pc1 = pc1 / np.max(pc1)
        return 1 - pc1 if upstream_frame_flip(pc1) else pc1
    raise ValueError(f"localization method {localization_method!r}: upstream knows cam and pc1")
