"""Training methods (wsol.methods): HaS, CutMix and ADL against transcriptions of wsolevaluation's semantics,
the method registry and config checks, and `wsol train` with a method end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from test_train import synth, tiny_overrides  # noqa: F401  (the tiny synthetic dataset fixture)
from wsol.errors import WSOLError
from wsol.methods import METHODS, check_method, get_training_method
from wsol.methods.adl import ADLayer
from wsol.methods.cutmix import CutMix, cut_box, paste
from wsol.methods.has import hide_patches
from wsol.models import build_model, load
from wsol.train.config import MethodConfig, load_config
from wsol.train.run import train


# --------------------------------------------------------------------------------------------------- HaS
def _has_transcription(images: torch.Tensor, grid: int, rate: float, draws: torch.Tensor) -> torch.Tensor:
    """wsolevaluation's loop (square images), with ``random.random()`` replaced by the given draws."""
    out = images.clone()
    b, _, h, w = images.shape
    for n in range(b):
        for i, x in enumerate(range(0, w, grid)):
            for j, y in enumerate(range(0, h, grid)):
                if draws[n, 0, i, j] <= rate:
                    out[n, :, x:min(h, x + grid), y:min(h, y + grid)] = 0.0
    return out


@pytest.mark.parametrize(("size", "grid", "rate"), [(12, 4, 0.5), (10, 4, 0.3), (9, 3, 0.8), (8, 16, 0.5)])
def test_has_hides_the_transcriptions_patches(size: int, grid: int, rate: float) -> None:
    images = torch.rand(3, 2, size, size) + 0.5  # no zero pixel before hiding
    draws = torch.rand(3, 1, math.ceil(size / grid), math.ceil(size / grid), generator=torch.Generator().manual_seed(5))
    ours = hide_patches(images, grid, rate, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours, _has_transcription(images, grid, rate, draws), rtol=0, atol=0)
    hidden = (ours == 0).all(1)  # whole patches, the same in every channel
    assert 0 < hidden.float().mean() < 1 or size <= grid


def test_has_limits() -> None:
    images = torch.rand(2, 3, 8, 8) + 0.5
    assert hide_patches(images, 0, 1.0) is images  # grid 0: off, as upstream
    torch.testing.assert_close(hide_patches(images, 2, 0.0), images)  # random() <= 0 almost never
    assert (hide_patches(images, 2, 1.0) == 0).all()
    # hand-made draws: patch (row 0, col 1) of image 0 hidden, nothing else
    draws = torch.full((1, 1, 2, 2), 0.9)
    draws[0, 0, 0, 1] = 0.1
    out = _has_transcription(images[:1], 4, 0.5, draws)
    assert (out[0, :, 0:4, 4:8] == 0).all() and (out[0, :, 4:, :] > 0).all() and (out[0, :, :4, :4] > 0).all()


# ------------------------------------------------------------------------------------------------ CutMix
def test_cutmix_box_hand_computed() -> None:
    # 10 x 10, lam 0.75: side ratio sqrt(0.25) = 0.5 -> 5 px; int(5) // 2 = 2 either side of the centre
    assert cut_box(10, 10, 0.75, (2, 8)) == (0, 6, 4, 10)  # clipped at the top and right
    assert cut_box(10, 10, 0.75, (5, 5)) == (3, 3, 7, 7)
    assert cut_box(10, 20, 0.0, (5, 10)) == (0, 0, 10, 20)  # lam 0: the whole image
    images = torch.arange(2 * 1 * 10 * 10, dtype=torch.float32).view(2, 1, 10, 10)
    mixed, lam = paste(images, torch.tensor([1, 0]), (0, 6, 4, 10))
    assert lam == pytest.approx(1 - 16 / 100)  # the clipped box's real area, as upstream recomputes it
    torch.testing.assert_close(mixed[0, :, 0:4, 6:10], images[1, :, 0:4, 6:10])
    torch.testing.assert_close(mixed[1, :, 0:4, 6:10], images[0, :, 0:4, 6:10])
    outside = torch.ones(10, 10, dtype=torch.bool)
    outside[0:4, 6:10] = False
    torch.testing.assert_close(mixed[:, :, outside], images[:, :, outside])


def test_cutmix_loss_weighs_the_two_labels_by_area() -> None:
    class Stub(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([x.mean((1, 2, 3)), -x.mean((1, 2, 3)), x[:, 0, 0, 0]], 1)

    method = CutMix(MethodConfig(name="cutmix", cutmix_beta=1.0, cutmix_prob=1.0))
    images, labels = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    torch.manual_seed(3)
    loss, logits = method.loss(Stub(), images, labels)
    torch.manual_seed(3)  # the same draws, in the order the method makes them
    assert float(torch.rand(())) < 1.0
    beta = torch.tensor(1.0)
    lam = float(torch.distributions.Beta(beta, beta).sample())
    centre = (int(torch.randint(16, ())), int(torch.randint(16, ())))
    perm = torch.randperm(4)
    mixed, lam = paste(images, perm, cut_box(16, 16, lam, centre))
    expected = lam * F.cross_entropy(Stub()(mixed), labels) + (1 - lam) * F.cross_entropy(Stub()(mixed), labels[perm])
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logits, Stub()(mixed))
    off = CutMix(MethodConfig(name="cutmix", cutmix_prob=0.0))
    loss0, _ = off.loss(Stub(), images, labels)
    torch.testing.assert_close(loss0, F.cross_entropy(Stub()(images), labels))  # prob 0: plain cross-entropy


# --------------------------------------------------------------------------------------------------- ADL
def test_adl_layer_masks_as_the_paper() -> None:
    x = torch.zeros(2, 2, 2, 2)
    x[0, :, 0, 0] = torch.tensor([1.0, 1.0])  # attention (channel mean) 1 at (0, 0)
    x[0, :, 1, 1] = torch.tensor([0.75, 1.0])  # 0.875: below 0.95 x max, kept by the drop mask
    x[1, :, 0, 1] = torch.tensor([2.0, 2.0])
    drop = ADLayer(drop_rate=1.0, threshold=0.95).train()
    out = drop(x)
    assert out[0, :, 0, 0].tolist() == [0.0, 0.0] and out[0, :, 1, 1].tolist() == [0.75, 1.0]
    assert out[1, :, 0, 1].tolist() == [0.0, 0.0]  # per image: image 1's own max
    stress = ADLayer(drop_rate=0.0, threshold=0.95).train()
    torch.testing.assert_close(stress(x), x * torch.sigmoid(x.mean(1, keepdim=True)))
    assert drop.eval()(x) is x  # identity at test time


def test_adl_hooks_at_the_protocol_places() -> None:
    torch.manual_seed(0)
    plain = build_model("resnet50", num_classes=3).eval()
    model = build_model("resnet50", num_classes=3)
    model.load_state_dict(plain.state_dict())
    raw: list[torch.Tensor] = []
    model.backbone.layer3[0].register_forward_hook(lambda _m, _i, out: raw.append(out))  # before ADL's hook
    get_training_method(MethodConfig(name="adl", adl_drop_rate=1.0, adl_threshold=0.999)).setup(model)
    assert len(model.adl_layers) == 3 and set(model.state_dict()) == set(plain.state_dict())  # no new weights
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model.eval()(x), plain(x))  # identity at test time
    seen: list[torch.Tensor] = []
    model.backbone.layer3[1].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    model.train()(x)
    attention = raw[-1].mean(1, keepdim=True)
    keep = attention < 0.999 * attention.flatten(1).amax(1).view(-1, 1, 1, 1)
    assert 0 < keep.float().mean() < 1
    torch.testing.assert_close(seen[-1], raw[-1] * keep)  # what layer3.1 receives: layer3.0's output, dropped


def test_registry_and_checks() -> None:
    assert {"cam", "has", "cutmix", "adl"} <= set(METHODS)
    for bad, key in ((MethodConfig(name="nope"), "method.name"), (MethodConfig(name="has", has_drop_rate=1.5),
                     "method.has_drop_rate"), (MethodConfig(name="cutmix", cutmix_beta=-1), "method.cutmix_beta"),
                     (MethodConfig(name="adl", adl_threshold=2.0), "method.adl_threshold")):
        with pytest.raises(WSOLError, match=key):
            check_method(bad)
    with pytest.raises(WSOLError, match="method.adl_blocks"):
        get_training_method(MethodConfig(name="adl")).setup(build_model("resnet10t", num_classes=2))
    with pytest.raises(WSOLError, match="not a module"):
        get_training_method(MethodConfig(name="adl", adl_blocks=["layer9"])).setup(
            build_model("resnet10t", num_classes=2))


def test_method_configs_cover_the_protocol_grid() -> None:
    root = Path(__file__).resolve().parents[1] / "configs" / "methods"
    files = sorted(root.glob("*.yaml"))
    assert len(files) == 3 * 3 * 6
    for path in files:
        dataset, _, method = path.stem.rpartition("_")
        config = load_config(path, [])
        config.check()
        assert config.method.name == method and config.trainer.out_dir == f"runs/{path.stem}"
        assert config.model.name.endswith(".tv_in1k")  # the protocol's torchvision ImageNet weights
    has = load_config(root / "cub_resnet50_has.yaml", [])
    assert (has.method.has_grid_size, has.method.has_drop_rate) == (4, 0.5)  # wsolevaluation's defaults
    assert has.reported["MaxBoxAcc_fcam_table1"] == 78.1


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
@pytest.mark.parametrize("method", ["has", "cutmix", "adl"])
def test_train_with_a_method_records_it(method: str, synth: Path, tmp_path: Path) -> None:  # noqa: F811
    extra = {"method.name": method, "trainer.epochs": 1}
    if method == "adl":
        extra["method.adl_blocks"] = "[layer3.0, layer4.0]"
    config = load_config(None, tiny_overrides(synth, tmp_path, **extra))
    summary = train(config, quiet=True)
    best = Path(summary["best_checkpoint"])
    record = torch.load(best, map_location="cpu", weights_only=True)["wsol"]["method"]
    assert record["name"] == method
    model = load(best)
    assert model.checkpoint_info.format == "wsol-train"
    if method == "adl":
        assert len(model.adl_layers) == 2
    x = torch.randn(2, 3, 64, 64)
    assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("method", ["acol", "spg"])
def test_acol_spg_on_another_resnet(method: str) -> None:
    """Beyond the protocol's ResNet50: any timm ResNet with the WSOL surgery (the CPU benchmark's resnet10t),
    with branch widths read from its layers."""
    torch.manual_seed(0)
    model = build_model("resnet10t", num_classes=4, surgery=True)
    training = get_training_method(MethodConfig(name=method))
    training.setup(model)
    x, y = torch.randn(2, 3, 112, 112), torch.tensor([0, 3])
    loss, logits = training.loss(model.train(), x, y)
    assert torch.isfinite(loss) and logits.shape == (2, 4)
    from wsol.cams import compute_cams

    out = compute_cams(model.eval(), x, y, training.map_method)
    assert out.maps.shape == (2, 7, 7) and torch.isfinite(out.maps).all()
    with pytest.raises(WSOLError, match=f"method.name={method}"):
        get_training_method(MethodConfig(name=method)).setup(build_model("resnet10t", num_classes=4))  # no surgery


def test_localize_picks_the_checkpoints_method_map(tmp_path: Path) -> None:
    """A checkpoint of an ACoL run is localized with ACoL's two-branch map unless --method says otherwise."""
    import json

    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from wsol.cli import app

    torch.manual_seed(0)
    model = build_model("resnet10t", num_classes=3, surgery=True)
    get_training_method(MethodConfig(name="acol")).setup(model)
    record = {"model": "resnet10t", "num_classes": 3, "surgery": True, "method": {"name": "acol"},
              "data_config": {"mean": [0.5] * 3, "std": [0.5] * 3, "input_size": [3, 64, 64]}}
    torch.save({"wsol": record, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}},
               tmp_path / "acol.ckpt")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    runner = CliRunner()
    for extra, expected in (([], "acol"), (["--method", "cam"], "cam")):
        out = tmp_path / f"out_{expected}"
        result = runner.invoke(app, ["localize", str(tmp_path / "a.png"), "--checkpoint", str(tmp_path / "acol.ckpt"),
                                     "--out", str(out), "--workers", "0", "-q", *extra])
        assert result.exit_code == 0, result.output
        assert json.loads((out / "run.json").read_text())["method"] == expected
