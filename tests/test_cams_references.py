"""The gradient methods against pytorch-grad-cam 1.5.7 and torchcam 0.5.0 where they differ from each other:
intermediate layers (ResNet-18 ``layer2.1``, ``layer3`` and ``layer4.0`` block outputs, where the gradient
varies from pixel to pixel), not only the GAP head's feature map F (where it is the same at every pixel and
XGrad-CAM equals Grad-CAM); and PC1 against transcriptions that own their orientation and frame.

Raw maps are compared (before the references' ReLU / min-max / resize), relative to the reference map's
largest magnitude. Measured on this model (float32): at most 1.1e-6 (Grad-CAM 5e-7, Grad-CAM++ 2.5e-7,
XGrad-CAM 1.05e-6, LayerCAM 3.6e-7), hence the bound 2e-6. In float64 the gradient methods agree to 6e-8 (our
maps are returned as float32: bound 2e-7). EigenCAM is compared in float64: both libraries' float32 SVDs round
(up to 2.8e-6 apart in float32), in float64 only ours does (its SVD runs in float32): 1.0e-6 at most.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from wsol.cams import compute_cams
from wsol.cams.pc1 import pc1_maps, pc1_maps_as_published
from wsol.models import build_model

TARGETS = [3, 7]
LAYERS = [None, "backbone.layer2.1", "backbone.layer3", "backbone.layer4.0"]
TOL32 = 2e-6
TOL64 = 2e-7
PGC = [("gradcam", "GradCAM"), ("gradcampp", "GradCAMPlusPlus"), ("xgradcam", "XGradCAM"), ("layercam", "LayerCAM")]
TORCHCAM = [("gradcam", "GradCAM"), ("xgradcam", "XGradCAM"), ("layercam", "LayerCAM")]


def _model(dtype: torch.dtype) -> nn.Module:
    """ResNet-18, random weights; timm zero-initialises each block's last BatchNorm (every block would be the
    identity and layer4.0's output equal F), so the BatchNorm affine parameters are drawn at random too."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.4 - 0.2)
    return model.to(dtype)


@pytest.fixture(scope="module")
def models() -> dict[torch.dtype, nn.Module]:
    return {torch.float32: _model(torch.float32), torch.float64: _model(torch.float64)}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))  # F 3 x 3, layer3 6 x 6


def _layer(model: nn.Module, name: str | None) -> nn.Module:
    return model.feature_layer if name is None else model.get_submodule(name)


def _pgc_raw(model: nn.Module, cls_name: str, layer: nn.Module, x: torch.Tensor,
             targets: list[int] | None) -> tuple[np.ndarray, np.ndarray | None]:
    """pytorch-grad-cam's own raw map (``get_cam_image``: before its ReLU, min-max and resize) from the
    activations and gradients its hooks captured, and those gradients."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    tg = [ClassifierOutputTarget(t) for t in targets] if targets is not None else None
    with getattr(pytorch_grad_cam, cls_name)(model, [layer]) as ref:
        ref(x, tg)
        store = ref.activations_and_grads
        act = store.activations[0].cpu().numpy()
        grad = store.gradients[0].cpu().numpy() if store.gradients else None
        raw = ref.get_cam_image(x, layer, tg, act, grad, False)
    model.zero_grad(set_to_none=True)  # pytorch-grad-cam leaves .grad behind
    return raw, grad


def _rel(mine: np.ndarray, ref: np.ndarray) -> float:
    return max(float(np.abs(mine[i] - ref[i]).max() / np.abs(ref[i]).max()) for i in range(len(ref)))


@pytest.mark.parametrize("layer, dtype", [*((name, torch.float32) for name in LAYERS),
                                          ("backbone.layer3", torch.float64)],
                         ids=["F", "layer2.1", "layer3", "layer4.0", "layer3-f64"])
@pytest.mark.parametrize("ours, theirs", PGC, ids=[p[0] for p in PGC])
def test_gradient_methods_equal_pytorch_grad_cam(models, images, layer, ours, theirs, dtype) -> None:
    model, x = models[dtype], images.to(dtype)
    raw, grad = _pgc_raw(model, theirs, _layer(model, layer), x, TARGETS)
    if layer is not None:  # where the comparison means something: the gradient varies within a channel
        spread = np.abs(grad - grad.mean((2, 3), keepdims=True)).max() / np.abs(grad).max()
        assert spread > 0.5
    mine = compute_cams(model, x, TARGETS, method=ours, target_layer=layer, relu=False).maps.double().numpy()
    assert mine.shape == raw.shape
    assert _rel(mine, raw) < (TOL32 if dtype == torch.float32 else TOL64)
    relu = compute_cams(model, x, TARGETS, method=ours, target_layer=layer).maps.double().numpy()
    np.testing.assert_array_equal(relu, np.maximum(mine, 0))


@pytest.mark.parametrize("layer", LAYERS, ids=["F", "layer2.1", "layer3", "layer4.0"])
@pytest.mark.parametrize("ours, theirs", TORCHCAM, ids=[p[0] for p in TORCHCAM])
def test_gradient_methods_equal_torchcam(models, images, layer, ours, theirs) -> None:
    import torchcam.methods as tcm

    model, x = models[torch.float32], images
    with getattr(tcm, theirs)(model, "feature_layer" if layer is None else layer) as ref:
        scores = model(x)
        theirs_maps = ref(TARGETS, scores, normalized=False)[0].detach().double().numpy()  # ReLU'd, not scaled
    model.zero_grad(set_to_none=True)
    mine = compute_cams(model, x, TARGETS, method=ours, target_layer=layer).maps.double().numpy()
    assert np.abs(theirs_maps).max() > 0
    assert _rel(mine, theirs_maps) < TOL32


@pytest.mark.parametrize("layer", LAYERS, ids=["F", "layer2.1", "layer3", "layer4.0"])
def test_eigencam_equals_pytorch_grad_cam_up_to_sign(models, images, layer) -> None:
    """In float64, where pytorch-grad-cam's SVD is exact to 1e-15 and ours runs in float32 (measured 1.0e-6 at
    most). With a float32 model both SVDs round (measured up to 2.8e-6 at layer2.1)."""
    model = models[torch.float64]
    x = images.double()
    raw, _ = _pgc_raw(model, "EigenCAM", _layer(model, layer), x, None)
    mine = compute_cams(model, x, method="eigencam", target_layer=layer).maps.double().numpy()
    for i in range(2):  # pytorch-grad-cam leaves the sign of the projection as the SVD gives it
        d = min(np.abs(mine[i] - s * raw[i]).max() for s in (1, -1)) / np.abs(raw[i]).max()
        assert d < TOL32


@pytest.mark.parametrize("layer", LAYERS[1:], ids=["layer2.1", "layer3", "layer4.0"])
def test_methods_differ_where_the_gradient_varies(models, images, layer) -> None:
    """At F of a GAP head XGrad-CAM's weights sum(g A) / sum(A) are the (uniform) gradient, Grad-CAM's; inside
    the network they are not: the comparisons above tell the methods apart only there."""
    model = models[torch.float32]
    maps = {m: compute_cams(model, images, TARGETS, method=m, target_layer=layer, relu=False).maps
            for m in ("gradcam", "xgradcam", "gradcampp")}
    scale = maps["gradcam"].abs().amax()
    assert (maps["xgradcam"] / maps["xgradcam"].abs().amax() - maps["gradcam"] / scale).abs().max() > 0.05
    at_f = {m: compute_cams(model, images, TARGETS, method=m, relu=False).maps for m in ("gradcam", "xgradcam")}
    torch.testing.assert_close(at_f["xgradcam"], at_f["gradcam"], rtol=1e-4, atol=1e-6 * float(scale))


# ---------------------------------------------------------------------------------------------- Smooth Grad-CAM++
# No reference computes our Smooth Grad-CAM++: torchcam 0.5's SmoothGradCAMpp puts the mean squared gradient in
# alpha's numerator, sums g^3 A over the map per channel instead of sum(A) g^3 per pixel, and multiplies by the
# ReLU of the LAST noisy copy's gradient; pytorch-grad-cam has no SmoothGrad. So: zero noise against
# pytorch-grad-cam's Grad-CAM++, and the seeded noisy version against a transcription of Omeiza et al. whose
# gradients come from pytorch-grad-cam's hooks, one noisy copy at a time.
@pytest.mark.parametrize("layer", [None, "backbone.layer3"], ids=["F", "layer3"])
def test_smoothgradcampp_without_noise_equals_pytorch_grad_cam_gradcampp(models, images, layer) -> None:
    model = models[torch.float32]
    raw, _ = _pgc_raw(model, "GradCAMPlusPlus", _layer(model, layer), images, TARGETS)
    mine = compute_cams(model, images, TARGETS, method="smoothgradcampp", std=0.0, target_layer=layer,
                        relu=False).maps.double().numpy()
    assert _rel(mine, raw) < TOL32


def test_smoothgradcampp_seeded_equals_a_transcription(models, images) -> None:
    """At layer3 (at F of a linear head the gradient does not depend on the input: noise changes nothing)."""
    from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients

    model = models[torch.float64]
    x = images.double()
    n, std, seed = 3, 0.3, 5
    noise = torch.randn((n, *x.shape), generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    layer = "backbone.layer3"
    mod = _layer(model, layer)

    def act_grad(inp: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        hooks = ActivationsAndGradients(model, [mod], None, True)
        try:
            out = hooks(inp)
            model.zero_grad()
            sum(out[i, t] for i, t in enumerate(TARGETS)).backward()
            return hooks.activations[0].numpy(), hooks.gradients[0].numpy()
        finally:
            hooks.release()
            model.zero_grad(set_to_none=True)

    act, _ = act_grad(x)
    grads = np.stack([act_grad(x + std * noise[k])[1] for k in range(n)])
    g1, g2, g3 = grads.mean(0), (grads ** 2).mean(0), (grads ** 3).mean(0)
    # alpha's denominator carries pytorch-grad-cam's eps of 1e-6 (ours too): with gradients this small it is
    # not negligible (without it the weights differ by 13 % here)
    alpha = np.where(g1 != 0, g2 / (2 * g2 + act.sum((2, 3), keepdims=True) * g3 + 1e-6), 0)
    weights = (alpha * np.maximum(g1, 0)).sum((2, 3))
    want = (weights[:, :, None, None] * act).sum(1)
    mine = compute_cams(model, x, TARGETS, method="smoothgradcampp", n_samples=n, std=std, seed=seed,
                        target_layer=layer, relu=False).maps.double().numpy()
    assert _rel(mine, want) < TOL64
    plain = compute_cams(model, x, TARGETS, method="gradcampp", target_layer=layer, relu=False).maps.double().numpy()
    assert _rel(plain, want) > 0.01  # the noise matters


# ---------------------------------------------------------------------------------------------- PC1
def _frame_on_count(m: np.ndarray) -> tuple[int, int]:
    """(pixels above the mean on the true one-pixel border, border size), the border listed pixel by pixel."""
    h, w = m.shape
    border = {(0, j) for j in range(w)} | {(h - 1, j) for j in range(w)} | {(i, 0) for i in range(h)} \
        | {(i, w - 1) for i in range(h)}
    mean = m.mean()
    return sum(1 for i, j in border if m[i, j] > mean), len(border)


def pc1_transcription(f: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The corrected PC1 of one image, written from the paper with scikit-learn: weight the channels, min-max
    each (a constant channel becomes 0), PCA with the channels as samples (sklearn orients its component:
    largest-magnitude entry positive), divide by the max, and flip to 1 - map when more than half of the true
    one-pixel border lies above the mean."""
    from sklearn.decomposition import PCA

    c, h, wd = f.shape
    x = (f * w[:, None, None]).reshape(c, h * wd).astype(np.float64)
    lo, hi = x.min(1, keepdims=True), x.max(1, keepdims=True)
    x = np.where(hi - lo > 1e-12, (x - lo) / np.where(hi - lo > 1e-12, hi - lo, 1), 0.0)
    v = PCA(n_components=1, svd_solver="full").fit(x).components_[0]
    m = (v / v.max()).reshape(h, wd)
    on, total = _frame_on_count(m)
    return 1 - m if on > total / 2 else m


def _pq_features(p: np.ndarray, q: np.ndarray, channels: int = 32, seed: int = 0) -> torch.Tensor:
    """Channels ``a_c P + b_c`` or ``a_c Q + b_c`` (a_c > 0): after the per-channel min-max exactly P or Q (both
    span [0, 1]), so PC1 is the direction of P - Q."""
    rng = np.random.default_rng(seed)
    maps = [(p if c % 2 == 0 else q) * rng.uniform(0.5, 3.0) + rng.uniform(-1, 1) for c in range(channels)]
    return torch.from_numpy(np.stack(maps)[None].astype(np.float32))


def _band(side: int = 6, top: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """P: the last two rows on (the first two with ``top``); Q: one pixel of P. PC1 = P - Q, which has 11
    pixels above its mean on the authors' frame (row 0, column 0, the last two rows and columns: 11 / 20 > 0.5,
    flip) but 7 of the 20 pixels of the true border (no flip); at the top, 6 + 3 = 9 / 20 and 7 / 20."""
    p = np.zeros((side, side))
    p[side - 2:, :] = 1.0
    q = np.zeros((side, side))
    q[side - 2, 0] = 1.0
    return (p[::-1].copy(), q[::-1].copy()) if top else (p, q)


def test_pc1_hand_made_maps_corrected_and_as_published_differ_by_the_frame() -> None:
    p, q = _band()
    f = _pq_features(p, q)
    ones = torch.ones(1, f.shape[1])
    np.testing.assert_allclose(pc1_maps(f, ones)[0].numpy(), p - q, atol=1e-5)  # true border: 7 / 20, kept
    np.testing.assert_allclose(pc1_maps_as_published(f, ones)[0].numpy(), 1 - (p - q), atol=1e-5)  # flipped
    p, q = _band(top=True)
    f = _pq_features(p, q, seed=1)
    np.testing.assert_allclose(pc1_maps(f, ones)[0].numpy(), p - q, atol=1e-5)
    np.testing.assert_allclose(pc1_maps_as_published(f, ones)[0].numpy(), p - q, atol=1e-5)
    # the object on the border and the background inside: both frames see it, both flip
    ring = np.ones((6, 6))
    ring[1:5, 1:5] = 0.0
    dot = np.zeros((6, 6))
    dot[0, 0] = 1.0
    f = _pq_features(ring, dot, seed=2)
    np.testing.assert_allclose(pc1_maps(f, ones)[0].numpy(), 1 - (ring - dot), atol=1e-5)
    np.testing.assert_allclose(pc1_maps_as_published(f, ones)[0].numpy(), 1 - (ring - dot), atol=1e-5)


@pytest.fixture(scope="module")
def wsol_resnet() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet18", num_classes=10, large_feature_map=True, surgery=True).eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pc1_equals_an_independent_transcription(wsol_resnet, seed: int) -> None:
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(seed))
    out = compute_cams(wsol_resnet, x, [1, 8], method="pc1")
    with torch.no_grad():
        f = wsol_resnet.features(x)
    for i, t in enumerate([1, 8]):
        want = pc1_transcription(f[i].numpy(), wsol_resnet.head.fc.weight[t].detach().numpy())
        assert np.abs(out.maps[i].numpy() - want).max() < 1e-5


def test_pc1_as_published_equals_the_authors_script(wsol_resnet) -> None:
    """On the model's features (plus a little noise: the authors' per-channel min-max divides by zero on a
    channel the ReLU left constant, where ours gives 0) times the raw class weights, and on the hand-made
    bands."""
    from upstream import cam_back_again as cba

    x = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    targets = [0, 4, 9]
    with torch.no_grad():
        f = wsol_resnet.features(x)
    f = f + 0.01 * torch.rand(f.shape, generator=torch.Generator().manual_seed(4))
    raw_w = wsol_resnet.head.fc.weight.detach()[targets]
    ours = pc1_maps_as_published(f, raw_w)
    for i in range(3):
        want = cba.get_heatmap_from_features("pc1", f[i:i + 1] * raw_w[i].view(1, -1, 1, 1))
        assert np.abs(ours[i].numpy() - want).max() < 1e-5
    for p, q, seed in (*((*_band(), s) for s in (0, 1)), (*_band(top=True), 2)):
        f = _pq_features(p, q, seed=seed)
        want = cba.get_heatmap_from_features("pc1", f)
        assert np.abs(pc1_maps_as_published(f, torch.ones(1, f.shape[1]))[0].numpy() - want).max() < 1e-5
