"""The dense CRF's downsampled path (what a 224 px map runs: s = 4) against a brute-force mean field written
from the definition: s x s block means (partial blocks at the right and bottom edges average the pixels they
have), block centres in input pixels, explicit N x N kernels in float64, and a bilinear (half-pixel) upsampling
back to the input size; at s = 1, 2, 3 and 4 and with the kernel rows split in several chunks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wsol.maps.crf import crf_refine

SETTINGS = {"iterations": 3, "sigma_rgb": 40.0, "sigma_xy": 6.0, "bilateral_weight": 2.0, "smooth_sigma_xy": 2.5,
            "smooth_weight": 1.5}


def block_means(a: np.ndarray, s: int) -> np.ndarray:
    """(..., H, W) -> (..., ceil(H/s), ceil(W/s)): the mean of each s x s block's pixels that exist."""
    h, w = a.shape[-2:]
    gh, gw = math.ceil(h / s), math.ceil(w / s)
    out = np.zeros((*a.shape[:-2], gh, gw))
    for i in range(gh):
        for j in range(gw):
            out[..., i, j] = a[..., i * s:(i + 1) * s, j * s:(j + 1) * s].mean(axis=(-2, -1))
    return out


def bilinear_half_pixel(g: np.ndarray, h: int, w: int) -> np.ndarray:
    """(gh, gw) -> (h, w), sample (y, x) at ``(y + 0.5) gh / h - 0.5`` (clamped at 0), linear between the two
    nearest grid points (the last one repeated)."""
    gh, gw = g.shape

    def axis(n_out: int, n_in: int) -> np.ndarray:
        m = np.zeros((n_out, n_in))
        for o in range(n_out):
            src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
            i0 = min(int(np.floor(src)), n_in - 1)
            i1 = min(i0 + 1, n_in - 1)
            t = src - i0
            m[o, i0] += 1 - t
            m[o, i1] += t
        return m

    return axis(h, gh) @ g @ axis(w, gw).T


def brute_force_downsampled(image: np.ndarray, score: np.ndarray, s: int, iterations: int, sigma_rgb: float,
                            sigma_xy: float, bilateral_weight: float, smooth_sigma_xy: float,
                            smooth_weight: float) -> np.ndarray:
    h, w = score.shape
    rgb = block_means(image.astype(np.float64), s)  # (3, gh, gw)
    p = block_means(score.astype(np.float64), s)
    gh, gw = p.shape
    ys, xs = np.meshgrid(np.arange(gh) * s + (s - 1) / 2, np.arange(gw) * s + (s - 1) / 2, indexing="ij")
    pos = np.stack([xs.ravel(), ys.ravel()], 1)
    col = rgb.reshape(3, -1).T
    d_pos = ((pos[:, None] - pos[None]) ** 2).sum(-1)
    d_col = ((col[:, None] - col[None]) ** 2).sum(-1)
    k = (bilateral_weight * np.exp(-d_pos / (2 * sigma_xy ** 2) - d_col / (2 * sigma_rgb ** 2))
         + smooth_weight * np.exp(-d_pos / (2 * smooth_sigma_xy ** 2)))
    np.fill_diagonal(k, 0)  # no message from a node to itself
    p = np.clip(p.ravel(), 1e-5, 1 - 1e-5)
    unary = np.stack([np.log(1 - p), np.log(p)], 1)

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    q = softmax(unary)
    for _ in range(iterations):
        q = softmax(unary + k @ q)
    fg = q[:, 1].reshape(gh, gw)
    return fg if (gh, gw) == (h, w) else bilinear_half_pixel(fg, h, w)


def _scene(h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An image with a bright rectangle and texture, and a smooth map partly over it."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, h, w, generator=g) * 60
    image[:, :, h // 4: 3 * h // 4, w // 3:] += 150
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    score = torch.sigmoid((xx - w / 2) / 2.0) * torch.exp(-((yy - h / 2) / (h / 3)) ** 2)
    score = 0.9 * score + 0.1 * torch.rand(h, w, generator=g)
    return image, score[None].clamp(0, 1)


@pytest.mark.parametrize("s", [1, 2, 3, 4])
@pytest.mark.parametrize("chunk", [2048, 7, 16])
def test_downsampled_crf_equals_brute_force(s: int, chunk: int) -> None:
    h, w = 21, 26  # not multiples of s: partial blocks at the right and bottom
    image, score = _scene(h, w, seed=s)
    ours = crf_refine(image, score, downsample=s, chunk=chunk, **SETTINGS)[0]
    want = brute_force_downsampled(image[0].numpy(), score[0].numpy(), s, **SETTINGS)
    assert ours.shape == (h, w)
    assert np.abs(ours.double().numpy() - want).max() < 2e-5
    n = math.ceil(h / s) * math.ceil(w / s)
    assert chunk >= n or n / chunk > 1  # the small chunks do split the kernel rows


def test_a_batch_equals_each_image_alone() -> None:
    a_img, a_map = _scene(18, 22, seed=5)
    b_img, b_map = _scene(18, 22, seed=6)
    both = crf_refine(torch.cat([a_img, b_img]), torch.cat([a_map, b_map]), downsample=2, chunk=9, **SETTINGS)
    for i, (img, m) in enumerate(((a_img, a_map), (b_img, b_map))):
        want = brute_force_downsampled(img[0].numpy(), m[0].numpy(), 2, **SETTINGS)
        assert np.abs(both[i].double().numpy() - want).max() < 2e-5


def test_a_224_map_runs_at_s_4_by_default() -> None:
    image, score = _scene(224, 12, seed=0)  # the longest side decides: ceil(224 / 64) = 4
    default = crf_refine(image, score, iterations=1)
    assert torch.equal(default, crf_refine(image, score, iterations=1, downsample=4))
    assert not torch.allclose(default, crf_refine(image, score, iterations=1, downsample=3), atol=1e-3)


@pytest.mark.parametrize("h, s", [(64, 1), (65, 2), (128, 2), (129, 3)])
def test_default_downsampling_keeps_the_grid_at_64(h: int, s: int) -> None:
    image, score = _scene(h, 5, seed=1)
    default = crf_refine(image, score, iterations=1)
    assert torch.equal(default, crf_refine(image, score, iterations=1, downsample=s))
    assert not torch.equal(default, crf_refine(image, score, iterations=1, downsample=s + 1))
