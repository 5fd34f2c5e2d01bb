"""RepLKNet and SLaK: official key names, re-parameterisation, checkpoint loading, timm registration."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from wsol.errors import WSOLError
from wsol.models import replknet as replknet_mod
from wsol.models import slak as slak_mod
from wsol.models.official import load_official_checkpoint
from wsol.models.replknet import RepLKNet
from wsol.models.slak import SLaK

TINY_REPLK = dict(
    large_kernel_sizes=(7, 5, 5, 3), layers=(1, 1, 1, 1), channels=(8, 16, 16, 24), small_kernel=3
)
TINY_SLAK = dict(depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), kernel_size=(9, 7, 7, 5, 3), width_factor=1.0)


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and BN statistics, so that BN folding is actually exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def tiny_replknet(seed: int = 0, num_classes: int = 5, **kw: object) -> RepLKNet:
    """A RepLKNet small enough for a unit test, same layout as 31B."""
    return _randomize(RepLKNet(**{**TINY_REPLK, **kw}, num_classes=num_classes), seed)  # type: ignore[arg-type]


def tiny_slak(seed: int = 0, num_classes: int = 5, **kw: object) -> SLaK:
    """A SLaK small enough for a unit test, same layout as SLaK-T."""
    return _randomize(SLaK(**{**TINY_SLAK, **kw}, num_classes=num_classes), seed)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def x64() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# --- registration and official key names -------------------------------------------------------------


@pytest.mark.parametrize("name", ["replknet_31b", "replknet_31l", "replknet_xl", "slak_tiny", "slak_small",
                                  "slak_base"])
def test_registered_with_timm(name: str) -> None:
    assert name in timm.list_models()
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=7)
    assert model.num_classes == 7
    assert model.get_classifier().out_features == 7
    cfg = model.pretrained_cfg
    assert cfg["mean"] == cfg["std"] == (0.5, 0.5, 0.5)
    assert cfg["input_size"] == (3, 384, 384)
    assert model.default_cfg is model.pretrained_cfg


def test_replknet_31b_official_keys() -> None:
    # names and shapes read from the authors' replknet.py (RepLKNet-31B)
    model = timm.create_model("replknet_31b")
    shapes = _shapes(model)
    expected = {
        "stem.0.conv.weight": (128, 3, 3, 3),
        "stem.1.conv.weight": (128, 1, 3, 3),
        "stem.3.bn.running_var": (128,),
        "stages.0.blocks.0.prelkb_bn.weight": (128,),
        "stages.0.blocks.0.pw1.conv.weight": (128, 128, 1, 1),
        "stages.0.blocks.0.large_kernel.lkb_origin.conv.weight": (128, 1, 31, 31),
        "stages.0.blocks.0.large_kernel.lkb_origin.bn.running_mean": (128,),
        "stages.0.blocks.0.large_kernel.small_conv.conv.weight": (128, 1, 5, 5),
        "stages.0.blocks.0.pw2.bn.bias": (128,),
        "stages.0.blocks.1.preffn_bn.weight": (128,),
        "stages.0.blocks.1.pw1.conv.weight": (512, 128, 1, 1),
        "stages.0.blocks.1.pw2.conv.weight": (128, 512, 1, 1),
        "stages.1.blocks.0.large_kernel.lkb_origin.conv.weight": (256, 1, 29, 29),
        "stages.2.blocks.35.pw2.conv.weight": (512, 2048, 1, 1),
        "stages.3.blocks.3.pw1.bn.weight": (4096,),
        "stages.3.blocks.0.large_kernel.lkb_origin.conv.weight": (1024, 1, 13, 13),
        "transitions.0.0.conv.weight": (256, 128, 1, 1),
        "transitions.0.1.conv.weight": (256, 1, 3, 3),
        "transitions.2.1.bn.weight": (1024,),
        "norm.running_mean": (1024,),
        "head.weight": (1000, 1024),
        "head.bias": (1000,),
    }
    for key, shape in expected.items():
        assert shapes.get(key) == shape, key
    assert "stages.2.blocks.36.pw1.conv.weight" not in shapes
    assert not any("lkb_reparam" in k for k in shapes)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(79e6, rel=0.02)  # paper: 79M
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 64, 64))
    assert feats.shape == (1, 1024, 2, 2)  # stride 32


def test_replknet_31l_xl_official_keys() -> None:
    with torch.device("meta"):
        large = timm.create_model("replknet_31l")
        xl = timm.create_model("replknet_xl")
    s = _shapes(large)
    assert s["stages.0.blocks.0.large_kernel.lkb_origin.conv.weight"] == (192, 1, 31, 31)
    assert s["head.weight"] == (1000, 1536)
    s = _shapes(xl)
    # XL: no small kernel, dw_ratio 1.5
    assert s["stages.0.blocks.0.pw1.conv.weight"] == (384, 256, 1, 1)
    assert s["stages.0.blocks.0.large_kernel.lkb_origin.conv.weight"] == (384, 1, 27, 27)
    assert s["stages.3.blocks.0.large_kernel.lkb_origin.conv.weight"] == (3072, 1, 13, 13)
    assert not any("small_conv" in k for k in s)
    assert xl.num_features == 2048


def test_slak_tiny_official_keys() -> None:
    # names and shapes read from the authors' SLaK.py with --Decom True --width_factor 1.3
    with torch.device("meta"):
        model = timm.create_model("slak_tiny")
    shapes = _shapes(model)
    expected = {
        "downsample_layers.0.0.weight": (124, 3, 4, 4),
        "downsample_layers.0.1.weight": (124,),
        "downsample_layers.1.0.bias": (124,),
        "downsample_layers.1.1.weight": (249, 124, 2, 2),
        "downsample_layers.3.1.weight": (998, 499, 2, 2),
        "stages.0.0.gamma": (124,),
        "stages.0.0.large_kernel.LoRA1.conv.weight": (124, 1, 51, 5),
        "stages.0.0.large_kernel.LoRA1.bn.running_var": (124,),
        "stages.0.0.large_kernel.LoRA2.conv.weight": (124, 1, 5, 51),
        "stages.0.0.large_kernel.small_conv.conv.weight": (124, 1, 5, 5),
        "stages.0.0.large_kernel.small_conv.bn.weight": (124,),
        "stages.0.0.norm.weight": (124,),
        "stages.0.0.pwconv1.weight": (496, 124),
        "stages.0.0.pwconv2.bias": (124,),
        "stages.1.2.large_kernel.LoRA1.conv.weight": (249, 1, 49, 5),
        "stages.2.8.large_kernel.LoRA2.conv.weight": (499, 1, 5, 47),
        "stages.3.2.large_kernel.LoRA1.conv.weight": (998, 1, 13, 5),
        "norm.weight": (998,),
        "head.weight": (1000, 998),
    }
    for key, shape in expected.items():
        assert shapes.get(key) == shape, key
    assert "stages.2.9.gamma" not in shapes
    with torch.device("meta"):
        small = timm.create_model("slak_small")
        base = timm.create_model("slak_base")
    assert "stages.2.26.gamma" in small.state_dict() and small.num_features == 998
    assert _shapes(base)["stages.0.0.large_kernel.LoRA1.conv.weight"] == (166, 1, 51, 5)


@pytest.mark.parametrize("name,channels", [("replknet_31b", 1024), ("slak_tiny", 998)])
def test_full_size_feature_map_is_12x12_at_384(name: str, channels: int) -> None:
    with torch.device("meta"):  # shapes only: a real 384 x 384 forward is too slow for a unit test
        model = timm.create_model(name)
        feats = model.forward_features(torch.empty(1, 3, 384, 384))
        stages = model.stage_features(torch.empty(1, 3, 384, 384))
    assert feats.shape == (1, channels, 12, 12)
    assert [s.shape[-1] for s in stages] == [96, 48, 24, 12]
    assert [s.shape[1] for s in stages] == [f["num_chs"] for f in model.feature_info]


# --- forward API ----------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", [tiny_replknet, tiny_slak])
def test_forward_api(factory, x64: torch.Tensor) -> None:
    model = factory()
    with torch.no_grad():
        feats = model.forward_features(x64)
        logits = model(x64)
        stages = model.stage_features(x64)
    assert feats.shape == (2, model.num_features, 2, 2)
    assert logits.shape == (2, model.num_classes)
    torch.testing.assert_close(model.forward_head(feats), logits)
    torch.testing.assert_close(stages[-1], feats)
    assert [s.shape[-1] for s in stages] == [16, 8, 4, 2]
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 384, 384)).shape[-2:] == (12, 12)


def test_replknet_head_is_bn_gap_linear(x64: torch.Tensor) -> None:
    model = tiny_replknet()
    with torch.no_grad():
        feats = model.forward_features(x64)
        manual = model.head(model.norm(feats).mean(dim=(2, 3)))
    torch.testing.assert_close(model(x64), manual)


def test_grad_checkpointing_same_output(x64: torch.Tensor) -> None:
    for model in (tiny_replknet(), tiny_slak()):
        ref = model(x64)
        model.set_grad_checkpointing(True)
        out = model(x64)
        out.sum().backward()
        torch.testing.assert_close(out, ref)


# --- structural re-parameterisation ----------------------------------------------------------------


@pytest.mark.parametrize("factory", [tiny_replknet, tiny_slak])
def test_structural_reparam_equivalence(factory, x64: torch.Tensor) -> None:
    model = factory()
    with torch.no_grad():
        before = model(x64)
        model.structural_reparam()
        after = model(x64)
    keys = list(model.state_dict())
    assert any(".large_kernel.lkb_reparam.weight" in k for k in keys)
    assert not any(b in k for k in keys for b in ("lkb_origin", "small_conv", "LoRA1", "LoRA2"))
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


def test_replknet_xl_style_reparam_without_small_kernel(x64: torch.Tensor) -> None:
    model = tiny_replknet(small_kernel=None, dw_ratio=1.5)
    assert not any("small_conv" in k for k in model.state_dict())
    with torch.no_grad():
        before = model(x64)
        after = model.structural_reparam()(x64)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


# --- checkpoints -------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", [tiny_replknet, tiny_slak])
@pytest.mark.parametrize("wrapper", ["model", "state_dict", "none"])
def test_round_trip(factory, wrapper: str, tmp_path: Path, x64: torch.Tensor) -> None:
    src, dst = factory(seed=1), factory(seed=2)
    state = src.state_dict()
    if wrapper == "state_dict":  # DDP prefix and a sparse-training mask, both to be dropped
        state = {f"module.{k}": v for k, v in state.items()}
        state["module.stages.0.0.large_kernel.LoRA1.conv.weight_mask"] = torch.ones(1)
    path = tmp_path / "ckpt.pth"
    torch.save(state if wrapper == "none" else {wrapper: state, "epoch": 3}, path)
    assert load_official_checkpoint(dst, path) == []
    with torch.no_grad():
        torch.testing.assert_close(dst(x64), src(x64), rtol=0, atol=0)


def test_merged_checkpoint_loads(tmp_path: Path, x64: torch.Tensor) -> None:
    src = tiny_replknet(seed=1)
    with torch.no_grad():
        ref = src(x64)
    src.structural_reparam()
    path = tmp_path / "merged.pth"
    torch.save({"model": src.state_dict()}, path)
    # into a model re-parameterised beforehand
    merged = tiny_replknet(seed=2).structural_reparam()
    load_official_checkpoint(merged, path)
    # and into a training-time model, which is merged on the way
    fresh = tiny_replknet(seed=3)
    load_official_checkpoint(fresh, path)
    assert fresh.stages[0].blocks[0].large_kernel.merged
    with torch.no_grad():
        torch.testing.assert_close(merged(x64), ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fresh(x64), ref, rtol=1e-4, atol=1e-5)


def test_unmerged_checkpoint_into_merged_model(tmp_path: Path, x64: torch.Tensor) -> None:
    for factory in (tiny_replknet, tiny_slak):
        src = factory(seed=1)
        path = tmp_path / "unmerged.pth"
        torch.save({"model": src.state_dict()}, path)
        merged = factory(seed=2).structural_reparam()
        load_official_checkpoint(merged, path)
        with torch.no_grad():
            torch.testing.assert_close(merged(x64), src(x64), rtol=1e-4, atol=1e-5)


def test_slak_old_decom_names_are_renamed(tmp_path: Path, x64: torch.Tensor) -> None:
    src = tiny_slak(seed=1)
    state = {k.replace(".LoRA1.", ".Decom1.").replace(".LoRA2.", ".Decom2."): v
             for k, v in src.state_dict().items()}
    assert any(".Decom1." in k for k in state)
    path = tmp_path / "old.pth"
    torch.save({"model": state}, path)
    dst = tiny_slak(seed=2)
    load_official_checkpoint(dst, path)
    with torch.no_grad():
        torch.testing.assert_close(dst(x64), src(x64))


def test_other_model_checkpoint_names_keys(tmp_path: Path) -> None:
    path = tmp_path / "slak.pth"
    torch.save({"model": tiny_slak().state_dict()}, path)
    with pytest.raises(WSOLError) as info:
        load_official_checkpoint(tiny_replknet(), path)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path) in msg and "RepLKNet" in msg
    assert "missing keys [stem.0.conv.weight" in msg
    assert "unexpected keys [downsample_layers.0.0.weight" in msg
    assert "in all)" in msg  # only the first few are listed

    path = tmp_path / "replk.pth"
    torch.save({"state_dict": tiny_replknet().state_dict()}, path)
    with pytest.raises(WSOLError, match=r"replk\.pth: checkpoint does not fit SLaK: missing keys"):
        replknet_mod.load_official_checkpoint(tiny_slak(), path)


def test_head_mismatch(tmp_path: Path, x64: torch.Tensor) -> None:
    src = tiny_replknet(seed=1, num_classes=5)
    path = tmp_path / "in1k.pth"
    torch.save({"model": src.state_dict()}, path)
    dst = tiny_replknet(seed=2, num_classes=7)
    assert load_official_checkpoint(dst, path) == ["head.weight", "head.bias"]
    with torch.no_grad():
        torch.testing.assert_close(dst.forward_features(x64), src.forward_features(x64))
    with pytest.raises(WSOLError, match=r"shape mismatch \[head\.weight \(5, 24\) vs \(7, 24\)"):
        load_official_checkpoint(tiny_replknet(num_classes=7), path, strict_head=True)
    other = tiny_replknet(channels=(8, 16, 16, 32))
    with pytest.raises(WSOLError, match="shape mismatch"):
        load_official_checkpoint(other, path)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(WSOLError, match="not found"):
        load_official_checkpoint(tiny_replknet(), tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WSOLError, match=r"bad\.pth: cannot read checkpoint"):
        slak_mod.load_official_checkpoint(tiny_slak(), bad)
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 1}, empty)
    with pytest.raises(WSOLError, match="no weight tensors"):
        load_official_checkpoint(tiny_slak(), empty)


def test_timm_pretrained_file(tmp_path: Path, x64: torch.Tensor) -> None:
    src = tiny_replknet(seed=4)
    path = tmp_path / "w.pth"
    torch.save({"model": src.state_dict()}, path)
    model = timm.create_model("replknet_31b", pretrained=True, pretrained_cfg_overlay={"file": str(path)},
                              num_classes=5, **TINY_REPLK).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x64), src(x64))


def test_timm_pretrained_without_file_is_refused() -> None:
    with pytest.raises(WSOLError, match="no weights to download"):
        timm.create_model("slak_tiny", pretrained=True, num_classes=5, **TINY_SLAK)
    with pytest.raises(WSOLError, match="stage_features"):
        timm.create_model("replknet_31b", features_only=True, **TINY_REPLK)


def test_direct_construction_has_a_config() -> None:
    for model in (tiny_replknet(), tiny_slak()):
        assert model.pretrained_cfg["input_size"] == (3, 384, 384)
        assert model.default_cfg["mean"] == (0.5, 0.5, 0.5)
