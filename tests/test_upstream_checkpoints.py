"""Other projects' checkpoints through ``wsol.models.load``, against transcriptions of their code.

The oracles in ``tests/upstream`` rebuild CAM Back Again's ConvNeXt / RepLKNet models and map functions and
wsolevaluation's ``cam`` models; the first tests check the oracles themselves (against timm / torchvision
and hand-made maps), the others compare what ``load`` returns with them: logits, features, class weights,
the maps of ``compute_cams`` (plain and ``as_published``), the CLI, and one-line errors for bad files.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image
from timm.models.convnext import ConvNeXt
from torch import Tensor, nn
from torchvision import transforms
from typer.testing import CliRunner

from upstream import cam_back_again as cba
from upstream import wsolevaluation as wse
from wsol.errors import WSOLError
from wsol.models.replknet import RepLKNet

K_CBA = 7  # classes of the CAM Back Again models
K_WSE = 5  # classes of the wsolevaluation models
CBA_SIZE = 384  # CAM Back Again input side: 12 x 12 last maps
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
TINY_CONVNEXT = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))
# as tests/test_largekernel.py's TINY_REPLK but 32 last channels: upstream's PCA keeps 30 components
TINY_REPLK = dict(large_kernel_sizes=(7, 5, 5, 3), layers=(1, 1, 1, 1), channels=(8, 16, 16, 32), small_kernel=3)

runner = CliRunner()


# ----------------------------------------------------------------------------------------------- helpers


def _api() -> tuple[Callable[..., nn.Module], Callable[..., Any]]:
    """``wsol.models.load`` and ``wsol.cams.compute_cams``, imported late so the oracle tests run alone."""
    from wsol.cams import compute_cams
    from wsol.models import load

    return load, compute_cams


def _np(a: Tensor | np.ndarray | Any) -> np.ndarray:
    """float64 numpy copy of a tensor (detached, on the CPU), an array or a sequence."""
    if isinstance(a, Tensor):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def _max_diff(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    return float(np.max(np.abs(_np(a) - _np(b))))


def _close(a: Tensor | np.ndarray, b: Tensor | np.ndarray, tol: float) -> None:
    """max |a - b| <= tol x max(1, max |b|) (a relative check for large values, absolute for small)."""
    a_np, b_np = _np(a), _np(b)
    assert a_np.shape == b_np.shape, (a_np.shape, b_np.shape)
    scale = max(1.0, float(np.max(np.abs(b_np))))
    assert _max_diff(a_np, b_np) <= tol * scale, f"max diff {_max_diff(a_np, b_np):.3g} > {tol * scale:.3g}"


def _one_line_error(call: Callable[[], Any]) -> str:
    with pytest.raises(WSOLError) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message, repr(message)
    return message


def _jitter(model: nn.Module, seed: int, scale: float = 0.1) -> nn.Module:
    """Add seeded noise to every parameter (ConvNeXt's 1e-6 layer scales become ~0.1) and randomise BN
    statistics; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


def _spread_classes(fc: nn.Linear, features: Tensor, std: float = 3.0, seed: int = 0) -> None:
    """Rescale ``fc`` so its logits on ``features`` (B, C, h, w) spread with about ``std`` (clear top-1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        fc.weight.copy_(torch.randn(fc.weight.shape, generator=gen))
        fc.bias.copy_(torch.randn(fc.bias.shape, generator=gen) * 0.5)
        logits = features.mean(dim=(2, 3)) @ fc.weight.T
        fc.weight.mul_(std / logits.std().clamp_min(1e-6))


def _images(n: int, size: int, seed: int) -> Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _write_jpeg(path: Path, size: int, seed: int = 0) -> Path:
    """A smooth coloured picture with a few discs, ``size`` x ``size`` (so no resizing changes the input)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([yy, xx, 1 - xx * yy], axis=-1) * 160 + 40
    for _ in range(4):
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=95)
    return path


def _upstream_input(path: Path, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """The authors' test transform: Resize((size, size)) -> ToTensor -> Normalize (batch of one)."""
    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize(mean, std)])
    return tf(Image.open(path).convert("RGB")).unsqueeze(0)


def _top1_with_margin(scores: Tensor) -> int:
    """The upstream model's argmax, insisting on a margin (the CLI decodes the same JPEG, but say so if not)."""
    top2 = scores[0].topk(2)
    assert float(top2.values[0] - top2.values[1]) > 1e-3, "top-1 too close to top-2 for a CLI comparison"
    return int(top2.indices[0])


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cba_convnext(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Sequential, Path]:
    """CAM Back Again's ConvNeXt layout on a tiny timm ConvNeXt (K=7), saved as a plain state dict."""
    torch.manual_seed(0)
    convnext = _jitter(ConvNeXt(**TINY_CONVNEXT, num_classes=1000), seed=1)
    upstream = cba.convnext_layout(convnext, K_CBA, CBA_SIZE // 32).eval()
    with torch.no_grad():
        _spread_classes(upstream[1].fc, upstream[0](_images(2, CBA_SIZE, 9)))
    path = tmp_path_factory.mktemp("cba") / "convnext_base_384_in22ft1k_CUB.pth"
    torch.save(upstream.state_dict(), path)
    return upstream, path


@pytest.fixture(scope="module")
def cba_replknet(tmp_path_factory: pytest.TempPathFactory) -> tuple[RepLKNet, Path]:
    """CAM Back Again's ``build_model`` on a tiny official-layout RepLKNet (K=7), saved as a state dict."""
    torch.manual_seed(0)
    net = cba.replknet_layout(RepLKNet(**TINY_REPLK, num_classes=1000), K_CBA)
    net = _jitter(net, seed=2, scale=0.2)
    with torch.no_grad():
        _spread_classes(net.head, net.norm(net.forward_features(_images(2, CBA_SIZE, 9))))
        net.norm.weight.copy_(torch.linspace(0.3, 2.0, net.norm.num_features))  # a BN far from identity
    path = tmp_path_factory.mktemp("cba") / "RepLKNet-31B_CUB.pth"
    torch.save(net.state_dict(), path)
    return net, path


WSE_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet50": wse.resnet50_cam, "vgg16": wse.vgg16_cam, "inception_v3": wse.inception_v3_cam}


@pytest.fixture(scope="module")
def wse_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, bool], tuple[nn.Module, Path]]:
    """``get(architecture, large_feature_map) -> (upstream model, checkpoint path)``, built once each."""
    cache: dict[tuple[str, bool], tuple[nn.Module, Path]] = {}
    folder = tmp_path_factory.mktemp("wse")

    def get(arch: str, large: bool = False) -> tuple[nn.Module, Path]:
        if (arch, large) not in cache:
            seed = len(cache) + 10
            torch.manual_seed(seed)
            model = wse.randomize(WSE_BUILDERS[arch](K_WSE, large_feature_map=large), seed)
            path = folder / f"{arch}{'_large' if large else ''}_best_checkpoint.pth.tar"
            wse.save_wsolevaluation_checkpoint(model, arch, path, seed=seed)
            cache[arch, large] = (model.eval(), path)
        return cache[arch, large]

    return get


# ----------------------------------------------------------------------------------------------- oracle checks


def test_oracle_convnext_layout_is_timm_without_head_norm() -> None:
    convnext = _jitter(ConvNeXt(**TINY_CONVNEXT, num_classes=1000), seed=3)
    upstream = cba.convnext_layout(convnext, K_CBA, 2)
    keys = list(upstream.state_dict())
    assert keys[:2] == ["0.0.0.weight", "0.0.0.bias"]  # stem conv
    assert "0.1.3.blocks.0.conv_dw.weight" in keys and keys[-2:] == ["1.fc.weight", "1.fc.bias"]
    assert not any("norm_pre" in k or "head" in k for k in keys)  # timm's head LayerNorm is dropped
    assert upstream.state_dict()["1.fc.weight"].shape == (K_CBA, 32)
    x = _images(2, 64, 4)
    with torch.no_grad():
        f = upstream[0](x)
        assert f.shape == (2, 32, 2, 2)
        assert torch.equal(f, convnext.forward_features(x))  # norm_pre is Identity: stem + stages
        probs = upstream(x)
        expected = torch.softmax(upstream[1].fc(f.mean(dim=(2, 3))), dim=1)
    _close(probs, expected, 1e-6)
    _close(probs.sum(1), torch.ones(2), 1e-6)  # the upstream forward returns probabilities


def test_oracle_replknet_layout_keys_and_forward() -> None:
    net = _jitter(cba.replknet_layout(RepLKNet(**TINY_REPLK, num_classes=1000), K_CBA), seed=4, scale=0.2)
    sd = net.state_dict()
    assert sd["head.weight"].shape == (K_CBA, 32) and sd["head.bias"].shape == (K_CBA,)
    for key in ("stem.0.conv.weight", "stages.3.blocks.0.large_kernel.lkb_origin.conv.weight",
                "stages.3.blocks.0.large_kernel.small_conv.bn.running_var", "transitions.2.1.conv.weight",
                "norm.running_mean", "norm.weight"):
        assert key in sd, key
    x = _images(2, 64, 5)
    with torch.no_grad():
        f = net.forward_features(x)
        expected = net.head(net.norm(f).mean(dim=(2, 3)))
        out = net(x)
    _close(out, expected, 1e-5)  # the upstream forward returns logits (no softmax), BN norm included
    assert not torch.allclose(net.norm(f), f, atol=1e-3)


@pytest.mark.parametrize("large", [False, True])
def test_oracle_resnet_cam_is_timm_resnet50_with_stride1_layer4(large: bool) -> None:
    upstream = wse.randomize(wse.resnet50_cam(K_WSE, large_feature_map=large), seed=5)
    ref = timm.create_model("resnet50", num_classes=K_WSE)
    layers = [ref.layer4] + ([ref.layer3] if large else [])
    for layer in layers:  # the first block's 3x3 conv and projection carry the stride
        layer[0].conv2.stride = (1, 1)
        layer[0].downsample[0].stride = (1, 1)
    ref.load_state_dict(upstream.state_dict(), strict=True)
    ref.eval()
    x = _images(2, 64, 6)
    with torch.no_grad():
        logits = upstream(x)["logits"]
        _close(logits, ref(x), 1e-5)
        f = upstream.forward_features(x)
        assert f.shape == (2, 2048, 8 if large else 4, 8 if large else 4)
        labels = torch.tensor([1, 3])
        cams = upstream(x, labels, return_cam=True)
    expected = torch.einsum("bc,bchw->bhw", upstream.fc.weight[labels], f) / 2048
    _close(cams, expected, 1e-5)
    _close(cams.mean(dim=(1, 2)) * 2048 + upstream.fc.bias[labels], logits[[0, 1], labels], 1e-4)


def _shift_vgg_key(key: str) -> str:
    """A ``features`` key of the 14x14 config -> the 28x28 one (index 23, pool4, is gone)."""
    index, rest = key.split(".", 1)
    return f"{int(index) - 1 if int(index) > 23 else int(index)}.{rest}"


def test_oracle_vgg_configs_match_torchvision_indices() -> None:
    from torchvision.models.vgg import cfgs, make_layers

    tv = make_layers(cfgs["D"]).eval()  # torchvision's vgg16 features: indices 0..30
    small, large = wse.vgg16_cam(K_WSE), wse.vgg16_cam(K_WSE, large_feature_map=True)
    conv_idx = [int(k.split(".")[1]) for k in small.state_dict() if k.startswith("features.") and k.endswith("weight")]
    assert conv_idx == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    conv_idx = [int(k.split(".")[1]) for k in large.state_dict() if k.startswith("features.") and k.endswith("weight")]
    assert conv_idx == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 23, 25, 27]  # pool4 dropped: indices shift by one
    assert len(small.features) == 30 and len(large.features) == 29
    assert small.state_dict()["conv6.weight"].shape == (1024, 512, 3, 3)
    assert small.state_dict()["fc.weight"].shape == (K_WSE, 1024)
    wse.randomize(small, seed=7)
    tv.load_state_dict(small.features.state_dict(), strict=False)
    x = _images(1, 64, 8)
    with torch.no_grad():
        assert torch.allclose(small.features(x), tv[:30](x), atol=1e-5)  # the 14x14 config: no pool5
        # the 28x28 config is torchvision's features less the pool at index 23: later indices shift by one
        large.features.load_state_dict({_shift_vgg_key(k): v for k, v in small.features.state_dict().items()})
        tv_large = nn.Sequential(*[m for i, m in enumerate(tv[:30]) if i != 23])
        assert torch.allclose(large.features(x), tv_large(x), atol=1e-5)
        assert large.features(x).shape[-1] == 8 and small.features(x).shape[-1] == 4


def test_oracle_inception_cam_keys_and_blocks() -> None:
    model = wse.inception_v3_cam(K_WSE)
    sd = model.state_dict()
    assert sd["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert sd["SPG_A3_1b.0.weight"].shape == (1024, 768, 3, 3) and sd["SPG_A3_2b.0.bias"].shape == (1024,)
    assert sd["SPG_A4.weight"].shape == (K_WSE, 1024, 1, 1) and sd["SPG_A4.bias"].shape == (K_WSE,)
    assert sd["Mixed_6a.branch3x3.conv.weight"].shape == (384, 288, 3, 3)
    assert not any(k.startswith(("Mixed_7", "AuxLogits", "fc.")) for k in sd)
    # everything but the SPG_* layers has torchvision's name and shape (upstream loads torchvision's weights)
    tv = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False).eval()
    tv_sd = tv.state_dict()
    own = {k: tuple(v.shape) for k, v in sd.items() if not k.startswith("SPG_")}
    assert all(k in tv_sd and tuple(tv_sd[k].shape) == s for k, s in own.items())
    wse.randomize(model, seed=11)
    tv.Mixed_5b.load_state_dict(model.Mixed_5b.state_dict())
    tv.Mixed_6b.load_state_dict(model.Mixed_6b.state_dict())
    x = torch.randn(1, 192, 9, 9, generator=torch.Generator().manual_seed(12))
    y = torch.randn(1, 768, 5, 5, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        assert torch.allclose(model.Mixed_5b(x), tv.Mixed_5b(x), atol=1e-5)
        assert torch.allclose(model.Mixed_6b(y), tv.Mixed_6b(y), atol=1e-5)


@pytest.mark.parametrize(("large", "smallest", "side"), [(False, 15, 4), (True, 11, 8)])
def test_oracle_inception_minimum_input(large: bool, smallest: int, side: int) -> None:
    model = wse.inception_v3_cam(K_WSE, large_feature_map=large).eval()
    with torch.no_grad():
        assert model.forward_features(_images(1, smallest, 0)).shape[-2:] == (1, 1)
        with pytest.raises(RuntimeError):
            model.forward_features(_images(1, smallest - 1, 0))
        assert model.forward_features(_images(1, 64, 0)).shape[-1] == side
        assert model.forward_features(_images(1, 224, 0)).shape[-1] == (28 if large else 14)


def test_oracle_inception_cam_is_the_spg_a4_map_with_bias() -> None:
    model = wse.randomize(wse.inception_v3_cam(K_WSE), seed=14)
    x = _images(2, 64, 15)
    labels = torch.tensor([4, 0])
    with torch.no_grad():
        logits = model(x)["logits"]
        cams = model(x, labels, return_cam=True)
        f = model.forward_features(x)
    w = model.SPG_A4.weight.flatten(1)
    expected = torch.einsum("bc,bchw->bhw", w[labels], f) + model.SPG_A4.bias[labels].view(2, 1, 1)
    _close(cams, expected, 1e-5)
    _close(cams.mean(dim=(1, 2)), logits[[0, 1], labels], 1e-5)


def test_oracle_wsolevaluation_checkpoint_dict(tmp_path: Path) -> None:
    model = wse.randomize(wse.vgg16_cam(3, large_feature_map=True), seed=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / "last_checkpoint.pth.tar"
    wse.save_wsolevaluation_checkpoint(model, "vgg16", path, epoch=7)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # plain data, as the loader reads it
    assert set(ckpt) == {"architecture", "epoch", "state_dict", "optimizer"}
    assert ckpt["architecture"] == "vgg16" and ckpt["epoch"] == 7
    assert list(ckpt["state_dict"]) == list(before) and not any(k.startswith("module.") for k in ckpt["state_dict"])
    assert all(torch.equal(ckpt["state_dict"][k], v) for k, v in model.state_dict().items())
    assert not torch.equal(ckpt["state_dict"]["fc.weight"], before["fc.weight"])  # one real step
    opt = ckpt["optimizer"]
    n_params = len(list(model.parameters()))
    assert opt["param_groups"][0]["lr"] == 0.1 and opt["param_groups"][0]["momentum"] == 0.9
    assert len(opt["state"]) == n_params and all("momentum_buffer" in s for s in opt["state"].values())


def test_oracle_cam_transcription_on_a_hand_made_map() -> None:
    f = torch.zeros(1, 3, 6, 6)
    f[0, 0, 1:3, 1:3] = 4.0  # mean over 3 channels: 4/3 there
    f[0, 1, 4, 4] = 3.0  # 1 there
    f[0, 2, 0, 5] = -6.0  # -2 there: ReLU'd away
    heat = cba.get_heatmap_from_features("cam", f)
    expected = np.zeros((6, 6), np.float32)
    expected[1:3, 1:3] = 1.0
    expected[4, 4] = 0.75
    assert heat.dtype == np.float32 and _max_diff(heat, expected) < 1e-6
    x = torch.ones(1, 3, 2, 2)
    w_model = nn.Sequential(nn.Identity(), nn.Module())
    w_model[1].fc = nn.Linear(3, 2)  # type: ignore[assignment]
    with torch.no_grad():
        w_model[1].fc.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]]))
    weighted = cba.get_feature_maps("convnext", x, 1, w_model)
    assert torch.equal(weighted[0, :, 0, 0], torch.tensor([-1.0, 0.5, 0.0]))


def _pc1_features(p: np.ndarray, q: np.ndarray, channels: int = 32, seed: int = 0) -> Tensor:
    """Channels that are ``a_c * P + b_c`` or ``a_c * Q + b_c`` (a_c > 0): after upstream's per-channel min-max
    they are P or Q exactly (both have min 0, max 1), so PC1 is the direction of P - Q."""
    rng = np.random.default_rng(seed)
    maps = [(p if c % 2 == 0 else q) * rng.uniform(0.5, 3.0) + rng.uniform(-1, 1) for c in range(channels)]
    return torch.from_numpy(np.stack(maps)[None].astype(np.float32))


def test_oracle_pc1_transcription_on_hand_made_maps() -> None:
    side = 6
    # an object in the middle: PC1 = P - Q (its largest magnitude, +1, is positive), no flip
    p = np.zeros((side, side))
    p[2:4, 2:4] = 1.0
    q = np.zeros((side, side))
    q[2, 2] = 1.0
    heat = cba.get_heatmap_from_features("pc1", _pc1_features(p, q))
    assert _max_diff(heat, p - q) < 1e-5
    # "on" along the last two rows: upstream's frame (row 0, col 0, last two rows / cols) counts 11 of
    # (side - 1) * 4 = 20 -> flip; the true one-pixel border would count 7 of 20 (no flip)
    p = np.zeros((side, side))
    p[4:, :] = 1.0
    q = np.zeros((side, side))
    q[4, 0] = 1.0
    heat = cba.get_heatmap_from_features("pc1", _pc1_features(p, q, seed=1))
    assert _max_diff(heat, 1 - (p - q)) < 1e-5
    # the same band along the first two rows is not flipped (upstream's frame is lopsided)
    heat = cba.get_heatmap_from_features("pc1", _pc1_features(p[::-1].copy(), q[::-1].copy(), seed=2))
    assert _max_diff(heat, (p - q)[::-1]) < 1e-5


def test_oracle_upstream_frame_rule() -> None:
    band = np.zeros((6, 6))
    band[4:, :] = 1.0
    assert cba.upstream_frame_flip(band)  # 12 / 20
    assert not cba.upstream_frame_flip(band[::-1])  # 6 + 3 = 9 of 20
    ring = np.ones((6, 6))
    ring[1:5, 1:5] = 0.0  # the true border: all 20 count -> flip
    assert cba.upstream_frame_flip(ring)
    assert not cba.upstream_frame_flip(1 - ring)  # the inner 4 x 4: row 4 and column 4 put 7 in the frame


def test_oracle_pc1_needs_enough_channels_and_pixels() -> None:
    few_pixels = torch.randn(1, 40, 5, 5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="n_components"):  # sklearn: 30 <= min(channels, pixels) = 25
        cba.get_heatmap_from_features("pc1", few_pixels)
    assert cba.get_heatmap_from_features("pc1", few_pixels, n_comp=20).shape == (5, 5)


# ----------------------------------------------------------------------------------------------- CAM Back Again


def _check_as_published(model: nn.Module, upstream: nn.Module, family: str, x: Tensor, targets: list[int]) -> None:
    """``compute_cams(..., as_published=True)`` == get_feature_maps + get_heatmap_from_features, per image."""
    _, compute_cams = _api()
    for method in ("cam", "pc1"):
        out = compute_cams(model, x, targets, method, as_published=True)
        assert out.maps.shape == (x.shape[0], 12, 12)
        assert out.targets.tolist() == targets
        for i, t in enumerate(targets):
            features = cba.get_feature_maps(family, x[i:i + 1], t, upstream)
            expected = cba.get_heatmap_from_features(method, features)
            diff = _max_diff(out.maps[i].detach().cpu(), expected)
            assert diff <= 1e-4, f"{method} image {i}: max diff {diff:.3g}"


def test_cam_back_again_convnext(cba_convnext: tuple[nn.Sequential, Path]) -> None:
    upstream, path = cba_convnext
    load, compute_cams = _api()
    model = load(path)
    info = model.checkpoint_info
    assert (info.format, info.num_classes) == ("cam-back-again-convnext", K_CBA)
    assert not model.training
    cfg = model.data_config
    assert tuple(cfg["input_size"]) == (3, CBA_SIZE, CBA_SIZE)
    assert tuple(cfg["mean"]) == tuple(cfg["std"]) == (0.5, 0.5, 0.5)
    x = _images(2, CBA_SIZE, 20)
    with torch.no_grad():
        probs = upstream(x)
        logits = model(x)
        assert _max_diff(torch.softmax(logits, 1), probs) <= 1e-5
        f = model.features(x)
        _close(f, upstream[0](x), 1e-5)
    assert torch.equal(model.head.fc.weight.detach(), upstream[1].fc.weight.detach())
    targets = probs.argmax(1).tolist()
    plain = compute_cams(model, x, targets, "cam")  # sum_c W[k, c] F_c, no bias (no head norm here)
    expected = torch.einsum("bc,bchw->bhw", upstream[1].fc.weight.detach()[targets], f)
    _close(plain.maps.detach(), expected, 1e-4)
    _check_as_published(model, upstream, "convnext", x, targets)


@pytest.mark.parametrize(("family", "wrap"), [("convnext", "module."), ("convnext", "model"),
                                             ("convnext", "module.+model"), ("replknet", "model"),
                                             ("replknet", "state_dict"), ("replknet", "module.")])
def test_cam_back_again_wrapped(family: str, wrap: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Saved from the DataParallel model (``module.`` keys) and / or under ``{'model'|'state_dict': ...}``
    (``build_model`` unwraps both)."""
    upstream, _ = request.getfixturevalue(f"cba_{family}")
    load, _ = _api()
    sd: dict[str, Any] = upstream.state_dict()
    if wrap.startswith("module."):
        sd = {f"module.{k}": v for k, v in sd.items()}
    key = wrap.split("+")[-1]
    obj: Any = {key: sd} if key in ("model", "state_dict") else sd
    path = tmp_path / "wrapped.pth"
    torch.save(obj, path)
    model = load(path)
    assert model.checkpoint_info.format == f"cam-back-again-{family}"
    assert model.checkpoint_info.num_classes == K_CBA
    x = _images(1, CBA_SIZE, 21)
    with torch.no_grad():
        ours = torch.softmax(model(x), 1)
        ref = upstream(x) if family == "convnext" else torch.softmax(upstream(x), 1)
    assert _max_diff(ours, ref) <= 1e-5


def test_cam_back_again_replknet(cba_replknet: tuple[RepLKNet, Path]) -> None:
    upstream, path = cba_replknet
    load, compute_cams = _api()
    model = load(path)
    info = model.checkpoint_info
    assert (info.format, info.num_classes) == ("cam-back-again-replknet", K_CBA)
    cfg = model.data_config
    assert tuple(cfg["input_size"]) == (3, CBA_SIZE, CBA_SIZE)
    assert tuple(cfg["mean"]) == tuple(cfg["std"]) == (0.5, 0.5, 0.5)
    x = _images(2, CBA_SIZE, 22)
    with torch.no_grad():
        ref = upstream(x)  # logits: RepLKNet's forward has no softmax
        logits = model(x)
        f = model.features(x)
    _close(logits, ref, 1e-4)
    _close(f, upstream.forward_features(x).detach(), 1e-4)  # before the head BN
    assert torch.equal(model.head.fc.weight.detach(), upstream.head.weight.detach())
    targets = ref.argmax(1).tolist()
    _check_as_published(model, upstream, "replknet", x, targets)
    # our plain CAM folds the head BN into the weights: it satisfies the logit identity, the published one not
    plain = compute_cams(model, x, targets, "cam")
    with torch.no_grad():
        w_eff, b_eff = model.class_weights(f)
    idx = torch.arange(2)
    _close(plain.maps.detach().mean(dim=(1, 2)) + b_eff[idx, targets], logits[idx, targets], 1e-4)
    _close(plain.maps.detach(), torch.einsum("bc,bchw->bhw", w_eff[idx, targets], f), 1e-4)
    published = compute_cams(model, x, targets, "cam", as_published=True).maps.detach()
    ours = plain.maps.detach().clamp_min(0)
    ours = ours / ours.flatten(1).amax(1).view(-1, 1, 1)
    for i in range(2):
        assert _max_diff(ours[i], published[i]) > 1e-2, "the head BN should change the CAM"


# ----------------------------------------------------------------------------------------------- wsolevaluation

WSE_CASES = [  # (architecture, large_feature_map, override needed: the file does not tell)
    ("resnet50", False, False),
    ("resnet50", True, True),
    ("vgg16", False, False),
    ("vgg16", True, False),  # the 28x28 config shows in the feature layers' indices
    ("inception_v3", False, False),
    ("inception_v3", True, True),
]


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "large", "override"), WSE_CASES)
def test_wsolevaluation_checkpoint(wse_checkpoint: Callable[[str, bool], tuple[nn.Module, Path]], arch: str,
                                   large: bool, override: bool) -> None:
    upstream, path = wse_checkpoint(arch, large)
    load, compute_cams = _api()
    model = load(path, large_feature_map=True) if override else load(path)
    info = model.checkpoint_info
    assert (info.format, info.architecture, info.num_classes) == ("wsolevaluation", arch, K_WSE)
    assert not model.training
    cfg = model.data_config
    assert tuple(cfg["input_size"]) == (3, 224, 224)
    _close(cfg["mean"], IMAGENET[0], 1e-6)
    _close(cfg["std"], IMAGENET[1], 1e-6)
    x = _images(2, 64, 30)
    labels = torch.tensor([1, 4])
    idx = torch.arange(2)
    with torch.no_grad():
        ref = upstream(x)["logits"]
        logits = model(x)
        f = model.features(x)
        up_cams = upstream(x, labels, return_cam=True)
        up_f = upstream.forward_features(x)
    assert f.shape == up_f.shape == (2, up_f.shape[1], 8 if large else 4, 8 if large else 4)
    _close(logits, ref, 1e-4)
    _close(f, up_f, 1e-4)
    maps = compute_cams(model, x, labels, "cam").maps.detach()
    if arch == "inception_v3":  # the CAM is SPG_A4's map, bias included
        assert torch.equal(model.head.fc.weight.detach(), upstream.SPG_A4.weight.detach().flatten(1))
        _close(maps + upstream.SPG_A4.bias.detach()[labels].view(2, 1, 1), up_cams, 1e-4)
    else:  # upstream averages the weighted channels
        assert torch.equal(model.head.fc.weight.detach(), upstream.fc.weight.detach())
        _close(maps / f.shape[1], up_cams, 1e-4)
    assert torch.equal(logits.argmax(1), ref.argmax(1))
    _close(logits[idx, labels], ref[idx, labels], 1e-4)
    if not override and arch != "vgg16":  # the loader says what it assumed
        assert any("large_feature_map" in note for note in info.inferred)
    if override:  # without it the file loads (same keys) but as the stride-16 model: other maps, other logits
        with torch.no_grad():
            assert load(path).features(x).shape[-1] == 4


# ----------------------------------------------------------------------------------------------- CLI

CLI_CASES = ["cba-convnext", "cba-replknet", "wse-resnet50", "wse-vgg16-28x28", "wse-inception_v3"]


def _cli_case(case: str, request: pytest.FixtureRequest) -> tuple[nn.Module, Path, str, int, tuple[Any, Any], bool]:
    """(upstream model, checkpoint, format, K, (mean, std), whether the upstream forward gives probabilities)."""
    if case == "cba-convnext":
        upstream, path = request.getfixturevalue("cba_convnext")
        return upstream, path, "cam-back-again-convnext", K_CBA, ((0.5,) * 3, (0.5,) * 3), True
    if case == "cba-replknet":
        upstream, path = request.getfixturevalue("cba_replknet")
        return upstream, path, "cam-back-again-replknet", K_CBA, ((0.5,) * 3, (0.5,) * 3), False
    arch = case.split("-")[1]
    upstream, path = request.getfixturevalue("wse_checkpoint")(arch, case.endswith("28x28"))
    return upstream, path, "wsolevaluation", K_WSE, IMAGENET, False


@pytest.mark.slow
@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_localize_and_inspect(case: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from wsol.cli import app

    upstream, path, fmt, k, (mean, std), probabilities = _cli_case(case, request)
    size = CBA_SIZE if fmt.startswith("cam-back-again") else 224
    image = _write_jpeg(tmp_path / "bird.jpg", size, seed=len(case))
    with torch.no_grad():
        out = upstream(_upstream_input(image, size, mean, std))
    scores = out if probabilities else out["logits"] if isinstance(out, dict) else out
    top1 = _top1_with_margin(scores)
    result = runner.invoke(app, ["localize", str(image), "--checkpoint", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert len(records) == 1
    assert records[0]["top5"][0]["class"] == top1
    assert records[0]["target"]["class"] == top1
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    text = result.output
    assert fmt in text and str(k) in text
    if fmt == "wsolevaluation":
        assert case.split("-")[1] in text


# ----------------------------------------------------------------------------------------------- bad files


def test_truncated_checkpoint_is_one_line_error(cba_convnext: tuple[nn.Sequential, Path], tmp_path: Path) -> None:
    load, _ = _api()
    data = cba_convnext[1].read_bytes()
    bad = tmp_path / "half.pth"
    bad.write_bytes(data[: len(data) // 2])
    assert bad.name in _one_line_error(lambda: load(bad))


def test_text_file_is_one_line_error(tmp_path: Path) -> None:
    load, _ = _api()
    bad = tmp_path / "notes.pth"
    bad.write_text("epoch 10: top-1 81.2\nthis is not a checkpoint\n")
    assert bad.name in _one_line_error(lambda: load(bad))


@pytest.mark.slow
def test_model_override_contradicting_the_file(wse_checkpoint: Callable[[str, bool], tuple[nn.Module, Path]]) -> None:
    load, _ = _api()
    _, path = wse_checkpoint("resnet50", False)
    message = _one_line_error(lambda: load(path, model="vgg16"))
    assert "vgg16" in message and "resnet50" in message


@pytest.mark.slow
def test_architecture_field_contradicting_the_weights(
        wse_checkpoint: Callable[[str, bool], tuple[nn.Module, Path]], tmp_path: Path) -> None:
    load, _ = _api()
    vgg, _ = wse_checkpoint("vgg16", False)
    bad = tmp_path / "mislabelled_checkpoint.pth.tar"
    torch.save({"architecture": "resnet50", "epoch": 3, "state_dict": vgg.state_dict(), "optimizer": {}}, bad)
    message = _one_line_error(lambda: load(bad))
    assert "resnet50" in message
