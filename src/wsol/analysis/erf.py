"""The effective receptive field (ERF) as RepLKNet's authors measure it (Ding et al., CVPR 2022, ``erf/``).

1. Contribution map of one image: the gradient of ``relu(F)[:, :, h // 2, w // 2]`` summed over channels
   (F = the last feature map, the CAM's) with respect to the input, its positive part, summed over the
   colour channels (:func:`contribution_maps`, batched: in eval mode the images of a batch are independent,
   so the gradient of the batch's sum is each image's own gradient).
2. The ERF: the mean of the contribution maps over N images (the authors: 50 ImageNet val images at
   1024 x 1024); an image whose map is not finite is skipped, as they do (:class:`ERFAccumulator`).
3. Analysis: ``log10(1 + ERF)`` divided by its max (:func:`log_scaled`); the high-contribution area ratio
   r(t) is the area of the smallest centred square holding more than ``t`` of that scaled map's total, over
   the input area, for t = 20 / 30 / 50 / 99 % (:func:`area_ratios`).

One difference from ``analyze_erf.py``: squares are tried from 1 x 1 up to the largest centred square that
fits the input; the authors' loop starts at 3 x 3 (a 1 x 1 square never counts) and, for an odd input side,
stops one short of the whole input. On their 1024 x 1024 inputs both give the same numbers whenever the
centre pixel alone holds at most t and the answer is not the whole input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from wsol.errors import WSOLError

THRESHOLDS = (0.2, 0.3, 0.5, 0.99)
ERF_INPUT_SIZE = 1024  # the authors' input: Resize((1024, 1024)) bicubic, ImageNet mean / std
ERF_NUM_IMAGES = 50


def feature_function(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """The map whose central pixel the ERF is measured on: a wsol classifier's F (``model.features``; an
    F-CAM model's classifier's), else the output of ``model`` itself (any conv net ending in a 4-D map)."""
    clf = getattr(model, "classifier", model)
    fn = getattr(clf, "features", None)
    return fn if callable(fn) else clf


def contribution_maps(features: Callable[[Tensor], Tensor], images: Tensor) -> Tensor:
    """(B, H, W) float32: per image, ``relu(d sum_c relu(F_c[h//2, w//2]) / d x)`` summed over colour channels.

    The caller keeps the model in eval mode: with batch statistics (BatchNorm in training mode) the images
    of a batch would contribute to each other's centre."""
    if images.ndim != 4 or images.shape[0] == 0 or not images.is_floating_point():
        raise WSOLError(f"ERF: expected a non-empty float image batch (B, C, H, W), got {tuple(images.shape)}")
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        f = features(x)
        if not isinstance(f, Tensor) or f.ndim != 4:
            shape = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
            raise WSOLError(f"ERF: the feature map must be 4-D (B, C, h, w), got {shape}")
        h, w = f.shape[-2:]
        centre = torch.relu(f[:, :, h // 2, w // 2]).sum()
        if not centre.requires_grad:  # F does not depend on the input at all
            return torch.zeros(x.shape[0], *x.shape[2:], device=x.device)
        (grad,) = torch.autograd.grad(centre, x, allow_unused=True)
    if grad is None:
        return torch.zeros(x.shape[0], *x.shape[2:], device=x.device)
    return grad.clamp_min(0).sum(1).float()


@dataclass
class ERFAccumulator:
    """The running mean of contribution maps over images (float64); non-finite maps are skipped and counted."""

    total: Tensor | None = None
    count: int = 0
    skipped: int = 0

    def update(self, maps: Tensor) -> None:
        finite = torch.isfinite(maps).flatten(1).all(1)
        self.skipped += int((~finite).sum())
        good = maps[finite].detach().cpu().double()  # on the CPU: float64 everywhere (MPS has none)
        if good.shape[0] == 0:
            return
        part = good.sum(0)
        self.total = part if self.total is None else self.total + part
        self.count += good.shape[0]

    def mean(self) -> np.ndarray:
        if self.total is None or self.count == 0:
            raise WSOLError("ERF: no image gave a finite gradient map")
        return (self.total / self.count).cpu().numpy()


def log_scaled(erf: np.ndarray) -> np.ndarray:
    """``log10(1 + erf)`` divided by its max (values in [0, 1]; an all-zero ERF stays zero)."""
    data = np.log10(1.0 + np.clip(np.asarray(erf, dtype=np.float64), 0, None))
    peak = float(data.max()) if data.size else 0.0
    return data / peak if peak > 0 else np.zeros_like(data)


def centred_square_sums(data: np.ndarray) -> np.ndarray:
    """Sums of ``data`` over the centred squares ``[c - i, c + i]`` (c = side // 2 on each axis), for
    i = 0 .. the largest that fits; side 2 i + 1."""
    h, w = data.shape
    cy, cx = h // 2, w // 2
    imax = min(cy, h - 1 - cy, cx, w - 1 - cx)
    ii = np.zeros((h + 1, w + 1), dtype=np.float64)
    ii[1:, 1:] = np.asarray(data, dtype=np.float64).cumsum(0).cumsum(1)
    i = np.arange(imax + 1)
    y0, y1, x0, x1 = cy - i, cy + i + 1, cx - i, cx + i + 1
    return ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]


def area_ratios(scaled: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> dict[str, dict[str, Any] | None]:
    """For each t: ``{"side": 2 i + 1, "area_ratio": side^2 / (H W)}`` of the smallest centred square holding
    more than ``t`` of the total of ``scaled`` (the log-scaled ERF), or None when no square that fits does."""
    data = np.asarray(scaled, dtype=np.float64)
    if data.ndim != 2 or data.size == 0:
        raise WSOLError(f"ERF: expected a 2-D map, got shape {data.shape}")
    total = float(data.sum())
    sums = centred_square_sums(data)
    out: dict[str, dict[str, Any] | None] = {}
    for t in thresholds:
        if not 0 < t < 1:
            raise WSOLError(f"ERF threshold {t} must lie in (0, 1)")
        hit = np.flatnonzero(sums > t * total) if total > 0 else np.array([], dtype=np.int64)
        if hit.size == 0:
            out[f"{t:g}"] = None
            continue
        side = 2 * int(hit[0]) + 1
        out[f"{t:g}"] = {"side": side, "area_ratio": side * side / data.size}
    return out


@dataclass
class ERFResult:
    """One model's ERF: the mean contribution map (H, W), its log-scaled version and the area ratios."""

    label: str
    erf: np.ndarray
    num_images: int
    skipped: int
    feature_shape: tuple[int, ...]
    scaled: np.ndarray = field(init=False)
    ratios: dict[str, dict[str, Any] | None] = field(init=False)
    thresholds: tuple[float, ...] = THRESHOLDS

    def __post_init__(self) -> None:
        self.scaled = log_scaled(self.erf)
        self.ratios = area_ratios(self.scaled, self.thresholds)

    def record(self) -> dict[str, Any]:
        """The JSON record (without the maps)."""
        return {"label": self.label, "num_images": self.num_images, "skipped_non_finite": self.skipped,
                "input_size": list(self.erf.shape), "feature_map": list(self.feature_shape),
                "erf_max": float(self.erf.max()), "ratios": self.ratios}


def measure_erf(model: nn.Module, batches: Iterable[Tensor], *, label: str = "", device: str | torch.device = "cpu",
                thresholds: Sequence[float] = THRESHOLDS,
                on_batch: Callable[[int], None] | None = None) -> ERFResult:
    """The ERF of ``model`` over normalised image ``batches`` (B, 3, H, W): the model moved to ``device``, in
    eval mode with its parameters frozen for the pass (both restored afterwards)."""
    from wsol.cams.base import preserved_state

    device = torch.device(device)
    model = model.to(device)
    features = feature_function(model)
    acc = ERFAccumulator()
    shape: tuple[int, ...] = ()
    with preserved_state(model, eval_mode=True):
        for p in model.parameters():
            p.requires_grad_(False)  # only the input's gradient is wanted: autograd keeps less
        for batch in batches:
            x = batch.to(device)
            if not shape:
                with torch.no_grad():
                    shape = tuple(features(x[:1]).shape[1:])
            acc.update(contribution_maps(features, x))
            if on_batch is not None:
                on_batch(int(x.shape[0]))
    return ERFResult(label=label, erf=acc.mean(), num_images=acc.count, skipped=acc.skipped, feature_shape=shape,
                     thresholds=tuple(thresholds))
