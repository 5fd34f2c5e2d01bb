"""wsol.models.load: format detection, architecture inference from shapes, overrides, one-line errors.

The comparisons with the authors' own models (CAM Back Again, wsolevaluation) are in
test_upstream_checkpoints.py; here: what can be checked from the files alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from typer.testing import CliRunner

from wsol.cli import app
from wsol.errors import WSOLError
from wsol.models import build_model, load
from wsol.models.load import _plan
from wsol.models.replknet import RepLKNet

runner = CliRunner()


def _meta_state(name: str, **kwargs) -> dict[str, torch.Tensor]:
    """The state dict of a full-size model without allocating it (meta tensors: shapes only)."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, **kwargs)
    return model.state_dict()


@pytest.mark.parametrize("name", ["convnext_tiny", "convnext_base", "convnext_large", "resnet18", "resnet50",
                                  "resnet101", "replknet_31b", "replknet_31l", "replknet_xl", "slak_tiny",
                                  "slak_base"])
def test_architecture_inferred_from_full_size_shapes(name: str) -> None:
    plan = _plan(Path("f.pth"), _meta_state(name, num_classes=1000), {})
    assert plan.info.architecture == name
    assert plan.info.num_classes == 1000
    assert plan.info.build.get("depths") is None and plan.info.build.get("channels") is None  # a named variant
    assert any(name in note for note in plan.info.inferred)


def test_replknet_head_size_decides_cam_back_again_preprocessing() -> None:
    state = _meta_state("replknet_31b", num_classes=1000)
    assert _plan(Path("f.pth"), state, {}).info.format == "replknet"
    state["head.weight"] = torch.empty(200, 1024, device="meta")
    state["head.bias"] = torch.empty(200, device="meta")
    info = _plan(Path("f.pth"), state, {}).info
    assert (info.format, info.num_classes) == ("cam-back-again-replknet", 200)
    assert info.data_config["input_size"] == (3, 384, 384) and info.data_config["mean"] == (0.5, 0.5, 0.5)


def test_merged_replknet_file_loads_into_the_same_logits(tmp_path: Path) -> None:
    """A re-parameterised (lkb_reparam) file: the loader merges the model's branches first."""
    torch.manual_seed(0)
    net = RepLKNet(large_kernel_sizes=(7, 5, 5, 3), layers=(1, 1, 1, 1), channels=(8, 16, 16, 24),
                   small_kernel=3, num_classes=6).eval()
    x = torch.randn(2, 3, 64, 64)
    ref = net(x)
    net.structural_reparam()
    torch.save(net.state_dict(), tmp_path / "merged.pth")
    model = load(tmp_path / "merged.pth")
    assert model.checkpoint_info.format == "cam-back-again-replknet"
    torch.testing.assert_close(model(x), ref, atol=1e-4, rtol=1e-4)


def test_wsol_train_record_with_wrong_class_names(tmp_path: Path) -> None:
    model = build_model("resnet10t", num_classes=3, surgery=True)
    record = {"model": "resnet10t", "num_classes": 3, "surgery": True, "class_names": ["a", "b"]}
    torch.save({"wsol": record, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}},
               tmp_path / "c.ckpt")
    with pytest.raises(WSOLError, match=r"names 2 classes but its classifier has 3"):
        load(tmp_path / "c.ckpt")
    record["class_names"] = ["a", "b", "c"]
    torch.save({"wsol": record, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}},
               tmp_path / "c.ckpt")
    loaded = load(tmp_path / "c.ckpt")
    assert loaded.class_names == ["a", "b", "c"] and loaded.checkpoint_info.format == "wsol-train"
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_plain_resnet_state_dict_gets_the_protocol_surgery_unless_told(tmp_path: Path) -> None:
    net = timm.create_model("resnet18", num_classes=4).eval()
    torch.save(net.state_dict(), tmp_path / "r.pth")
    x = torch.randn(1, 3, 64, 64)
    as_trained = load(tmp_path / "r.pth")  # resnet18 is not a protocol backbone: no surgery
    assert as_trained.checkpoint_info.architecture == "resnet18"
    torch.testing.assert_close(as_trained(x), net(x))
    assert as_trained.features(x).shape[-1] == 2
    cut = load(tmp_path / "r.pth", surgery=True)
    assert cut.features(x).shape[-1] == 4  # layer4 at stride 1


def test_errors_are_one_line(tmp_path: Path) -> None:
    net = timm.create_model("resnet18", num_classes=4)
    torch.save(net.state_dict(), tmp_path / "r.pth")
    data = (tmp_path / "r.pth").read_bytes()
    (tmp_path / "half.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pth").write_text("not a checkpoint\n")
    (tmp_path / "folder.pth").mkdir()
    torch.save({"foo.weight": torch.zeros(3, 3)}, tmp_path / "unknown.pth")
    cases = {
        "half.pth": "cannot read checkpoint",
        "text.pth": "not a PyTorch file",
        "folder.pth": "is a folder",
        "unknown.pth": "cannot tell the architecture",
        "missing.pth": "not found",
    }
    for name, words in cases.items():
        with pytest.raises(WSOLError, match=words) as err:
            load(tmp_path / name)
        assert "\n" not in str(err.value) and name in str(err.value)
    with pytest.raises(WSOLError, match="contradicts .*'resnet18'"):
        load(tmp_path / "r.pth", model="vgg16")
    with pytest.raises(WSOLError, match="unknown override"):
        load(tmp_path / "r.pth", modle="resnet18")
    torch.save({"architecture": "vgg16", "epoch": 3, "state_dict": net.state_dict()}, tmp_path / "w.pth")
    with pytest.raises(WSOLError, match=r"w.pth: weights do not match vgg16 \(wsolevaluation\)") as err:
        load(tmp_path / "w.pth")
    assert "\n" not in str(err.value)


def test_pretrained_tag_names_weights_not_architecture() -> None:
    model = build_model("resnet50.tv_in1k", num_classes=5)
    assert model.backbone.layer4[0].conv2.stride == (1, 1)  # still the protocol's surgery
    assert model.data_config["input_size"] == (3, 224, 224)


def test_inspect_cli(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = RepLKNet(large_kernel_sizes=(7, 5, 5, 3), layers=(1, 1, 1, 1), channels=(8, 16, 16, 24),
                   small_kernel=3, num_classes=1000)
    net.head = torch.nn.Linear(24, 9)
    torch.save({"model": net.state_dict()}, tmp_path / "cba.pth")
    result = runner.invoke(app, ["inspect", str(tmp_path / "cba.pth")])
    assert result.exit_code == 0, result.output
    lines = dict(line.split(None, 1) for line in result.output.splitlines() if line.strip())
    assert lines["format"] == "cam-back-again-replknet"
    assert lines["classes"].startswith("9 ")
    assert lines["head"] == "batchnorm + gap -> linear"
    assert lines["feature"] == "map   24 x 12 x 12 at 384 x 384"
    assert lines["preprocessing"].startswith("384 px bilinear, mean (0.5, 0.5, 0.5)")
    bad = runner.invoke(app, ["inspect", str(tmp_path / "cba.pth"), "--model", "resnet50"])
    assert bad.exit_code != 0 and "contradicts" in str(bad.exception)
