"""wsol.models: pooling heads, exact CAM logit identity with folded norms, surgery, weights, embedded model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsol.errors import WSOLError
from wsol.models import (
    EMBEDDED_MODEL,
    BatchNormHead,
    LayerNormHead,
    LinearHead,
    Pool,
    WSOLClassifier,
    build_model,
    list_models,
    load_weights,
    tap_pool,
)
from wsol.models.factory import _extract_head


@pytest.fixture(scope="module")
def resnet() -> WSOLClassifier:
    torch.manual_seed(0)
    return build_model("resnet18", num_classes=7).eval()


class TinyBackbone(nn.Module):
    """A timm-like toy backbone: forward_features -> (B, 8, 4, 4)."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, stride=4, padding=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _identity_gap(model: WSOLClassifier, x: torch.Tensor) -> float:
    f = model.features(x)
    w, b = model.class_weights(f)
    cam = torch.einsum("bkc,bchw->bkhw", w, f)
    return (cam.mean((2, 3)) + b - model.logits_from_features(f)).abs().max().item()


# ---------------------------------------------------------------- pooling


def test_tap_hand_computed() -> None:
    # channel 0: max 10, theta 0.1 -> keep > 1: {10, 2, 4} -> 16 / 3
    # channel 1: all <= 0 -> max 0, keep > 0: nothing -> 0 / max(0, 1) = 0
    # channel 2: max 1, keep > 0.1 (strict): {1, 0.6, 0.5} -> 0.7
    f = torch.tensor([[[[10.0, 1.0], [2.0, 4.0]],
                       [[-1.0, -2.0], [0.0, -3.0]],
                       [[1.0, 0.6], [0.5, 0.1]]]])
    out = tap_pool(f, theta=0.1)
    torch.testing.assert_close(out, torch.tensor([[16 / 3, 0.0, 0.7]]))
    # theta 0.5 on channel 0: keep > 5 -> {10}
    assert tap_pool(f, theta=0.5)[0, 0].item() == pytest.approx(10.0)
    assert Pool("tap", 0.5)(f)[0, 0].item() == pytest.approx(10.0)


def test_pool_kinds_and_unknown() -> None:
    f = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(Pool("gap")(f), f.mean((2, 3)))
    torch.testing.assert_close(Pool("gmp")(f), f.amax((2, 3)))
    with pytest.raises(WSOLError, match="unknown pooling 'avg'"):
        Pool("avg")


# ---------------------------------------------------------------- logit identity per head type


def test_identity_linear_head(resnet: WSOLClassifier) -> None:
    with torch.no_grad():
        assert _identity_gap(resnet, torch.randn(2, 3, 64, 64)) < 1e-5


def test_identity_batchnorm_head_eval_and_train() -> None:
    torch.manual_seed(1)
    bn = nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.weight.uniform_(-2, 2)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    model = WSOLClassifier(TinyBackbone(), BatchNormHead(bn, nn.Linear(8, 5))).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert _identity_gap(model, x) < 1e-5
        model.train()  # batch statistics, folded the same way
        f = model.features(x)
        w, b = model.class_weights(f)
        ref = torch.einsum("bkc,bc->bk", w, f.mean((2, 3))) + b
        torch.testing.assert_close(ref, model.logits_from_features(f), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_cls", [nn.LayerNorm, "layernorm2d"])
def test_identity_layernorm_head(norm_cls) -> None:
    torch.manual_seed(2)
    if norm_cls == "layernorm2d":
        from timm.layers import LayerNorm2d

        norm = LayerNorm2d(8)
    else:
        norm = norm_cls(8)
    with torch.no_grad():
        norm.weight.uniform_(-2, 2)
        norm.bias.uniform_(-1, 1)
    model = WSOLClassifier(TinyBackbone(), LayerNormHead(norm, nn.Linear(8, 5))).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert _identity_gap(model, x) < 1e-5
        # the folded weights differ per image (LayerNorm scale depends on the pooled vector)
        w, _ = model.class_weights(model.features(x))
        assert not torch.allclose(w[0], w[1])


@pytest.mark.parametrize("pool", ["gmp", "tap"])
def test_other_pools_use_their_pooled_vector(pool: str) -> None:
    torch.manual_seed(3)
    norm = nn.LayerNorm(8)
    model = WSOLClassifier(TinyBackbone(), LayerNormHead(norm, nn.Linear(8, 5), pool=Pool(pool, 0.3))).eval()
    with torch.no_grad():
        f = model.features(torch.randn(2, 3, 16, 16))
        w, b = model.class_weights(f)
        pooled = model.head.pool(f)
        torch.testing.assert_close(torch.einsum("bkc,bc->bk", w, pooled) + b, model.logits_from_features(f),
                                   atol=1e-5, rtol=1e-5)


class _RepLKLike(nn.Module):
    """Head layout of RepLKNet (norm = BatchNorm2d before GAP) or SLaK (norm = LayerNorm after GAP)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.norm = norm
        self.head = nn.Linear(8, 4)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        if isinstance(self.norm, nn.BatchNorm2d):
            return self.head(self.norm(f).mean((2, 3)))
        return self.head(self.norm(f.mean((2, 3))))


@pytest.mark.parametrize("norm", [nn.BatchNorm2d(8), nn.LayerNorm(8)], ids=["replknet", "slak"])
def test_extract_head_large_kernel_layout(norm: nn.Module) -> None:
    torch.manual_seed(4)
    net = _RepLKLike(norm).eval()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = net.forward_head(net.forward_features(x))
    head, key_map = _extract_head(net, "toy")
    assert isinstance(head, BatchNormHead if isinstance(norm, nn.BatchNorm2d) else LayerNormHead)
    assert key_map == {"norm.": "head.norm.", "head.": "head.fc."}
    model = WSOLClassifier(net, head, external_key_map=key_map).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)
        assert _identity_gap(model, x) < 1e-5


def test_convnext_head_folded_and_unchanged() -> None:
    torch.manual_seed(5)
    import timm

    ref = timm.create_model("convnext_atto", num_classes=6).eval()
    model = build_model("convnext_atto", num_classes=6).eval()
    model.load_state_dict(model.remap_external_keys(ref.state_dict()))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))
        assert isinstance(model.head, LayerNormHead)
        assert _identity_gap(model, x) < 1e-4


# ---------------------------------------------------------------- surgery


def test_resnet50_surgery_strides() -> None:
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert build_model("resnet50", num_classes=3).eval().features(x).shape == (1, 2048, 4, 4)
        big = build_model("resnet50", num_classes=3, large_feature_map=True).eval()
        assert big.features(x).shape == (1, 2048, 8, 8)
        plain = build_model("resnet50", num_classes=3, surgery=False).eval()
        assert plain.features(x).shape == (1, 2048, 2, 2)
    groups = {g["name"]: g for g in big.param_groups(0.01)}
    assert groups["classifier"]["lr"] == pytest.approx(0.1)
    cls_ids = {id(p) for p in groups["classifier"]["params"]}
    assert all(id(p) in cls_ids for p in big.backbone.layer4.parameters())  # wsolevaluation: layer4 + fc
    assert id(big.head.fc.weight) in cls_ids


def test_vgg16_gap_layout() -> None:
    model = build_model("vgg16", num_classes=4).eval()
    assert not any(isinstance(m, nn.Linear) for m in model.backbone.modules())
    assert model.backbone.conv6.out_channels == 1024 and len(model.backbone.features) == 30
    with torch.no_grad():
        f = model.features(torch.randn(1, 3, 64, 64))
        assert f.shape == (1, 1024, 4, 4)  # stride 16: no pool5
        assert bool((f >= 0).all())  # ReLU after conv6
    names = {g["name"]: len(g["params"]) for g in model.param_groups(1.0)}
    assert names == {"backbone": 26, "classifier": 4}  # conv6 + fc at 10x


def test_inception_v3_cam_layout() -> None:
    model = build_model("inception_v3", num_classes=5).eval()
    with torch.no_grad():
        f = model.features(torch.randn(1, 3, 224, 224))
    assert f.shape == (1, 1024, 14, 14)
    assert model.head.fc.in_features == 1024


def test_unsupported_head_and_unknown_name() -> None:
    with pytest.raises(WSOLError, match="vgg16"):
        build_model("vgg16", surgery=False)
    with pytest.raises(WSOLError, match="unknown model 'no_such_net'"):
        build_model("no_such_net")
    with pytest.raises(WSOLError, match="pool"):
        build_model("resnet18", pool="mean")


def test_non_4d_input(resnet: WSOLClassifier) -> None:
    with pytest.raises(WSOLError, match="4-D"):
        resnet(torch.randn(3, 64, 64))


def test_multiscale_features(resnet: WSOLClassifier) -> None:
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = resnet.multiscale_features(x)
        f = resnet.features(x)
    sizes = [t.shape[-1] for t in feats]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    torch.testing.assert_close(feats[-1], f)
    assert not resnet.backbone._forward_hooks and all(not m._forward_hooks for m in resnet.modules())


def test_tap_head_changes_pooling_only() -> None:
    torch.manual_seed(0)
    a = build_model("resnet18", num_classes=3, pool="tap", tap_theta=0.2).eval()
    assert a.head.pool.kind == "tap" and a.head.pool.theta == pytest.approx(0.2)
    with torch.no_grad():
        f = a.features(torch.randn(1, 3, 64, 64))
        torch.testing.assert_close(a.logits_from_features(f), a.head.fc(tap_pool(f, 0.2)))


# ---------------------------------------------------------------- weights


def test_load_weights_roundtrip_and_wrappers(resnet: WSOLClassifier, tmp_path) -> None:
    other = build_model("resnet18", num_classes=7).eval()
    sd = resnet.state_dict()
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in sd.items()}}, tmp_path / "ck.pth")
    load_weights(other, tmp_path / "ck.pth")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(other(x), resnet(x))


def test_load_plain_timm_checkpoint(tmp_path) -> None:
    import timm

    torch.manual_seed(0)
    ref = timm.create_model("resnet18", num_classes=7).eval()
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    model = build_model("resnet18", num_classes=7, weights=tmp_path / "timm.pth").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))


def test_load_weights_mismatch_errors(resnet: WSOLClassifier, tmp_path) -> None:
    sd = resnet.state_dict()
    bad = {k.replace("layer1", "stage1"): v for k, v in sd.items()}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WSOLError, match=r"bad\.pth.*missing keys: backbone\.layer1.*unexpected keys") as info:
        load_weights(resnet, tmp_path / "bad.pth")
    assert "\n" not in str(info.value)
    torch.save(build_model("resnet18", num_classes=3).state_dict(), tmp_path / "k3.pth")
    with pytest.raises(WSOLError, match=r"k3\.pth.*shape mismatch: head\.fc\.weight"):
        build_model("resnet18", num_classes=7, weights=tmp_path / "k3.pth")
    with pytest.raises(WSOLError, match="not found"):
        load_weights(resnet, tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WSOLError, match=r"junk\.pth: cannot read weights"):
        load_weights(resnet, tmp_path / "junk.pth")


def test_pretrained_offline_error(monkeypatch) -> None:
    import timm

    real = timm.create_model

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("no internet")  # what the hub download raises offline
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(WSOLError, match="'resnet10t': cannot fetch pretrained .*--checkpoint FILE.*model.weights=FILE"):
        build_model("resnet10t", pretrained=True)


# ---------------------------------------------------------------- embedded model


@pytest.fixture(scope="module")
def embedded() -> WSOLClassifier:
    return build_model(EMBEDDED_MODEL, pretrained=True).eval()


def test_list_models() -> None:
    names = list_models()
    assert names[0] == EMBEDDED_MODEL and {"resnet50", "vgg16", "inception_v3"} <= set(names)


def test_embedded_classifies_chelsea(embedded: WSOLClassifier) -> None:
    from skimage.data import chelsea

    cfg = embedded.data_config
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5) and cfg["input_size"][1] == 224
    img = torch.from_numpy(np.ascontiguousarray(chelsea())).permute(2, 0, 1)[None].float() / 255
    img = F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    x = (img - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = embedded(x)
        top3 = logits.topk(3).indices[0].tolist()
        assert _identity_gap(embedded, x) < 1e-4
    cats = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert cats & set(top3), [embedded.class_names[i] for i in top3]
    assert "cat" in embedded.class_names[top3[0]]


def test_embedded_new_classes_keeps_backbone(embedded: WSOLClassifier) -> None:
    m = build_model(EMBEDDED_MODEL, num_classes=10, pretrained=True)
    assert m.num_classes == 10 and m.class_names is None
    torch.testing.assert_close(m.backbone.conv_stem.weight, embedded.backbone.conv_stem.weight)


def test_head_types_are_linear_subclasses() -> None:
    assert issubclass(BatchNormHead, LinearHead) and issubclass(LayerNormHead, LinearHead)


@pytest.mark.parametrize("name", ["replknet_31b", "slak_tiny"])
def test_cam_logit_identity_on_the_real_large_kernel_classifiers(name: str) -> None:
    """RepLKNet's BN head and SLaK's LN head folded into the class weights, on the full models."""
    from wsol.cams import compute_cams

    torch.manual_seed(0)
    model = build_model(name, num_classes=5).eval()
    for mod in model.modules():  # non-trivial statistics and affine parameters, so the folding matters
        if isinstance(mod, (nn.BatchNorm2d, nn.LayerNorm)):
            mod.weight.data.normal_(1, 0.2)
            mod.bias.data.normal_(0, 0.2)
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 64, 64)
    out = compute_cams(model, x, method="cam", include_bias=True)
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(out.maps.mean((1, 2)), logits.gather(1, out.targets[:, None])[:, 0],
                               atol=1e-4, rtol=1e-4)
