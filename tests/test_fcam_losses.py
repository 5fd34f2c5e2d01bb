"""F-CAM losses: CRF loss vs a brute-force dense computation, the extended log-barrier, pCE, t schedule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wsol.errors import WSOLError
from wsol.fcam.losses import (
    FCAMLossWeights,
    LogBarrierSchedule,
    dense_crf_loss,
    dense_crf_loss_bruteforce,
    extended_log_barrier,
    fcam_loss,
    partial_cross_entropy,
    size_loss,
)
from wsol.fcam.sampling import IGNORE


def _image_and_probs(b: int = 2, h: int = 9, w: int = 11, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(b, 3, h, w, generator=g, dtype=torch.float64) * 255
    image[:, :, : h // 2] *= 0.2  # two colour regions so the affinity is far from constant
    probs = torch.randn(b, 2, h, w, generator=g, dtype=torch.float64).softmax(1)
    return image, probs


def _dense_matrix_loss(image: torch.Tensor, probs: torch.Tensor, sigma_rgb: float, sigma_xy: float) -> torch.Tensor:
    """The loss with the N x N affinity matrix built explicitly (differentiable, float64)."""
    b, k, h, w = probs.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    pos = torch.stack([xs.flatten(), ys.flatten()], 1)
    total = probs.new_zeros(())
    for i in range(b):
        rgb = image[i].flatten(1).T
        a = torch.exp(-torch.cdist(pos, pos) ** 2 / (2 * sigma_xy ** 2)
                      - torch.cdist(rgb, rgb) ** 2 / (2 * sigma_rgb ** 2))
        s = probs[i].flatten(1)
        total = total + torch.einsum("ki,ij,kj->", s, a, s)
    return -total / b


@pytest.mark.parametrize("sigmas", [(15.0, 100.0), (30.0, 3.0)])
def test_crf_loss_equals_bruteforce(sigmas: tuple[float, float]) -> None:
    image, probs = _image_and_probs()
    ours = dense_crf_loss(image, probs, *sigmas, downsample=1, chunk=17)  # chunking across row blocks
    brute = dense_crf_loss_bruteforce(image, probs, *sigmas)
    assert torch.allclose(ours.double(), brute, rtol=1e-5)


def test_crf_gradient_equals_dense_autograd() -> None:
    image, probs = _image_and_probs(h=7, w=8)
    p1 = probs.clone().requires_grad_(True)
    p2 = probs.clone().requires_grad_(True)
    dense_crf_loss(image, p1, 15.0, 5.0).backward()
    _dense_matrix_loss(image, p2, 15.0, 5.0).backward()
    assert torch.allclose(p1.grad.double(), p2.grad, rtol=1e-4, atol=1e-6)


def test_crf_loss_through_softmax_and_weight() -> None:
    image, _ = _image_and_probs(h=6, w=6)
    logits = torch.randn(2, 2, 6, 6, requires_grad=True)
    w = FCAMLossWeights(alpha=0.0, lambda_crf=0.5, lambda_size=0.0)
    labels = torch.full((2, 6, 6), IGNORE)
    out = fcam_loss(logits, labels, image.float(), 1.0, w)
    ref = 0.5 * dense_crf_loss_bruteforce(image, logits.detach().double().softmax(1))
    assert math.isclose(float(out["loss"].detach()), float(ref), rel_tol=1e-5)
    out["loss"].backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize(("s", "bound"), [(2, 0.02), (4, 0.06)])
def test_crf_downsampled_error_is_small(s: int, bound: float) -> None:
    """The documented approximation: a 48 x 48 two-colour image with a blurred disc, smooth probabilities."""
    h = w = 48
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    disc = (((yy - 22) ** 2 + (xx - 26) ** 2) < 14 ** 2).double()[None, None]
    disc = F.avg_pool2d(disc, 5, 1, 2)
    image = torch.cat([60 + 150 * disc, 200 - 120 * disc, 90 + 0 * disc], 1)
    fg = torch.sigmoid((disc - 0.5) * 6)
    probs = torch.cat([1 - fg, fg], 1)
    exact = dense_crf_loss(image, probs, 15.0, 100.0, downsample=1)
    approx = dense_crf_loss(image, probs, 15.0, 100.0, downsample=s)
    assert abs(float(approx) / float(exact) - 1) < bound


def test_crf_shape_errors() -> None:
    with pytest.raises(WSOLError):
        dense_crf_loss(torch.rand(1, 3, 8, 8), torch.rand(1, 2, 4, 4))
    with pytest.raises(WSOLError):
        dense_crf_loss(torch.rand(1, 1, 8, 8), torch.rand(1, 2, 8, 8))


def _elb_formula(z: float, t: float) -> float:
    if z <= -1 / t ** 2:
        return -math.log(-z) / t
    return t * z - math.log(1 / t ** 2) / t + 1 / t


def _elb_derivative(z: float, t: float) -> float:
    return -1 / (t * z) if z <= -1 / t ** 2 else t


@pytest.mark.parametrize("t", [1.0, 1.01 ** 37, 10.0])
def test_elb_matches_formula_and_gradient(t: float) -> None:
    zs = [-5000.0, -3.0, -1.0, -1 / t ** 2, -1 / t ** 2 + 1e-3, -0.001, 0.0, 0.5, 20.0]
    z = torch.tensor(zs, dtype=torch.float64, requires_grad=True)
    out = extended_log_barrier(z, t)
    for zi, oi in zip(zs, out.tolist()):
        assert math.isclose(oi, _elb_formula(zi, t), rel_tol=1e-12, abs_tol=1e-12)
    out.sum().backward()
    for zi, gi in zip(zs, z.grad.tolist()):
        assert math.isclose(gi, _elb_derivative(zi, t), rel_tol=1e-9)
    # continuous with a continuous derivative at the switch point
    b = -1 / t ** 2
    assert math.isclose(_elb_formula(b, t), t * b - math.log(1 / t ** 2) / t + 1 / t, rel_tol=1e-12)
    assert math.isclose(-1 / (t * b), t, rel_tol=1e-12)


def test_elb_rejects_bad_t() -> None:
    with pytest.raises(WSOLError):
        extended_log_barrier(torch.zeros(1), 0.0)


def test_size_loss_is_mean_elb_of_negative_sums() -> None:
    probs = torch.rand(3, 2, 5, 4, dtype=torch.float64)
    t = 2.0
    expected = sum(_elb_formula(-float(probs[b, r].sum()), t) for b in range(3) for r in range(2)) / 6
    assert math.isclose(float(size_loss(probs, t)), expected, rel_tol=1e-6)


def test_t_schedule() -> None:
    s = LogBarrierSchedule()
    assert s.t(0) == 1.0
    assert math.isclose(s.t(1), 1.01)
    assert math.isclose(s.t(50), 1.01 ** 50)
    assert s.t(10_000) == 10.0


def test_partial_cross_entropy() -> None:
    logits = torch.randn(2, 2, 4, 4)
    labels = torch.full((2, 4, 4), IGNORE)
    labels[0, 1, 1] = 1
    labels[1, 2, 3] = 0
    expected = (F.cross_entropy(logits[0:1, :, 1, 1], torch.tensor([1]))
                + F.cross_entropy(logits[1:2, :, 2, 3], torch.tensor([0]))) / 2
    assert torch.allclose(partial_cross_entropy(logits, labels), expected)
    assert float(partial_cross_entropy(logits, torch.full((2, 4, 4), IGNORE))) == 0.0
