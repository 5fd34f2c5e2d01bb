"""wsol.cams: exact identities, agreement with pytorch-grad-cam / torchcam, PC1 vs sklearn, state hygiene."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from wsol.cams import METHODS, CAMOutput, compute_cams, get_method
from wsol.cams.pc1 import orient_by_max_abs
from wsol.errors import WSOLError
from wsol.models import LayerNormHead, WSOLClassifier, build_model

TARGETS = [3, 7]
# the classifier-based methods (the registry also holds methods needing other models, e.g. fcam)
CLASSIFIER_METHODS = ["cam", "eigencam", "gradcam", "gradcampp", "layercam", "pc1", "smoothgradcampp", "xgradcam"]


@pytest.fixture(scope="module")
def model() -> WSOLClassifier:
    torch.manual_seed(0)
    return build_model("resnet18", num_classes=10).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))


def _minmax(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    maps = maps - maps.amin((1, 2), keepdim=True)
    return maps / (maps.amax((1, 2), keepdim=True) + eps)


def _pgc_normalise(maps: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """pytorch-grad-cam's post-processing: ReLU, min-max, cv2 bilinear resize, ReLU, min-max."""
    out = []
    for m in maps.cpu().numpy():
        m = np.maximum(m, 0)
        m = m - m.min()
        m = cv2.resize(np.float32(m / (1e-7 + m.max())), size)
        m = np.maximum(m, 0) - np.maximum(m, 0).min()
        out.append(m / (1e-7 + m.max()))
    return np.stack(out)


# ---------------------------------------------------------------- registry and validation


def test_registry_and_unknown_method(model, images) -> None:
    assert set(CLASSIFIER_METHODS) <= set(METHODS)
    with pytest.raises(WSOLError, match=r"unknown CAM method 'gradcamxx'; valid: cam, pc1"):
        compute_cams(model, images, method="gradcamxx")
    with pytest.raises(WSOLError, match="bad options"):
        get_method("cam", alpha=3)
    assert type(get_method("Grad-CAM++")).__name__ == "GradCAMpp"


@pytest.mark.parametrize("method", CLASSIFIER_METHODS)
def test_every_method_shapes_and_targets(model, images, method) -> None:
    out = compute_cams(model, images, TARGETS, method=method)
    assert isinstance(out, CAMOutput)
    assert out.maps.shape == (2, 4, 4) and out.maps.dtype == torch.float32
    assert out.logits.shape == (2, 10) and out.targets.tolist() == TARGETS
    assert torch.isfinite(out.maps).all()


def test_target_forms(model, images) -> None:
    top1 = compute_cams(model, images).targets
    with torch.no_grad():
        assert top1.tolist() == model(images).argmax(1).tolist()
    assert compute_cams(model, images, "top1").targets.tolist() == top1.tolist()
    assert compute_cams(model, images, 5).targets.tolist() == [5, 5]
    assert compute_cams(model, images, torch.tensor([1, 2])).targets.tolist() == [1, 2]
    assert compute_cams(model, images, (4, 0)).targets.tolist() == [4, 0]
    assert compute_cams(model, images, np.int64(3)).targets.tolist() == [3, 3]  # a label read with numpy
    with pytest.raises(WSOLError, match="a bool is not a class index"):
        compute_cams(model, images, np.True_)


@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_bad_inputs(model, images, method) -> None:
    with pytest.raises(WSOLError, match=r"target class 10 out of range \[0, 10\)"):
        compute_cams(model, images, [1, 10], method=method)
    with pytest.raises(WSOLError, match="target class -1"):
        compute_cams(model, images, -1, method=method)
    with pytest.raises(WSOLError, match="got 3 class indices for a batch of 2"):
        compute_cams(model, images, [1, 2, 3], method=method)
    with pytest.raises(WSOLError, match=r"4-D \(B, 3, H, W\), got shape \(3, 128, 128\)"):
        compute_cams(model, images[0], method=method)
    with pytest.raises(WSOLError, match="unknown value 'best'"):
        compute_cams(model, images, "best", method=method)


# ---------------------------------------------------------------- CAM identities


def test_cam_logit_identity(model, images) -> None:
    out = compute_cams(model, images, TARGETS, include_bias=True)
    idx = torch.arange(2)
    torch.testing.assert_close(out.maps.mean((1, 2)), out.logits[idx, out.targets], atol=1e-5, rtol=1e-5)


def test_cam_logit_identity_layernorm_head() -> None:
    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=4, padding=1)

        def forward_features(self, x):
            return self.conv(x)

    torch.manual_seed(0)
    norm = nn.LayerNorm(8)
    with torch.no_grad():
        norm.weight.uniform_(-2, 2)
    m = WSOLClassifier(Toy(), LayerNormHead(norm, nn.Linear(8, 6))).eval()
    out = compute_cams(m, torch.randn(3, 3, 32, 32), [0, 5, 2], include_bias=True)
    torch.testing.assert_close(out.maps.mean((1, 2)), out.logits[torch.arange(3), out.targets],
                               atol=1e-5, rtol=1e-5)


def test_nwc_equals_cam_with_clamped_weights(model, images) -> None:
    out = compute_cams(model, images, TARGETS, nwc=True)
    with torch.no_grad():
        f = model.features(images)
    w = model.head.fc.weight[TARGETS].clamp_min(0)
    torch.testing.assert_close(out.maps, torch.einsum("bc,bchw->bhw", w, f))
    plain = compute_cams(model, images, TARGETS).maps
    torch.testing.assert_close(plain, torch.einsum("bc,bchw->bhw", model.head.fc.weight[TARGETS], f))


@pytest.mark.parametrize("method", ["cam", "gradcam", "pc1"])
def test_batch_equals_single(model, images, method) -> None:
    batch = compute_cams(model, images, TARGETS, method=method).maps
    for i in range(2):
        single = compute_cams(model, images[i:i + 1], TARGETS[i], method=method).maps[0]
        torch.testing.assert_close(batch[i], single, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- reference libraries


@pytest.mark.parametrize("ours,theirs", [("gradcam", "GradCAM"), ("gradcampp", "GradCAMPlusPlus"),
                                         ("xgradcam", "XGradCAM"), ("layercam", "LayerCAM")])
def test_against_pytorch_grad_cam(model, images, ours, theirs) -> None:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    mine = compute_cams(model, images, TARGETS, method=ours).maps
    with getattr(pytorch_grad_cam, theirs)(model, [model.feature_layer]) as ref:
        theirs_maps = ref(images, [ClassifierOutputTarget(t) for t in TARGETS])
    model.zero_grad(set_to_none=True)  # pytorch-grad-cam leaves .grad behind; we do not
    assert np.abs(_pgc_normalise(mine, (128, 128)) - theirs_maps).max() < 1e-4


@pytest.mark.parametrize("ours,theirs", [("gradcam", "GradCAM"), ("xgradcam", "XGradCAM"),
                                         ("layercam", "LayerCAM"), ("cam", "CAM")])
def test_against_torchcam(model, images, ours, theirs) -> None:
    import torchcam.methods as tcm

    mine = compute_cams(model, images, TARGETS, method=ours).maps
    kwargs = {"fc_layer": "head.fc"} if theirs == "CAM" else {}
    with getattr(tcm, theirs)(model, "feature_layer", **kwargs) as ref:
        scores = model(images)
        theirs_maps = ref(TARGETS, scores)[0]
    mine = mine.clamp_min(0) if ours != "cam" else mine
    assert (_minmax(mine) - theirs_maps).abs().max().item() < 1e-4


def test_eigencam_against_pytorch_grad_cam_up_to_sign(model, images) -> None:
    from pytorch_grad_cam import EigenCAM

    mine = compute_cams(model, images, method="eigencam").maps
    with EigenCAM(model, [model.feature_layer]) as ref:
        theirs = ref(images, None)
    for i in range(2):
        d = min(np.abs(_pgc_normalise(s * mine[i:i + 1], (128, 128)) - theirs[i:i + 1]).max() for s in (1, -1))
        assert d < 1e-4


# ---------------------------------------------------------------- PC1 against the paper's procedure


def _pc1_sklearn(f: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Direct transcription with sklearn, one image: weight, min-max per channel, PCA over channels."""
    from sklearn.decomposition import PCA

    c, h, wd = f.shape
    x = (f * w[:, None, None]).reshape(c, h * wd).astype(np.float64)
    mn, mx = x.min(1, keepdims=True), x.max(1, keepdims=True)
    rng = mx - mn
    x = np.where(rng > 1e-12, (x - mn) / np.where(rng > 1e-12, rng, 1), 0.0)
    v = PCA(n_components=1, svd_solver="full").fit(x).components_[0]
    v = orient_by_max_abs(torch.from_numpy(v)[None])[0].numpy()  # the sign PCA leaves open
    m = (v / v.max()).reshape(h, wd)
    frame = np.ones((h, wd), bool)
    frame[1:-1, 1:-1] = False
    on = m > m.mean()
    return 1 - m if on[frame].sum() > frame.sum() / 2 else m


def test_pc1_equals_sklearn_transcription() -> None:
    torch.manual_seed(0)
    m = build_model("resnet18", num_classes=10, large_feature_map=True, surgery=True).eval()
    x = torch.randn(2, 3, 96, 96)
    out = compute_cams(m, x, method="pc1")  # default target: the predicted class
    with torch.no_grad():
        f = m.features(x)
        assert out.targets.tolist() == m(x).argmax(1).tolist()
    for i in range(2):
        ref = _pc1_sklearn(f[i].numpy(), m.head.fc.weight[out.targets[i]].detach().numpy())
        assert np.abs(out.maps[i].numpy() - ref).max() < 1e-4


def test_pc1_sign_rule_object_high() -> None:
    from wsol.cams.pc1 import pc1_maps

    # channels that are all "object in the centre" or its inverse: PC1 must make the centre high
    h = w = 6
    centre = torch.zeros(h, w)
    centre[2:4, 2:4] = 1
    gen = torch.Generator().manual_seed(0)
    amp = torch.rand(16, 1, 1, generator=gen) + 0.5
    f = torch.cat([amp[:8] * centre, amp[8:] * (1 - centre)]).unsqueeze(0)
    f = f + 0.01 * torch.rand(f.shape, generator=gen)
    for sign in (1.0, -1.0):
        maps = pc1_maps(f, sign * torch.ones(1, 16))
        assert maps[0, 2:4, 2:4].mean() > maps[0][centre == 0].mean()


# ---------------------------------------------------------------- state and hook hygiene


def test_state_and_grads_left_as_found() -> None:
    torch.manual_seed(0)
    m = build_model("resnet18", num_classes=10)
    m.train()
    m.backbone.bn1.eval()  # mixed modes must be restored module by module
    m.backbone.conv1.weight.requires_grad_(False)
    sentinel = torch.ones_like(m.head.fc.weight)
    m.head.fc.weight.grad = sentinel
    modes = {n: mod.training for n, mod in m.named_modules()}
    before = [mod.running_mean.clone() for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]
    x = torch.randn(2, 3, 64, 64)
    for method in CLASSIFIER_METHODS:
        compute_cams(m, x, method=method)
    assert modes == {n: mod.training for n, mod in m.named_modules()}
    assert m.backbone.conv1.weight.requires_grad is False and m.head.fc.bias.requires_grad is True
    assert m.head.fc.weight.grad is sentinel and torch.equal(sentinel, torch.ones_like(sentinel))
    assert all(p.grad is None for n, p in m.named_parameters() if n != "head.fc.weight")
    after = [mod.running_mean for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))  # ran in eval mode


def test_hooks_released_even_on_error(model, images) -> None:
    out = compute_cams(model, images, TARGETS, method="gradcam", target_layer="backbone.layer3")
    assert out.maps.shape == (2, 8, 8)
    assert all(not mod._forward_hooks for mod in model.modules())

    class Boom(RuntimeError):
        pass

    def explode(_m, _i, _o):
        raise Boom("boom")

    handle = model.head.register_forward_hook(explode)
    try:
        with pytest.raises(Boom):
            compute_cams(model, images, method="layercam", target_layer=model.backbone.layer3)
    finally:
        handle.remove()
    assert all(not mod._forward_hooks for mod in model.modules())
    assert not model.training
    with pytest.raises(WSOLError, match="target_layer 'backbone.nope' not found"):
        compute_cams(model, images, method="gradcam", target_layer="backbone.nope")


def test_smoothgradcampp_seeded_and_batched(model, images) -> None:
    a = compute_cams(model, images, TARGETS, method="smoothgradcampp", n_samples=3, seed=1).maps
    b = compute_cams(model, images, TARGETS, method="smoothgradcampp", n_samples=3, seed=1).maps
    torch.testing.assert_close(a, b)
    zero_noise = compute_cams(model, images, TARGETS, method="smoothgradcampp", std=0.0).maps
    torch.testing.assert_close(zero_noise, compute_cams(model, images, TARGETS, method="gradcampp").maps,
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_gradient_methods_work_inside_no_grad(model, images, method) -> None:
    """Validation loops run under torch.no_grad(); the gradient methods must give the same maps there."""
    expected = compute_cams(model, images, TARGETS, method=method).maps
    with torch.no_grad():
        got = compute_cams(model, images, TARGETS, method=method).maps
        got_deep = compute_cams(model, images, TARGETS, method=method, target_layer="backbone.layer3").maps
    torch.testing.assert_close(got, expected)
    assert got_deep.shape[0] == 2
