"""Mutation-testing follow-up for ``wsol.fcam.losses`` (issue 12): hand-computed CRF energies with the default
kernel, downsampling on sizes the block size does not divide, exact error messages, the log-barrier's switch
point, the chunk size reaching the dense filter, and the dtypes / values of terms that are switched off."""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

import wsol.fcam.losses as losses
from wsol.errors import WSOLError
from wsol.fcam.losses import (
    FCAMLossWeights,
    dense_crf_loss,
    dense_crf_loss_bruteforce,
    extended_log_barrier,
    fcam_loss,
)
from wsol.fcam.sampling import IGNORE


def _energy_by_hand(rgb: list[list[float]], pos: list[tuple[float, float]], probs: list[list[float]],
                    sigma_rgb: float, sigma_xy: float) -> float:
    """``sum_k sum_ij S_ki S_kj A_ij`` with plain floats: ``rgb[i]``, ``pos[i] = (x, y)``, ``probs[k][i]``."""
    n = len(pos)
    total = 0.0
    for i in range(n):
        for j in range(n):
            dxy = (pos[i][0] - pos[j][0]) ** 2 + (pos[i][1] - pos[j][1]) ** 2
            drgb = sum((a - b) ** 2 for a, b in zip(rgb[i], rgb[j]))
            a_ij = math.exp(-dxy / (2 * sigma_xy ** 2) - drgb / (2 * sigma_rgb ** 2))
            total += sum(p[i] * p[j] for p in probs) * a_ij
    return total


def _strip() -> tuple[torch.Tensor, torch.Tensor]:
    """A 1 x 48 strip (so positions 47 px apart matter at sigma_xy = 100) of two colours 30 apart."""
    w = 48
    image = torch.zeros(1, 3, 1, w, dtype=torch.float64)
    image[0, :, 0, ::3] = torch.tensor([30.0, 0.0, 0.0])[:, None]
    image[0, :, 0, 1::3] = torch.tensor([10.0, 20.0, 5.0])[:, None]
    fg = torch.linspace(0.05, 0.95, w, dtype=torch.float64)
    probs = torch.stack([1 - fg, fg])[None, :, None, :]
    return image, probs


def _strip_by_hand(sigma_rgb: float, sigma_xy: float) -> float:
    image, probs = _strip()
    w = image.shape[-1]
    rgb = image[0, :, 0].T.tolist()
    pos = [(float(x), 0.0) for x in range(w)]
    return -_energy_by_hand(rgb, pos, probs[0, :, 0].tolist(), sigma_rgb, sigma_xy)


def test_default_kernel_is_sigma_rgb_15_sigma_xy_100() -> None:
    ref = _strip_by_hand(15.0, 100.0)
    # the strip separates the documented defaults from their neighbours by far more than the tolerance
    assert abs(_strip_by_hand(16.0, 100.0) / ref - 1) > 1e-3
    assert abs(_strip_by_hand(15.0, 101.0) / ref - 1) > 1e-4  # 50x the 2e-6 tolerance below
    image, probs = _strip()
    assert math.isclose(float(dense_crf_loss(image, probs)), ref, rel_tol=2e-6)
    assert math.isclose(float(dense_crf_loss_bruteforce(image, probs)), ref, rel_tol=1e-12)


def test_bruteforce_does_not_warn() -> None:
    """The reference passes meshgrid's ``indexing`` (PyTorch warns, once per process, when it is left out)."""
    image, probs = _strip()
    before = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            dense_crf_loss_bruteforce(image[..., :3], probs[..., :3])
    finally:
        torch.set_warn_always(before)


def test_empty_image_has_zero_energy() -> None:
    """An image without pixels: the empty sum, 0 (the reference in float64), not an error."""
    image, probs = torch.zeros(1, 3, 0, 5), torch.zeros(1, 2, 0, 5)
    fast = dense_crf_loss(image, probs)
    assert fast.dtype == torch.float32 and float(fast) == 0.0
    brute = dense_crf_loss_bruteforce(image, probs)
    assert brute.dtype == torch.float64 and float(brute) == 0.0


def _pooled_by_hand(image: torch.Tensor, probs: torch.Tensor, s: int, sigma_rgb: float, sigma_xy: float) -> float:
    """The documented downsampled loss: ceil-divided s x s blocks (edge blocks average their own pixels),
    block centres ``s i + (s - 1) / 2`` in input pixels, energy times ``s^4``, over ``B``."""
    b, k, h, w = probs.shape
    total = 0.0
    for n in range(b):
        rgb, pos, pr = [], [], [[] for _ in range(k)]
        for by in range(math.ceil(h / s)):
            for bx in range(math.ceil(w / s)):
                ys, xs = slice(by * s, min(h, by * s + s)), slice(bx * s, min(w, bx * s + s))
                rgb.append(image[n, :, ys, xs].mean((1, 2)).tolist())
                pos.append((bx * s + (s - 1) / 2, by * s + (s - 1) / 2))
                for c in range(k):
                    pr[c].append(float(probs[n, c, ys, xs].mean()))
        total += _energy_by_hand(rgb, pos, pr, sigma_rgb, sigma_xy)
    return -total * s ** 4 / b


@pytest.mark.parametrize(("h", "w", "s"), [(5, 7, 2), (7, 4, 3)])
def test_downsampled_loss_on_sizes_the_block_does_not_divide(h: int, w: int, s: int) -> None:
    g = torch.Generator().manual_seed(3)
    image = torch.rand(2, 3, h, w, generator=g, dtype=torch.float64) * 255
    probs = torch.randn(2, 2, h, w, generator=g, dtype=torch.float64).softmax(1)
    ref = _pooled_by_hand(image, probs, s, 40.0, 3.0)
    ours = dense_crf_loss(image, probs, 40.0, 3.0, downsample=s)
    assert math.isclose(float(ours), ref, rel_tol=1e-5)


def test_shape_mismatch_message() -> None:
    msg = "CRF loss: probabilities (2, 2, 8, 8) do not match image (1, 3, 8, 8)"
    with pytest.raises(WSOLError, match=rf"^{re.escape(msg)}$"):
        dense_crf_loss(torch.rand(1, 3, 8, 8), torch.rand(2, 2, 8, 8))  # 4-D, same size, other batch
    msg = "CRF loss: probabilities (1, 8, 8) do not match image (1, 3, 8, 8)"
    with pytest.raises(WSOLError, match=rf"^{re.escape(msg)}$"):
        dense_crf_loss(torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8))


def test_image_without_channels_is_reported_as_a_bad_image() -> None:
    """Probabilities match the image's batch and size: the error is the image's shape, not a mismatch."""
    msg = "CRF: image must be (B, 3, H, W), got shape (1, 8, 8)"
    with pytest.raises(WSOLError, match=rf"^{re.escape(msg)}$"):
        dense_crf_loss(torch.rand(1, 8, 8), torch.rand(1, 2, 8, 8))


@pytest.mark.parametrize("s", [0, -2])
def test_downsample_message(s: int) -> None:
    msg = f"CRF loss: downsample must be >= 1, got {s}"
    with pytest.raises(WSOLError, match=rf"^{re.escape(msg)}$"):
        dense_crf_loss(torch.rand(1, 3, 4, 4), torch.rand(1, 2, 4, 4), downsample=s)


@pytest.mark.parametrize("t", [0.0, -1.5])
def test_log_barrier_t_message(t: float) -> None:
    msg = f"log-barrier t must be > 0, got {t}"
    with pytest.raises(WSOLError, match=rf"^{re.escape(msg)}$"):
        extended_log_barrier(torch.zeros(2), t)


def test_log_barrier_switch_point_takes_the_log_branch() -> None:
    """At ``z = -1/t^2`` the definition (``z <= -1/t^2``) is the log: with t = 0.5, z = -4, ELB = -2 log 4.
    The linear piece, equal in exact arithmetic, rounds differently there."""
    t, z = 0.5, -4.0
    log_branch = -math.log(4.0) / t
    linear = t * z - math.log(1.0 / t ** 2) / t + 1.0 / t
    assert log_branch != linear
    out = extended_log_barrier(torch.tensor([z], dtype=torch.float64), t)
    assert out.item() == log_branch


class _Spy:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.chunks: list[int] = []
        real = losses.dense_gaussian_filter

        def spy(features: torch.Tensor, values: torch.Tensor, *args: int, **kwargs: int) -> torch.Tensor:
            self.chunks.append(kwargs["chunk"] if "chunk" in kwargs else (args[0] if args else None))
            return real(features, values, *args, **kwargs)

        monkeypatch.setattr(losses, "dense_gaussian_filter", spy)


def test_chunk_reaches_the_dense_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    """``chunk`` bounds the filter's memory (O(chunk x N)): the dense filter must receive it, default 2048."""
    spy = _Spy(monkeypatch)
    image, probs = _strip()
    ref = dense_crf_loss(image, probs, chunk=5)
    assert dense_crf_loss(image, probs) == pytest.approx(float(ref), rel=1e-6)
    assert spy.chunks == [5, 2048]


def test_energy_function_gradcheck() -> None:
    """The custom backward ``2 A S`` against finite differences, float64, two chunks."""
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    values = torch.rand(2, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: losses._DenseCRFEnergy.apply(feats, v, 3), (values,))


def _fcam_inputs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 2, 4, 4, generator=g).to(dtype)
    labels = torch.full((2, 4, 4), IGNORE)
    labels[0, 0, 0], labels[1, 3, 2] = 1, 0
    image = torch.rand(2, 3, 4, 4, generator=g) * 255
    return logits, labels, image


def test_switched_off_terms_are_float32_zeros() -> None:
    logits, labels, image = _fcam_inputs(torch.float64)
    out = fcam_loss(logits, labels, image, 1.0, FCAMLossWeights(lambda_crf=0.0, lambda_size=0.0))
    for name in ("pce", "crf", "size", "loss"):
        assert out[name].dtype == torch.float32, name
    assert out["crf"].item() == 0.0 and out["size"].item() == 0.0
    assert out["loss"].item() == out["pce"].item()
    # switched on, the same inputs give non-zero terms: a zero above is the switch, not the data
    on = fcam_loss(logits, labels, image, 1.0, FCAMLossWeights())
    assert on["crf"].item() < 0 and on["size"].item() != 0.0


def test_fcam_loss_uses_the_crf_downsample() -> None:
    logits, labels, image = _fcam_inputs(torch.float32)
    w = FCAMLossWeights(alpha=0.0, lambda_size=0.0, sigma_rgb=20.0, sigma_xy=2.0, crf_downsample=2)
    out = fcam_loss(logits, labels, image, 1.0, w)
    probs = logits.softmax(1)
    pooled = dense_crf_loss(image, probs, 20.0, 2.0, downsample=2)
    full = dense_crf_loss(image, probs, 20.0, 2.0, downsample=1)
    assert abs(float(pooled) / float(full) - 1) > 1e-3
    assert math.isclose(float(out["crf"]), float(pooled), rel_tol=1e-6)
    assert math.isclose(float(out["loss"]), 2e-9 * float(pooled), rel_tol=1e-6)


def test_pooled_probabilities_keep_their_gradient() -> None:
    """Through the ceil-mode pooling, d loss / d S equals the pooled formula differentiated (sum of probs = 1
    per block would hide a wrong divisor, so probabilities are not normalised here)."""
    g = torch.Generator().manual_seed(5)
    image = torch.rand(1, 3, 3, 5, generator=g, dtype=torch.float64) * 255
    probs = torch.rand(1, 2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    dense_crf_loss(image, probs, 30.0, 2.0, downsample=2).backward()
    ref = probs.detach().clone().requires_grad_(True)
    p = F.avg_pool2d(ref, 2, 2, ceil_mode=True).flatten(2).transpose(1, 2)[0]  # (N, K)
    img = F.avg_pool2d(image, 2, 2, ceil_mode=True)[0].flatten(1).T
    ys, xs = torch.meshgrid(torch.arange(2.0, dtype=torch.float64) * 2 + 0.5,
                            torch.arange(3.0, dtype=torch.float64) * 2 + 0.5, indexing="ij")
    pos = torch.stack([xs.flatten(), ys.flatten()], 1)
    a = torch.exp(-torch.cdist(pos, pos) ** 2 / 8 - torch.cdist(img, img) ** 2 / 1800)
    (-(p.T @ a @ p).trace() * 16).backward()
    assert torch.allclose(probs.grad, ref.grad, rtol=1e-4, atol=1e-6)
