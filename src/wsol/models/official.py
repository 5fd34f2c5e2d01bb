"""Building blocks shared by our RepLKNet and SLaK, and the loader for the authors' checkpoints.

The module names here reproduce the key names of the official state dicts (``conv``/``bn`` inside every
conv-BN pair, ``lkb_origin``/``small_conv``/``LoRA1``/``LoRA2`` branches, ``lkb_reparam`` after merging),
so that the released files load without a conversion step.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from wsol.errors import WSOLError
from wsol.files import read_checkpoint
from wsol.models.load import unwrap_state_dict

__all__ = [
    "ReparamLargeKernelConv",
    "build_with_official_weights",
    "conv_bn",
    "fuse_conv_bn",
    "load_official_checkpoint",
    "read_official_state_dict",
]

ModelT = TypeVar("ModelT", bound=nn.Module)

#: Keys that are not weights (sparse-training masks and the like) are dropped before loading.
NOT_WEIGHTS = re.compile(r"(^|[._])masks?($|[._])")
_SHOW = 5  # how many missing / unexpected keys an error message names


def conv_bn(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int],
    stride: int = 1,
    padding: int | tuple[int, int] | None = None,
    groups: int = 1,
    bn: bool = True,
    act: nn.Module | None = None,
) -> nn.Sequential:
    """A bias-free conv followed by BatchNorm (``conv``, ``bn``) and an optional ``nonlinear``.

    ``padding=None`` pads by half the kernel on each axis ("same" size for odd kernels at stride 1).
    """
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    if padding is None:
        padding = (kh // 2, kw // 2)
    seq = nn.Sequential()
    conv = nn.Conv2d(in_channels, out_channels, (kh, kw), stride, padding, groups=groups, bias=False)
    seq.add_module("conv", conv)
    if bn:
        seq.add_module("bn", nn.BatchNorm2d(out_channels))
    if act is not None:
        seq.add_module("nonlinear", act)
    return seq


def fuse_conv_bn(branch: nn.Sequential) -> tuple[Tensor, Tensor]:
    """Kernel and bias of one conv(-BN) branch as a single biased conv (BN in inference mode).

    The BN is folded by ``torch.nn.utils.fusion.fuse_conv_bn_weights``, whose result is detached from autograd.
    """
    conv: nn.Conv2d = branch.conv
    kernel = conv.weight
    bias = conv.bias if conv.bias is not None else torch.zeros_like(kernel[:, 0, 0, 0])
    if hasattr(branch, "bn"):
        bn: nn.BatchNorm2d = branch.bn
        assert bn.running_var is not None and bn.running_mean is not None
        kernel, bias = fuse_conv_bn_weights(
            kernel, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
        )
        return kernel.detach(), bias.detach()  # plain tensors, as without BN
    return kernel, bias


def _pad_to(kernel: Tensor, size: int) -> Tensor:
    """Zero-pad a (C, 1, kh, kw) kernel to (C, 1, size, size), keeping it centred."""
    ph, pw = (size - kernel.shape[-2]) // 2, (size - kernel.shape[-1]) // 2
    return F.pad(kernel, [pw, pw, ph, ph])


class ReparamLargeKernelConv(nn.Module):
    """Depth-wise large-kernel conv made of parallel conv-BN branches that are summed.

    ``branches`` maps a branch name to its kernel (height, width): RepLKNet uses
    ``{"lkb_origin": (31, 31), "small_conv": (5, 5)}``, SLaK ``{"LoRA1": (51, 5), "LoRA2": (5, 51),
    "small_conv": (5, 5)}``. :meth:`merge` folds every branch (BN included) into one ``lkb_reparam``
    conv with bias, the structural re-parameterisation of RepLKNet; it is exact for a model in eval mode.
    """

    def __init__(
        self,
        channels: int,
        branches: Mapping[str, tuple[int, int]],
        merged: bool = False,
        bn: bool = True,
    ) -> None:
        super().__init__()
        if not branches:
            raise ValueError("ReparamLargeKernelConv needs at least one branch")
        for name, (kh, kw) in branches.items():
            if kh % 2 == 0 or kw % 2 == 0:
                raise ValueError(f"branch {name!r}: kernel sizes must be odd, got {(kh, kw)}")
        self.channels = channels
        self.branch_shapes: dict[str, tuple[int, int]] = dict(branches)
        self.kernel_size = max(max(s) for s in self.branch_shapes.values())
        self.lkb_reparam: nn.Conv2d | None = None
        if merged:
            self._make_reparam()
        else:
            for name, shape in self.branch_shapes.items():
                self.add_module(name, conv_bn(channels, channels, shape, groups=channels, bn=bn))

    @property
    def merged(self) -> bool:
        """Whether the branches have been folded into ``lkb_reparam``."""
        return self.lkb_reparam is not None

    def _make_reparam(self) -> nn.Conv2d:
        k = self.kernel_size
        self.lkb_reparam = nn.Conv2d(
            self.channels, self.channels, k, padding=k // 2, groups=self.channels, bias=True
        )
        return self.lkb_reparam

    def forward(self, x: Tensor) -> Tensor:
        """Sum of the branches (or the merged conv)."""
        if self.lkb_reparam is not None:
            return self.lkb_reparam(x)
        out: Tensor | None = None
        for name in self.branch_shapes:
            y = getattr(self, name)(x)
            out = y if out is None else out + y
        assert out is not None
        return out

    def equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """The (kernel, bias) of a single conv equal to the sum of the branches in eval mode."""
        kernel: Tensor | None = None
        bias: Tensor | None = None
        for name in self.branch_shapes:
            k, b = fuse_conv_bn(getattr(self, name))
            k = _pad_to(k, self.kernel_size)
            kernel = k if kernel is None else kernel + k
            bias = b if bias is None else bias + b
        assert kernel is not None and bias is not None
        return kernel, bias

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the branches into ``lkb_reparam`` (in place; a no-op when already merged)."""
        if self.merged:
            return
        kernel, bias = self.equivalent_kernel_bias()
        first = getattr(self, next(iter(self.branch_shapes))).conv.weight
        conv = self._make_reparam().to(device=first.device, dtype=first.dtype)
        conv.weight.copy_(kernel)
        assert conv.bias is not None
        conv.bias.copy_(bias)
        for name in self.branch_shapes:
            delattr(self, name)

    def merge_state(self, state: dict[str, Tensor], prefix: str) -> None:
        """Rewrite an unmerged checkpoint's branch entries under ``prefix`` into ``lkb_reparam`` ones."""
        if f"{prefix}lkb_reparam.weight" in state:
            return
        kernel: Tensor | None = None
        bias: Tensor | None = None
        used: list[str] = []
        for name, shape in self.branch_shapes.items():
            head = f"{prefix}{name}."
            sub = {key[len(head):]: value for key, value in state.items() if key.startswith(head)}
            branch = conv_bn(self.channels, self.channels, shape, groups=self.channels, bn="bn.weight" in sub)
            try:
                branch.load_state_dict(sub)
            except RuntimeError:
                return  # not this layout: leave the keys alone, the loader reports them
            k, b = fuse_conv_bn(branch.eval())
            k, b = _pad_to(k.detach(), self.kernel_size), b.detach()
            kernel = k if kernel is None else kernel + k
            bias = b if bias is None else bias + b
            used += [head + key for key in sub]
        for key in used:
            del state[key]
        assert kernel is not None and bias is not None
        state[f"{prefix}lkb_reparam.weight"] = kernel
        state[f"{prefix}lkb_reparam.bias"] = bias


def structural_reparam(model: nn.Module) -> nn.Module:
    """Merge every :class:`ReparamLargeKernelConv` of ``model`` in place; returns ``model``."""
    for module in list(model.modules()):
        if isinstance(module, ReparamLargeKernelConv):
            module.merge()
    return model


def read_official_state_dict(
    path: str | Path, renames: Sequence[tuple[str, str]] = ()
) -> dict[str, Tensor]:
    """Read a checkpoint file into a plain ``{name: tensor}`` dict of weights.

    Reads with ``torch.load(..., weights_only=True)``; unwraps ``"model"`` / ``"state_dict"`` (and a few
    other common wrappers), strips a DDP ``module.`` prefix, drops non-tensor entries and mask entries
    (SLaK's sparse-training masks: only the dense weights are needed), then applies ``renames``, a list
    of ``(regex, replacement)`` pairs applied to every key in order.
    """
    path = Path(path)
    state: dict[str, Tensor] = {}
    for key, value in unwrap_state_dict(read_checkpoint(path), path).items():
        if NOT_WEIGHTS.search(key):
            continue
        for pattern, repl in renames:
            key = re.sub(pattern, repl, key)
        state[key] = value
    if not state:
        raise WSOLError(f"{path}: no weight tensors found in the checkpoint")
    return state


def _names(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    more = f", ... ({len(keys)} in all)" if len(keys) > _SHOW else ""
    return f"[{shown}{more}]"


def load_official_checkpoint(model: nn.Module, path: str | Path, *, strict_head: bool = False) -> list[str]:
    """Load an official RepLKNet / SLaK checkpoint (or one saved from our models) into ``model``.

    - The file is read by :func:`read_official_state_dict` with the model's ``official_key_renames``.
    - Merged and unmerged forms both load: a merged file (``lkb_reparam`` keys) re-parameterises an
      unmerged model first (``model.structural_reparam()``, in place; the model is then for inference);
      an unmerged file loaded into a merged model is merged on the fly.
    - If the classifier (``head``) has another shape than the model's (e.g. ImageNet weights into a
      200-class model) it is left at its initial values, unless ``strict_head`` is set.

    Returns the keys left at their initial values (the head, when skipped). Raises
    :class:`wsol.errors.WSOLError` naming the file and the first missing / unexpected / mis-shaped keys.
    """
    renames: Sequence[tuple[str, str]] = getattr(model, "official_key_renames", ())
    state = read_official_state_dict(path, renames)
    lk_modules = {n: m for n, m in model.named_modules() if isinstance(m, ReparamLargeKernelConv)}
    if any(".lkb_reparam." in k for k in state) and any(not m.merged for m in lk_modules.values()):
        structural_reparam(model)
    for name, module in lk_modules.items():
        if module.merged:
            module.merge_state(state, f"{name}.")
    own = model.state_dict()
    skipped: list[str] = []
    if not strict_head:
        for key in ("head.weight", "head.bias"):
            if key in state and key in own and state[key].shape != own[key].shape:
                del state[key]
                skipped.append(key)
    missing = [k for k in own if k not in state and k not in skipped]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_names(unexpected)}")
        raise WSOLError(f"{path}: checkpoint does not fit {type(model).__name__}: " + "; ".join(parts))
    bad = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
           if k in state and state[k].shape != own[k].shape]
    if bad:
        name = type(model).__name__
        raise WSOLError(f"{path}: checkpoint does not fit {name}: shape mismatch {_names(bad)}")
    model.load_state_dict(state, strict=not skipped)
    return skipped


def build_with_official_weights(
    model_cls: type[ModelT], variant: str, pretrained: bool, **kwargs: Any
) -> ModelT:
    """Build a registered variant through timm; ``pretrained=True`` loads the file given by the config.

    There is nothing to download: pass the checkpoint as
    ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": PATH})``; it goes through
    :func:`load_official_checkpoint` (wrappers, masks, merged form, head of another size).
    """
    if kwargs.pop("features_only", False):
        raise WSOLError(f"{variant}: features_only is not supported; use model.stage_features(x)")
    model = build_model_with_cfg(model_cls, variant, False, **kwargs)
    if pretrained:
        file = model.pretrained_cfg.get("file")
        if not file:
            raise WSOLError(
                f"{variant}: no weights to download; pass pretrained_cfg_overlay={{'file': PATH}} "
                "with the authors' checkpoint"
            )
        load_official_checkpoint(model, file)
    return model
