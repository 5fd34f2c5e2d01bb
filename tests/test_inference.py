"""Inference copies (batch norms folded into convolutions, channels-last) and the process-wide malloc tuning."""

from __future__ import annotations

import subprocess
import sys

import pytest
import timm
import torch
from torch import nn

from wsol.models import EMBEDDED_MODEL, build_model
from wsol.models.inference import fold_batchnorms, inference_copy


def _norms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def _random_statistics(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every norm's running statistics and affine parameters far from (0, 1), so that a wrong fold shows;
    the module in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.data.copy_(torch.randn(m.num_features, generator=gen))
    return module.eval()


def test_embedded_model_folds_every_norm_and_keeps_its_outputs() -> None:
    model = build_model(EMBEDDED_MODEL, pretrained=True).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert _norms(model.backbone) == 49  # stem + 16 blocks (2 or 3 each) + head, all after a convolution
    fast = inference_copy(model, torch.device("cpu"))
    assert _norms(fast.backbone) == 0
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = model(x), fast(x)
        f_want, f_got = model.features(x), fast.features(x)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-5)
    assert torch.allclose(f_got, f_want, atol=1e-4, rtol=1e-5)  # the maps' features too, not only logits
    assert got.argmax(1).tolist() == want.argmax(1).tolist()
    # the caller's model is untouched: same structure, same tensors
    assert _norms(model.backbone) == 49
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_residual_network_with_nontrivial_statistics() -> None:
    net = _random_statistics(timm.create_model("resnet18", pretrained=False, num_classes=5), seed=1)
    gen = torch.Generator().manual_seed(1)
    # not a WSOLClassifier: only its blocks of plain layers fold, the 3 downsample (conv, bn) pairs
    folded = inference_copy(net, torch.device("cpu"))
    assert _norms(net) == 20 and _norms(folded) == 17
    x = torch.randn(2, 3, 64, 64, generator=gen)
    with torch.no_grad():
        want = net(x)
        assert torch.allclose(folded(x), want, atol=1e-4, rtol=1e-4)
        assert fold_batchnorms(folded) == 17  # the convolutions of the residual blocks
        assert torch.allclose(folded(x), want, atol=1e-4, rtol=1e-4)


def test_fcam_decoder_norms_fold_too() -> None:
    from wsol.fcam.model import FCAM

    model = _random_statistics(FCAM(build_model("resnet10t", num_classes=3, pretrained=False)), seed=2)
    assert _norms(model.decoder) == 10  # 5 blocks x 2 (conv + BN + ReLU)
    fast = inference_copy(model, torch.device("cpu"))
    assert _norms(fast) == 0
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(fast(x), model(x), atol=1e-5)


class _SharedConv(nn.Module):
    """A (conv, bn) block whose conv is also used alone: folding the block would change the other use."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3))
        self.alone = self.block[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + self.alone(x)


def test_a_block_sharing_a_layer_is_not_folded() -> None:
    model = _random_statistics(_SharedConv(), seed=3)
    fast = inference_copy(model, torch.device("cpu"))
    assert _norms(fast) == 1
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(fast(x), model(x), atol=1e-6)


class _Shared(nn.Module):
    """conv -> bn, but the conv's output is also used by the residual sum: must not be folded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.conv2, self.act, self.bn2 = nn.Conv2d(3, 3, 1), nn.ReLU(), nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y + self.bn2(self.act(self.conv2(x)))  # bn2 follows a ReLU, not a conv


class _Dynamic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) if x.sum() > 0 else x  # data-dependent: not traceable


@pytest.mark.parametrize("module", [_Shared(), _Dynamic()], ids=["shared-output", "untraceable"])
def test_unsafe_or_untraceable_patterns_are_left_alone(module: nn.Module) -> None:
    module.eval()
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        want = module(x)
        assert fold_batchnorms(module) == 0
        assert torch.equal(module(x), want)
    assert _norms(module) == 2 if isinstance(module, _Shared) else 1


_FAULTS = """
import ctypes, os, resource, sys
# opt this process out of transparent huge pages (prctl PR_SET_THP_DISABLE = 41), so that one fault maps one
# base page whatever /sys/kernel/mm/transparent_hugepage says (with THP one fault can map 2 MiB)
thp_off = ctypes.CDLL(None, use_errno=True).prctl(41, 1, 0, 0, 0) == 0
import torch
from wsol.runtime import tune_cpu_allocator
tuned = tune_cpu_allocator()
for i in range(30):
    if i == 20:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(16 * 1024 * 1024).fill_(1.0)  # 64 MiB, allocated, touched and freed
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, thp_off, os.sysconf("SC_PAGE_SIZE"))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_allocator_stops_refaulting_freed_memory() -> None:
    """64 MiB is 16384 pages of 4 KiB: untuned, every allocation is a fresh mmap faulted in page by page; tuned,
    the freed heap is reused (after glibc has grown it over the first few rounds), so the last 10 of 30 rounds
    fault almost nothing.

    The count of faults is a count of pages only when every fault maps one base page. With transparent huge
    pages (the kernel's ``enabled = always``, or ``madvise`` plus PyTorch's ``THP_MEM_ALLOC_ENABLE=1``), one
    fault maps 2 MiB and the untuned run faults about 30 times less (5,443 instead of 163,850 here), so a
    bound in pages held or failed with the machine's THP setting. The child opts out of THP for itself
    (``prctl(PR_SET_THP_DISABLE)``) and the page size is read from the system, so the bound no longer depends on
    either; the untuned run is also measured with PyTorch asking for huge pages, which must change nothing."""

    def faults(env: dict[str, str]) -> tuple[str, int, int]:
        out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, check=True,
                             env={**__import__("os").environ, **env}).stdout.split()
        if out[2] != "True":
            pytest.skip("prctl(PR_SET_THP_DISABLE) refused: fault counts would depend on the THP setting")
        return out[0], int(out[1]), 64 * 1024 * 1024 // int(out[3])

    tuned, tuned_faults, pages = faults({})
    untuned, untuned_faults, _ = faults({"WSOL_TUNE_MALLOC": "0"})
    _, untuned_huge_faults, _ = faults({"WSOL_TUNE_MALLOC": "0", "THP_MEM_ALLOC_ENABLE": "1"})
    assert (tuned, untuned) == ("True", "False")
    assert untuned_faults >= 10 * pages and untuned_huge_faults >= 10 * pages  # every page of every round
    assert tuned_faults < pages // 4


class _Reused(nn.Module):
    """One conv and one norm module called twice: a single set of folded weights cannot serve both calls."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.bn(self.conv(x))))


@pytest.mark.parametrize("kind", ["reused", "std-conv", "weight-norm"])
def test_convs_that_transform_their_weight_or_are_reused_are_not_folded(kind: str) -> None:
    if kind == "reused":
        module: nn.Module = _Reused()
    else:
        from timm.layers import StdConv2d

        conv = StdConv2d(3, 4, 3, padding=1) if kind == "std-conv" else \
            torch.nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 4, 3, padding=1))
        module = nn.Sequential(conv, nn.BatchNorm2d(4))
    module = _random_statistics(module)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = module(x)
        assert fold_batchnorms(module) == 0
        assert torch.equal(module(x), want)


def test_forward_features_is_what_gets_traced() -> None:
    """A backbone whose forward() cannot be traced but whose forward_features() can is still folded."""

    class Backbone(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.forward_features(x)
            return f if f.sum() > 0 else -f  # data-dependent: fx cannot trace this

    net = _random_statistics(Backbone())
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = net.forward_features(x)
        assert fold_batchnorms(net) == 1
        assert isinstance(net.bn, nn.Identity)
        assert torch.allclose(net.forward_features(x), want, atol=1e-5)
