"""The Grad-CAM family's shared machinery pinned where the reference comparisons cannot see: the tests that
kill mutmut's surviving mutants of ``wsol.cams.gradient`` (issue 12; see benchmarks/results/mutation.md)."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import wsol.cams.gradient as gradient
from wsol.cams import compute_cams
from wsol.cams.gradient import activations_and_grads, gradcampp_weights
from wsol.models import LinearHead, WSOLClassifier


class TwoConvs(nn.Module):
    """conv1 -> ReLU -> conv2 as the features, plus a branch that forward never runs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.unused = nn.Conv2d(4, 4, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x)))


@pytest.fixture()
def model() -> WSOLClassifier:
    torch.manual_seed(0)
    return WSOLClassifier(TwoConvs(), LinearHead(nn.Linear(5, 3))).eval()


def test_the_feature_layer_takes_the_path_without_hooks(model, monkeypatch) -> None:
    """At F (by default, or named as the model's feature layer) the backbone runs once without autograd and
    no forward hook is set; another layer is captured by a hook."""
    x = torch.randn(2, 3, 8, 8)
    expected = compute_cams(model, x, [0, 2], "gradcam")

    def no_hooks(_layer):
        raise AssertionError("a hook was set for the feature layer")

    monkeypatch.setattr(gradient, "capture_output", no_hooks)
    for layer in (None, model.feature_layer):
        act, grad, logits, tgt = activations_and_grads(model, x, torch.tensor([0, 2]), layer)
        assert act.shape == (2, 5, 8, 8) and grad.shape == act.shape and tgt.tolist() == [0, 2]
        torch.testing.assert_close(logits, expected.logits)
    with pytest.raises(AssertionError, match="a hook was set"):
        activations_and_grads(model, x, None, model.backbone.conv1)


def test_an_intermediate_layer_works_with_frozen_parameters(model) -> None:
    """The input requires grad, so the captured activation does even when no parameter does (a frozen
    backbone, as F-CAM keeps it)."""
    for p in model.parameters():
        p.requires_grad_(False)
    act, grad, _, _ = activations_and_grads(model, torch.randn(2, 3, 8, 8), None, model.backbone.conv1)
    assert act.shape == (2, 4, 8, 8) and grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_a_layer_that_forward_never_runs_is_a_clear_error(model) -> None:
    message = "target layer Conv2d produced no differentiable output"
    with pytest.raises(RuntimeError, match=f"^{re.escape(message)}$"):
        activations_and_grads(model, torch.randn(1, 3, 8, 8), None, model.backbone.unused)


def test_gradcampp_weights_by_hand() -> None:
    """A = 1 on a 2 x 2 map (sum 4); gradients 1, 2, 0.5, -1 with g2 = g^2, g3 = g^3:
    alpha = g^2 / (2 g^2 + 4 g^3) = 1/6, 1/10, 1/4 and -1/2, times ReLU(g): 1/6 + 1/5 + 1/8 + 0."""
    act = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    g1 = torch.tensor([[[[1.0, 2.0], [0.5, -1.0]]]], dtype=torch.float64)
    weights = gradcampp_weights(act, g1, g1**2, g1**3, eps=0.0)
    torch.testing.assert_close(weights, torch.tensor([[1 / 6 + 1 / 5 + 1 / 8]], dtype=torch.float64))
    zero = torch.zeros_like(g1)
    assert gradcampp_weights(act, zero, zero, zero).tolist() == [[0.0]]  # no gradient, no weight (eps > 0)


def test_smooth_gradcampp_defaults_are_torchcams_and_seeded(model) -> None:
    from wsol.cams.smoothgradcampp import SmoothGradCAMpp

    method = SmoothGradCAMpp()
    assert (method.n_samples, method.std, method.seed) == (4, 0.3, 0)
    x = torch.randn(2, 3, 8, 8)
    layer = model.backbone.conv1  # below a ReLU: the gradients there depend on the noise (at F they do not)
    default = compute_cams(model, x, [0, 1], "smoothgradcampp", target_layer=layer).maps
    torch.testing.assert_close(default, compute_cams(model, x, [0, 1], "smoothgradcampp", target_layer=layer,
                                                     n_samples=4, std=0.3, seed=0).maps, rtol=0, atol=0)
    for other in ({"seed": 1}, {"n_samples": 5}, {"std": 0.4}):
        assert not torch.equal(default, compute_cams(model, x, [0, 1], "smoothgradcampp", target_layer=layer,
                                                     **other).maps)


def test_smooth_gradcampp_without_a_seed_draws_from_the_global_generator(model) -> None:
    x = torch.randn(1, 3, 8, 8)
    layer = model.backbone.conv1
    torch.manual_seed(5)
    first = compute_cams(model, x, [2], "smoothgradcampp", seed=None, target_layer=layer).maps
    torch.manual_seed(5)
    again = compute_cams(model, x, [2], "smoothgradcampp", seed=None, target_layer=layer).maps
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    assert not torch.equal(first, compute_cams(model, x, [2], "smoothgradcampp", seed=None, target_layer=layer).maps)


@pytest.mark.parametrize("method", ["gradcam", "smoothgradcampp", "xgradcam"])
def test_relu_false_keeps_the_negative_evidence(model, method) -> None:
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    raw = compute_cams(model, x, [0, 1, 2], method, relu=False).maps
    assert (raw < 0).any()  # this model's maps have negative parts
    torch.testing.assert_close(compute_cams(model, x, [0, 1, 2], method).maps, raw.clamp_min(0), rtol=0, atol=0)


def test_xgradcam_weights_by_hand() -> None:
    """``sum(g A) / (sum A + eps)``: A sums to 1.5, g A to 3 -> 3 / (1.5 + 0.5) with eps = 0.5."""
    from wsol.cams.xgradcam import XGradCAM

    act = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]]])
    grad = torch.tensor([[[[2.0, 2.0], [7.0, 7.0]]]])
    assert XGradCAM(eps=0.5).weights(act, grad).tolist() == [[1.5]]
    assert XGradCAM().eps == 1e-7


def test_a_model_without_a_feature_layer_attribute_takes_the_hook(model) -> None:
    """Any module with ``features`` / ``logits_from_features`` / ``forward`` works at a named layer, whether
    or not it declares a ``feature_layer``."""

    class Bare(nn.Module):
        def __init__(self, inner: WSOLClassifier) -> None:
            super().__init__()
            self.inner = inner

        def features(self, x):
            return self.inner.features(x)

        def logits_from_features(self, f):
            return self.inner.logits_from_features(f)

        def forward(self, x):
            return self.inner(x)

    bare = Bare(model)
    assert not hasattr(bare, "feature_layer")
    x = torch.randn(2, 3, 8, 8)
    act, grad, logits, _ = activations_and_grads(bare, x, None, "inner.backbone.conv1")
    expected = activations_and_grads(model, x, None, model.backbone.conv1)
    torch.testing.assert_close(act, expected[0])
    torch.testing.assert_close(grad, expected[1])


def test_eigencam_flips_a_map_whose_frame_is_high() -> None:
    """One channel on 4 x 4: pixel (1, 1) = 10, the other interior pixels -5, the frame 1. Centred, the first
    component is that map; oriented by its largest entry (+9.56 at (1, 1)) the whole frame (0.56) lies above
    the mean (0), so the map is negated: the frame ends up low."""
    from wsol.cams.eigencam import eigen_maps

    act = torch.ones(1, 1, 4, 4)
    act[0, 0, 1:3, 1:3] = -5.0
    act[0, 0, 1, 1] = 10.0
    centred = act[0, 0] - act.mean()
    out = eigen_maps(act)[0]
    torch.testing.assert_close(out, -centred, rtol=1e-5, atol=1e-5)  # one channel: s x u = the centred map
    assert out[1, 1] < 0 and (out[0] < 0).all()


def test_eigencam_at_the_feature_layer_sets_no_hook(model, monkeypatch) -> None:
    import wsol.cams.eigencam as eigencam

    x = torch.randn(2, 3, 8, 8)
    expected = compute_cams(model, x, None, "eigencam").maps

    def no_hooks(_layer):
        raise AssertionError("a hook was set for the feature layer")

    monkeypatch.setattr(eigencam, "capture_output", no_hooks)
    torch.testing.assert_close(compute_cams(model, x, None, "eigencam", target_layer=model.feature_layer).maps,
                               expected, rtol=0, atol=0)
    with pytest.raises(AssertionError, match="a hook was set"):
        compute_cams(model, x, None, "eigencam", target_layer=model.backbone.conv1)


def test_eigencam_on_a_model_without_a_feature_layer_attribute(model) -> None:
    from wsol.cams.eigencam import EigenCAM

    class Bare(nn.Module):
        def __init__(self, inner: WSOLClassifier) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    x = torch.randn(2, 3, 8, 8)
    bare = Bare(model)
    bare.num_classes = model.num_classes
    assert not hasattr(bare, "feature_layer")
    got = EigenCAM(target_layer="inner.backbone.conv1")(bare, x)
    torch.testing.assert_close(got.maps, EigenCAM(target_layer=model.backbone.conv1)(model, x).maps)
