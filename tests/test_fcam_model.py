"""F-CAM model: decoder on several backbones, frozen classifier (bit-identical after training), the
registry method, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wsol.cams import compute_cams
from wsol.errors import WSOLError
from wsol.fcam import FCAM, FCAMLossWeights, fcam_loss, load_fcam, sample_pseudo_labels, save_fcam, upsample_cams
from wsol.models import build_model


@pytest.fixture(scope="module")
def classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("resnet10t", num_classes=3)


@pytest.mark.parametrize(("name", "size"), [("resnet10t", (64, 64)), ("vgg16", (64, 64)), ("resnet10t", (72, 56)),
                                            ("efficientnet_lite0", (64, 64))])
def test_decoder_full_resolution(name: str, size: tuple[int, int]) -> None:
    model = FCAM(build_model(name, num_classes=2))
    x = torch.randn(2, 3, *size)
    logits = model.decode(x)
    assert logits.shape == (2, 2, *size)
    prob = model(x).detach()
    assert prob.shape == (2, *size) and float(prob.min()) >= 0 and float(prob.max()) <= 1
    assert model.decoder.feature_channels[-1] == model.classifier.head.in_features


def test_classifier_is_frozen_and_bit_identical_after_training(classifier: torch.nn.Module) -> None:
    model = FCAM(classifier)
    before = {k: v.clone() for k, v in model.classifier.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    assert not any(p.requires_grad for p in model.classifier.parameters())
    model.train()
    assert model.decoder.training and not any(m.training for m in model.classifier.modules())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randn(2, 3, 64, 64, generator=g)
        y = torch.tensor([0, 2])
        cams = compute_cams(model.classifier, x, y, "cam").maps
        labels = sample_pseudo_labels(upsample_cams(cams, (64, 64)), 0.3, erosion=3, generator=g)
        raw = (x * 0.25 + 0.5).clamp(0, 1) * 255
        loss = fcam_loss(model.decode(x), labels, raw, 1.0, FCAMLossWeights(lambda_crf=1e-6, crf_downsample=2))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.classifier.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():  # weights and BatchNorm buffers, bit for bit
        assert torch.equal(v, after[k]), k
    assert any(not torch.equal(v, model.decoder.state_dict()[k]) for k, v in decoder_before.items())


def test_fcam_method_in_registry(classifier: torch.nn.Module) -> None:
    model = FCAM(classifier).eval()
    x = torch.randn(2, 3, 64, 64)
    out = compute_cams(model, x, [1, 2], "fcam")
    assert out.maps.shape == (2, 64, 64)
    assert out.targets.tolist() == [1, 2]
    assert torch.allclose(out.logits, classifier(x))
    assert torch.allclose(out.maps, model(x))
    top1 = compute_cams(model, x, None, "fcam")
    assert torch.equal(top1.targets, classifier(x).argmax(1))
    with pytest.raises(WSOLError, match="needs an F-CAM model"):
        compute_cams(classifier, x, None, "fcam")
    # other methods on the F-CAM model's classifier are unchanged
    assert compute_cams(model.classifier, x, [0, 0], "cam").maps.shape == (2, 2, 2)


def test_checkpoint_roundtrip(tmp_path: Path, classifier: torch.nn.Module) -> None:
    model = FCAM(classifier).eval()
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.classifier.class_names = ["a", "b", "c"]
    path = save_fcam(model, tmp_path / "f.pt", config={"n_neg": 0.3})
    loaded = load_fcam(path)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(loaded(x), model(x))
    assert loaded.class_names == ["a", "b", "c"] and loaded.num_classes == 3
    # the classifier part stays an ordinary classifier checkpoint
    plain = build_model("resnet10t", num_classes=3, weights=path).eval()
    assert torch.equal(plain(x), classifier(x))
    with pytest.raises(WSOLError, match="not an F-CAM checkpoint"):
        torch.save({"state_dict": classifier.state_dict()}, tmp_path / "c.pt")
        load_fcam(tmp_path / "c.pt")
    with pytest.raises(WSOLError, match="not found"):
        load_fcam(tmp_path / "missing.pt")
