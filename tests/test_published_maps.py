"""CAM Back Again's own map procedures (``as_published=True``): hand-computed values, the transcription of the
authors' functions on a RepLKNet whose head BatchNorm matters, and the option checks. Fast: scripts/mutation.sh
runs these for every mutant of cams/cam.py and cams/pc1.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from upstream.cam_back_again import get_feature_maps, get_heatmap_from_features, replknet_layout
from wsol.cams import compute_cams
from wsol.errors import WSOLError
from wsol.maps.variants import MapVariant
from wsol.models import load
from wsol.models.replknet import RepLKNet


class Stub(nn.Module):
    """A classifier with a fixed feature map F and a linear head: the maps can be computed by hand."""

    def __init__(self, f: torch.Tensor, weight: torch.Tensor) -> None:
        super().__init__()
        self.f = f
        self.head = nn.Module()
        self.head.fc = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.head.fc.weight.copy_(weight)
            self.head.fc.bias.zero_()
        self.num_classes = weight.shape[0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.f.expand(x.shape[0], -1, -1, -1)

    def logits_from_features(self, f: torch.Tensor) -> torch.Tensor:
        return self.head.fc(f.mean((2, 3)))

    def class_weights(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w, b = self.head.fc.weight, self.head.fc.bias
        return w.expand(f.shape[0], -1, -1), b.expand(f.shape[0], -1)


def _stub() -> Stub:
    f = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, -8.0]]]).unsqueeze(0)
    return Stub(f, torch.tensor([[1.0, 1.0], [-1.0, -1.0]]))


def test_published_cam_by_hand() -> None:
    x = torch.zeros(1, 3, 8, 8)
    # mean over channels of W_0 F = [[0.5, 1.5], [1.5, -2]]; relu; / 1.5
    out = compute_cams(_stub(), x, 0, "cam", as_published=True)
    torch.testing.assert_close(out.maps[0], torch.tensor([[1 / 3, 1.0], [1.0, 0.0]]))
    plain = compute_cams(_stub(), x, 0, "cam")  # ours: the sum, no relu, no scaling
    torch.testing.assert_close(plain.maps[0], torch.tensor([[1.0, 3.0], [3.0, -4.0]]))
    # class 1 has the opposite weights: only the last pixel is positive (2), so the map is one-hot
    torch.testing.assert_close(compute_cams(_stub(), x, 1, "cam", as_published=True).maps[0],
                               torch.tensor([[0.0, 0.0], [0.0, 1.0]]))
    assert out.targets.tolist() == [0] and out.logits.shape == (1, 2)


def test_published_cam_of_a_map_without_positive_pixel_is_zero() -> None:
    stub = Stub(-torch.ones(1, 2, 3, 3), torch.tensor([[1.0, 2.0]]))  # the authors' code divides 0 by 0
    out = compute_cams(stub, torch.zeros(1, 3, 8, 8), 0, "cam", as_published=True)
    assert torch.equal(out.maps, torch.zeros(1, 3, 3))


def test_options_and_variants() -> None:
    with pytest.raises(WSOLError, match="as_published"):
        compute_cams(_stub(), torch.zeros(1, 3, 8, 8), 0, "cam", as_published=True, nwc=True)
    with pytest.raises(WSOLError, match="as_published"):
        compute_cams(_stub(), torch.zeros(1, 3, 8, 8), 0, "cam", as_published=True, include_bias=True)
    assert MapVariant.parse("pc1+published").options == {"as_published": True}
    assert MapVariant.parse("cam+published+pas").pas
    for bad in ("gradcam+published", "cam+nwc+published"):
        with pytest.raises(WSOLError, match="published"):
            MapVariant.parse(bad)


@pytest.fixture(scope="module")
def replknet(tmp_path_factory: pytest.TempPathFactory) -> tuple[RepLKNet, Path]:
    """CAM Back Again's RepLKNet layout (a 7-class Linear head), tiny, with a head BatchNorm that matters."""
    torch.manual_seed(0)
    net = RepLKNet(large_kernel_sizes=(7, 5, 5, 3), layers=(1, 1, 1, 1), channels=(8, 16, 16, 32), small_kernel=3)
    net = replknet_layout(net, 7).eval()
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in net.parameters():  # away from the initialisation (zero-init branches, unit BNs)
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
        net.norm.running_mean.uniform_(-1, 1)
        net.norm.running_var.uniform_(0.5, 2.0)
        net.norm.weight.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("cba") / "replknet.pth"
    torch.save(net.state_dict(), path)
    return net, path


@pytest.mark.parametrize("method", ["cam", "pc1"])
def test_published_maps_equal_the_authors_functions(replknet: tuple[RepLKNet, Path], method: str) -> None:
    net, path = replknet
    model = load(path)
    x = torch.randn(2, 3, 192, 192, generator=torch.Generator().manual_seed(1))  # 6 x 6 maps, 32 channels
    with torch.no_grad():  # targets whose raw map has a positive pixel (else the authors' code divides 0 by 0)
        raw = torch.einsum("kc,bchw->bkhw", model.head.fc.weight, model.features(x))
    targets = raw.flatten(2).amax(2).argmax(1)
    out = compute_cams(model, x, targets, method, as_published=True)
    for i in range(2):
        theirs = get_heatmap_from_features(method, get_feature_maps("replknet", x[i:i + 1],
                                                                    int(out.targets[i]), net))
        np.testing.assert_allclose(out.maps[i].numpy(), theirs, atol=1e-4)
    ours = compute_cams(model, x, out.targets, method).maps
    if method == "cam":  # the corrected CAM folds the head's BatchNorm in: another map
        assert not torch.allclose(ours, out.maps, atol=1e-2)
    else:  # a BN scale > 0 scales each channel, which PC1's per-channel min-max undoes: only the frame rule differs
        for a, b in zip(ours, out.maps):
            assert torch.allclose(a, b, atol=1e-4) or torch.allclose(a, 1 - b, atol=1e-4)


def _frame_map(extra: tuple[int, int] | None, count: int) -> torch.Tensor:
    """A 6 x 6 map with ``count`` pixels on (1.0) in the authors' frame (row / column 0, the last two rows and
    columns), plus one more at ``extra`` (inside), the rest 0: on = above the mean."""
    frame = [(0, j) for j in range(6)] + [(i, 0) for i in range(1, 6)] + [(4, j) for j in range(1, 6)]
    m = torch.zeros(1, 6, 6)
    for i, j in frame[:count]:
        m[0, i, j] = 1.0
    if extra is not None:
        m[0, extra[0], extra[1]] = 1.0
    return m


def test_published_frame_rule_by_hand() -> None:
    from wsol.cams.pc1 import published_frame_is_on

    # the authors divide by (side - 1) * 4 = 20 at side 6 and flip when more than half is on: 11 yes, 10 no
    assert published_frame_is_on(_frame_map(None, 11)).tolist() == [True]
    assert published_frame_is_on(_frame_map(None, 10)).tolist() == [False]
    # pixels just inside their slice [1:4, 1:4] (rows / columns 1..3) never count: (3, 2), (2, 3), (2, 1)
    for inside in ((3, 2), (2, 3), (2, 1), (1, 1), (3, 3)):
        assert published_frame_is_on(_frame_map(inside, 10)).tolist() == [False], inside
    # (4, 2) and (2, 4) are in their frame (the second-to-last row / column), unlike the true one-pixel ring
    assert published_frame_is_on(_frame_map((2, 4), 10)).tolist() == [True]


def test_pc1_default_is_ours_and_as_published_the_authors() -> None:
    from wsol.cams.pc1 import first_component, frame_is_on, pc1_maps, pc1_maps_as_published, published_frame_is_on

    gen = torch.Generator().manual_seed(0)
    for _ in range(200):  # features whose two frame rules disagree (the authors' counts the second ring too)
        f = torch.randn(1, 8, 6, 6, generator=gen)
        w = torch.randn(2, 8, generator=gen)
        stub = Stub(f, w)
        k = 1 - int(stub.logits_from_features(f).argmax())  # the class that is not the top-1
        first = first_component(f, w[k:k + 1])
        if frame_is_on(first) != published_frame_is_on(first):
            break
    else:
        pytest.fail("no features found where the two frame rules disagree")
    x = torch.zeros(1, 3, 8, 8)
    ours = compute_cams(stub, x, k, "pc1")
    theirs = compute_cams(stub, x, k, "pc1", as_published=True)  # the explicit target, not the top-1
    torch.testing.assert_close(ours.maps, pc1_maps(f, w[k:k + 1]))
    torch.testing.assert_close(theirs.maps, pc1_maps_as_published(f, w[k:k + 1]))
    torch.testing.assert_close(theirs.maps, 1 - ours.maps)
    assert theirs.targets.tolist() == [k]


def test_pc1_ignores_the_scale_of_the_features() -> None:
    """Each channel is min-max normalised first: features scaled by 0.01 (ranges far below 1) give the same PC1."""
    from wsol.cams.pc1 import pc1_maps, pc1_maps_as_published

    f = torch.randn(2, 8, 6, 6, generator=torch.Generator().manual_seed(3))
    w = torch.randn(2, 8, generator=torch.Generator().manual_seed(4))
    for maps in (pc1_maps, pc1_maps_as_published):
        torch.testing.assert_close(maps(f * 0.01, w), maps(f, w), atol=1e-5, rtol=1e-5)
