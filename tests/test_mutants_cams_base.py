"""The shared machinery of the map methods (``wsol.cams.base``) pinned down where mutation testing found it loose
(issue 12): exact error messages, the dtype and device of the targets, the one-pixel frame, the eval-mode default
and the repr. Devices are checked on PyTorch's "meta" device, which any machine has. Fast: no real model."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from wsol.cams.base import (
    CAMMethod,
    border_mask,
    check_images,
    check_targets,
    forward_raw_weights,
    frame_is_on,
    pick_targets,
    resolve_layer,
)
from wsol.cams.cam import CAM
from wsol.errors import WSOLError

META = torch.device("meta")


def _raises(message: str):
    """``pytest.raises`` for a WSOLError whose message is exactly ``message``."""
    return pytest.raises(WSOLError, match="^" + re.escape(message) + "$")


class Net(nn.Module):
    """A tiny classifier with the interface the methods use: a conv + BatchNorm feature layer F (4 channels),
    a linear head on the pooled F. The BatchNorm's running statistics are far from a batch's own, so train and
    eval mode give different features."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Module()
        self.head.fc = nn.Linear(4, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
            self.bn.running_mean.copy_(torch.tensor([2.0, -1.0, 0.5, 3.0]))
            self.bn.running_var.copy_(torch.tensor([4.0, 0.25, 1.0, 9.0]))
        self.num_classes = 3

    def features(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))

    def logits_from_features(self, f: Tensor) -> Tensor:
        return self.head.fc(f.mean((2, 3)))

    def class_weights(self, f: Tensor) -> tuple[Tensor, Tensor]:
        w, b = self.head.fc.weight, self.head.fc.bias
        return w.expand(f.shape[0], -1, -1), b.expand(f.shape[0], -1)


class Probe(CAMMethod):
    """A method that keeps CAMMethod's own constructor: its maps are the channel mean of F, and it records the
    model's training flag during ``compute``."""

    name = "probe"
    seen: list[bool] = []

    def compute(self, model: nn.Module, x: Tensor, explicit: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        Probe.seen.append(model.training)
        with torch.no_grad():
            f = model.features(x)
            logits = model.logits_from_features(f)
        return f.mean(1), logits, pick_targets(explicit, logits)


def _images() -> Tensor:
    return torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------------- check_images


def test_check_images_messages() -> None:
    with _raises("images must be a torch.Tensor (B, 3, H, W), got list"):
        check_images([[1.0]])
    with _raises("images must be 4-D (B, 3, H, W), got shape (3, 4, 4)"):
        check_images(torch.zeros(3, 4, 4))
    with _raises("images: empty batch"):
        check_images(torch.zeros(0, 3, 4, 4))
    with _raises("images must be a float tensor (normalised), got dtype torch.int64"):
        check_images(torch.zeros(1, 3, 4, 4, dtype=torch.long))


def test_check_images_accepts_zero_channels_and_returns_the_input() -> None:
    """Only the batch may not be empty: the channel count is the model's business."""
    x = torch.zeros(1, 0, 4, 4)
    assert check_images(x) is x
    y = torch.zeros(2, 3, 4, 4, dtype=torch.float16)
    assert check_images(y) is y


# --------------------------------------------------------------------------------------------- check_targets


@pytest.mark.parametrize("word", ["top1", "pred", "predicted", "TOP1", "Pred", "PREDICTED"])
def test_check_targets_prediction_words(word: str) -> None:
    assert check_targets(word, 2, 5) is None


def test_check_targets_messages() -> None:
    with _raises("targets: unknown value 'nope'; use None/'top1', an int, or B ints"):
        check_targets("nope", 2, 5)
    for flag in (True, np.bool_(False)):
        with _raises("targets: a bool is not a class index"):
            check_targets(flag, 2, 5)
    with _raises("targets: class indices must be integers, got dtype torch.float32"):
        check_targets(torch.tensor([1.0, 2.0]), 2, 5)
    with _raises("targets: class indices must be integers, got dtype torch.complex64"):
        check_targets(torch.tensor([1 + 0j, 2 + 0j]), 2, 5)
    with _raises("targets: expected None, 'top1', an int or B ints, got 1.5"):
        check_targets(1.5, 2, 5)
    with _raises("targets: expected None, 'top1', an int or B ints, got ['a', 'b']"):
        check_targets(["a", "b"], 2, 5)
    with _raises("targets: got 2 class indices for a batch of 3"):
        check_targets(torch.tensor([1, 2]), 3, 5)
    with _raises("targets: got 1 class indices for a batch of 3"):
        check_targets([1], 3, 5)
    with _raises("target class 5 out of range [0, 5)"):
        check_targets([0, 5], 2, 5)
    with _raises("target class -1 out of range [0, 5)"):
        check_targets(torch.tensor([2, -1]), 2, 5)


def test_check_targets_forms_values_and_dtype() -> None:
    cases = [
        (3, [3, 3, 3]),
        (np.int32(4), [4, 4, 4]),
        (torch.tensor(2), [2, 2, 2]),  # a 0-d tensor is broadcast to the batch
        (torch.tensor([0, 4, 1], dtype=torch.int32), [0, 4, 1]),
        (torch.tensor([[0], [4], [1]]), [0, 4, 1]),
        ([0, 4, 1], [0, 4, 1]),
        ((np.int64(1), 2, 3), [1, 2, 3]),
        (np.array([4, 0, 2]), [4, 0, 2]),
    ]
    for targets, expected in cases:
        t = check_targets(targets, 3, 5)
        assert t.dtype == torch.long and t.device.type == "cpu", targets
        assert t.shape == (3,) and t.tolist() == expected, targets


def test_check_targets_empty_sequence_for_an_empty_batch_is_long() -> None:
    """``torch.tensor([])`` would be float32: the dtype is set, not inferred."""
    t = check_targets([], 0, 5)
    assert t.dtype == torch.long and t.shape == (0,)


def test_check_targets_moves_to_the_device() -> None:
    for targets in (1, [1, 2], torch.tensor([2, 0]), torch.tensor(3)):
        t = check_targets(targets, 2, 5, device=META)
        assert t.device == META and t.dtype == torch.long and t.shape == (2,), targets
        assert check_targets(targets, 2, 5).device.type == "cpu"  # no device: left where it was built


# ------------------------------------------------------------------------------------------------ pick_targets


def test_pick_targets_explicit_on_the_logits_device_or_the_top1() -> None:
    t = pick_targets(torch.tensor([2, 0]), torch.zeros(2, 3, device=META))
    assert t.device == META and t.dtype == torch.long and t.shape == (2,)
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, -1.0, 4.0]], requires_grad=True)
    top1 = pick_targets(None, logits)
    assert top1.tolist() == [1, 0] and not top1.requires_grad
    assert pick_targets(torch.tensor([2, 2]), logits).tolist() == [2, 2]


# ----------------------------------------------------------------------------------------------- resolve_layer


def test_resolve_layer() -> None:
    net = Net()
    assert resolve_layer(net, None) is None
    assert resolve_layer(net, net.bn) is net.bn
    assert resolve_layer(net, net) is net
    assert resolve_layer(net, "head.fc") is net.head.fc
    with _raises("target_layer Linear is not a sub-module of the model"):
        resolve_layer(net, nn.Linear(4, 3))
    with _raises("target_layer BatchNorm2d is not a sub-module of the model"):
        resolve_layer(net, nn.BatchNorm2d(4))
    with _raises("target_layer 'head.nope' not found; see model.named_modules()"):
        resolve_layer(net, "head.nope")


# -------------------------------------------------------------------------------------- forward_raw_weights


class NoHead(Net):
    def __init__(self) -> None:
        super().__init__()
        del self.head


class HeadWithoutFc(Net):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Module()


class ConvHead(Net):
    def __init__(self) -> None:
        super().__init__()
        self.head.fc = nn.Conv2d(4, 3, 1)


@pytest.mark.parametrize("cls", [NoHead, HeadWithoutFc, ConvHead])
def test_forward_raw_weights_needs_a_linear_head(cls: type[Net]) -> None:
    with _raises(f"as_published needs a model with a linear head (model.head.fc); got {cls.__name__}"):
        forward_raw_weights(cls(), _images(), None)


def test_forward_raw_weights_values() -> None:
    net = Net().eval()
    x = _images()
    f, logits, tgt, w = forward_raw_weights(net, x, None)
    with torch.no_grad():
        torch.testing.assert_close(f, net.features(x), rtol=0, atol=0)
        torch.testing.assert_close(logits, net.head.fc(f.mean((2, 3))), rtol=0, atol=0)
    assert torch.equal(tgt, logits.argmax(1))
    assert torch.equal(w, net.head.fc.weight.detach()[tgt]) and not w.requires_grad
    _, _, tgt2, w2 = forward_raw_weights(net, x, torch.tensor([2, 1]))
    assert tgt2.tolist() == [2, 1] and torch.equal(w2, net.head.fc.weight.detach()[[2, 1]])


# ------------------------------------------------------------------------------------ border_mask, frame_is_on


@pytest.mark.parametrize("h", range(1, 7))
@pytest.mark.parametrize("w", range(1, 7))
def test_border_mask_is_the_one_pixel_frame(h: int, w: int) -> None:
    expected = torch.tensor([[i in (0, h - 1) or j in (0, w - 1) for j in range(w)] for i in range(h)])
    m = border_mask(h, w)
    assert m.dtype == torch.bool and m.device.type == "cpu"
    assert torch.equal(m, expected)


def test_border_mask_device() -> None:
    for h, w in ((3, 3), (2, 5), (6, 4)):
        m = border_mask(h, w, META)
        assert m.device == META and m.dtype == torch.bool and m.shape == (h, w)


def _ring_map(count: int) -> Tensor:
    """A 4 x 4 map (its frame has 12 pixels) with ``count`` frame pixels at 1 and the rest 0."""
    frame = [(0, 0), (0, 1), (0, 2), (0, 3), (1, 3), (2, 3), (3, 3), (3, 2), (3, 1), (3, 0), (2, 0), (1, 0)]
    m = torch.zeros(1, 4, 4)
    for i, j in frame[:count]:
        m[0, i, j] = 1.0
    return m


def test_frame_is_on_needs_more_than_half() -> None:
    assert frame_is_on(_ring_map(6)).tolist() == [False]  # exactly half of 12
    assert frame_is_on(_ring_map(7)).tolist() == [True]
    assert frame_is_on(torch.cat([_ring_map(12), _ring_map(5), _ring_map(0) + 1])).tolist() == [True, False, False]


def test_frame_is_on_counts_pixels_strictly_above_the_mean() -> None:
    """A constant map has no pixel above its mean (equal is not above)."""
    assert frame_is_on(torch.full((2, 4, 4), 0.25)).tolist() == [False, False]
    m = torch.zeros(1, 5, 5)
    m[0, 1:4, 1:4] = -1.0  # the frame (16 pixels) is 0, above the mean -9/25
    assert frame_is_on(m).tolist() == [True]


# ----------------------------------------------------------------------------------------- CAMMethod itself


def test_default_runs_in_eval_mode_and_restores_train_mode() -> None:
    x = _images()
    net = Net().eval()
    with torch.no_grad():
        eval_features = net.features(x)
    reference = CAM()(net, x, [0, 2]).maps
    for method in (Probe(), CAM()):
        net.train()
        stats = net.bn.running_mean.clone()
        Probe.seen.clear()
        out = method(net, x, [0, 2])
        if isinstance(method, Probe):
            assert Probe.seen == [False]
            torch.testing.assert_close(out.maps, eval_features.mean(1), rtol=0, atol=0)
        else:
            torch.testing.assert_close(out.maps, reference, rtol=0, atol=0)
        assert net.training and net.bn.training and net.head.fc.training
        assert torch.equal(net.bn.running_mean, stats)  # eval mode: the running statistics are not updated


def test_eval_mode_false_runs_the_model_as_it_is() -> None:
    x = _images()
    net = Net().train()
    with torch.no_grad():
        batch_features = net.features(x)  # train mode: the batch's own statistics
    net.eval()
    with torch.no_grad():
        eval_features = net.features(x)
    assert not torch.allclose(batch_features, eval_features, atol=1e-2)
    net.train()
    Probe.seen.clear()
    out = Probe(eval_mode=False)(net, x)
    assert Probe.seen == [True] and net.training
    torch.testing.assert_close(out.maps, batch_features.mean(1))
    cam = CAM(eval_mode=False)(net, x, [0, 2]).maps
    w = net.head.fc.weight.detach()[[0, 2]]
    torch.testing.assert_close(cam, torch.einsum("bc,bchw->bhw", w, batch_features))
    net.eval()
    Probe.seen.clear()
    Probe(eval_mode=False)(net, x)
    assert Probe.seen == [False] and not net.training  # eval mode found, eval mode kept


def test_eval_mode_default_and_repr() -> None:
    assert Probe().eval_mode is True and Probe(eval_mode=False).eval_mode is False
    assert repr(Probe()) == "Probe(eval_mode=True)"
    assert repr(Probe(eval_mode=False)) == "Probe(eval_mode=False)"
    assert repr(CAM(nwc=True)) == "CAM(eval_mode=True, nwc=True, include_bias=False, as_published=False)"
    assert str(CAM(as_published=True, eval_mode=False)) == \
        "CAM(eval_mode=False, nwc=False, include_bias=False, as_published=True)"


def test_call_output_types() -> None:
    net = Net()
    out = CAM()(net, _images(), None)
    assert out.maps.dtype == torch.float32 and out.maps.shape == (2, 5, 5) and not out.maps.requires_grad
    assert out.logits.shape == (2, 3) and not out.logits.requires_grad
    assert out.targets.dtype == torch.long and torch.equal(out.targets, out.logits.argmax(1))
