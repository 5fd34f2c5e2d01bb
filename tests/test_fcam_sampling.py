"""F-CAM pseudo-pixel sampling: regions, n-, erosion, seeds only inside their region, re-sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.filters import threshold_otsu

from wsol.errors import WSOLError
from wsol.fcam.sampling import (
    IGNORE,
    erode,
    otsu_thresholds,
    sample_pseudo_labels,
    sampling_regions,
    upsample_cams,
)


def _cams(b: int = 3, h: int = 40, w: int = 48, seed: int = 0) -> torch.Tensor:
    """Blobs on a noisy ramp: a bright object, a graded background."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    maps = []
    for i in range(b):
        cy, cx = 12 + 6 * i, 15 + 8 * i
        blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (5 + i) ** 2))
        maps.append(3 * blob + 0.2 * xx / w + 0.05 * torch.rand(h, w, generator=g))
    return torch.stack(maps)


def test_otsu_matches_skimage_within_a_bin() -> None:
    cams = _cams()
    ours = otsu_thresholds(cams)
    for m, t in zip(cams, ours):
        ref = threshold_otsu(m.numpy(), nbins=256)
        width = float(m.max() - m.min()) / 256
        assert abs(float(t) - ref) <= 1.01 * width


def test_regions_are_right() -> None:
    cams = _cams()
    n_neg = 0.3
    fg, bg = sampling_regions(cams, n_neg=n_neg, erosion=5)
    flat = cams.flatten(1)
    thr = otsu_thresholds(cams)
    above = cams > thr[:, None, None]
    assert not (fg & bg).any()
    # foreground = Otsu region eroded: inside the Otsu region, strictly smaller, non-empty
    assert (fg <= above).all()
    assert fg.flatten(1).any(1).all()
    assert (fg.flatten(1).sum(1) < above.flatten(1).sum(1)).all()
    assert torch.equal(fg, erode(above, 5))
    # background = exactly the ceil(n- * N) lowest pixels (no overlap with the foreground here)
    k = math.ceil(n_neg * flat.shape[1])
    assert (bg.flatten(1).sum(1) == k).all()
    kth = flat.sort(1).values[:, k - 1]
    assert (cams[bg].numel() == bg.sum())
    for i in range(len(cams)):
        assert float(cams[i][bg[i]].max()) <= float(kth[i])
        assert float(cams[i][~bg[i]].min()) >= float(kth[i])


@pytest.mark.parametrize("n_neg", [0.1, 0.4, 0.7])
def test_labels_only_inside_their_regions_and_respect_n_neg(n_neg: float) -> None:
    cams = _cams()
    fg, bg = sampling_regions(cams, n_neg=n_neg, erosion=11)
    flat = cams.flatten(1)
    quantile = flat.sort(1).values[:, math.ceil(n_neg * flat.shape[1]) - 1]
    for seed in range(5):
        labels = sample_pseudo_labels(cams, n_neg=n_neg, num_samples=2, erosion=11, dilation=3,
                                      generator=torch.Generator().manual_seed(seed))
        assert set(labels.unique().tolist()) <= {IGNORE, 0, 1}
        assert (fg[labels == 1]).all()
        assert (bg[labels == 0]).all()
        for i in range(len(cams)):
            assert (labels[i] == 1).any() and (labels[i] == 0).any()
            # background seeds lie among the lowest n- of the map
            assert float(cams[i][labels[i] == 0].max()) <= float(quantile[i])
            # 2 seeds, each dilated 3 x 3 inside the region: at most 18 pixels per class
            assert int((labels[i] == 1).sum()) <= 18 and int((labels[i] == 0).sum()) <= 18


def test_resampled_every_call() -> None:
    cams = _cams()
    draws = {tuple(sample_pseudo_labels(cams, 0.3).flatten().nonzero().flatten().tolist()) for _ in range(6)}
    assert len(draws) > 1


def test_overlap_goes_to_neither_region() -> None:
    # a map where half the pixels are high: Otsu foreground and the lowest 70% overlap
    cams = torch.zeros(1, 10, 10)
    cams[0, :, 4:] = 1.0
    fg, bg = sampling_regions(cams, n_neg=0.7, erosion=1)
    assert not (fg & bg).any()
    assert (cams[0][bg[0]] == 0).all()


def test_constant_map_and_errors() -> None:
    labels = sample_pseudo_labels(torch.ones(2, 8, 8), 0.2, erosion=3)
    assert not (labels == 1).any()  # nothing is above the threshold of a constant map
    with pytest.raises(WSOLError):
        sampling_regions(torch.rand(1, 8, 8), n_neg=0.0)
    with pytest.raises(WSOLError):
        sampling_regions(torch.rand(1, 8, 8), erosion=4)
    with pytest.raises(WSOLError):
        sample_pseudo_labels(torch.rand(1, 8, 8), dilation=2)
    with pytest.raises(WSOLError):
        upsample_cams(torch.rand(8, 8), (16, 16))


def test_upsample_and_device_dtype() -> None:
    cams = torch.rand(2, 4, 5, dtype=torch.float64)
    up = upsample_cams(cams, (16, 20))
    assert up.shape == (2, 16, 20) and up.dtype == torch.float32
    labels = sample_pseudo_labels(up, 0.2, erosion=3)
    assert labels.dtype == torch.long and labels.device == up.device
    assert np.isin(labels.numpy(), [IGNORE, 0, 1]).all()
