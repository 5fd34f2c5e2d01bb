"""Shared machinery of the activation-map methods: output type, validation, model-state guard, hooks."""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from wsol.errors import WSOLError
from wsol.modes import kept_modes

Targets = None | str | int | Sequence[int] | Tensor


@dataclass
class CAMOutput:
    """Raw maps (B, h, w) float32 on the model's device (not normalised, not resized), the logits
    (B, K) and the class each map is for (B,) long."""

    maps: Tensor
    logits: Tensor
    targets: Tensor


def check_images(images: Any) -> Tensor:
    """Images must be a 4-D float tensor (B, C, H, W) with B >= 1."""
    if not isinstance(images, Tensor):
        raise WSOLError(f"images must be a torch.Tensor (B, 3, H, W), got {type(images).__name__}")
    if images.ndim != 4:
        raise WSOLError(f"images must be 4-D (B, 3, H, W), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise WSOLError("images: empty batch")
    if not images.is_floating_point():
        raise WSOLError(f"images must be a float tensor (normalised), got dtype {images.dtype}")
    return images


def check_targets(targets: Targets, batch_size: int, num_classes: int,
                  device: torch.device | None = None) -> Tensor | None:
    """Validate explicit targets -> (B,) long tensor; ``None`` / ``"top1"`` -> None (use the prediction)."""
    if targets is None:
        return None
    if isinstance(targets, str):
        if targets.lower() in ("top1", "pred", "predicted"):
            return None
        raise WSOLError(f"targets: unknown value {targets!r}; use None/'top1', an int, or B ints")
    if isinstance(targets, (bool, np.bool_)):
        raise WSOLError("targets: a bool is not a class index")
    if isinstance(targets, numbers.Integral):  # int, numpy integers
        t = torch.full((batch_size,), int(targets), dtype=torch.long)
    elif isinstance(targets, Tensor):
        if targets.is_floating_point() or targets.is_complex():
            raise WSOLError(f"targets: class indices must be integers, got dtype {targets.dtype}")
        t = targets.detach().reshape(-1).long()
        if targets.ndim == 0:
            t = t.expand(batch_size)
    else:
        try:
            values = [int(v) for v in targets]
        except (TypeError, ValueError) as exc:
            raise WSOLError(f"targets: expected None, 'top1', an int or B ints, got {targets!r}") from exc
        t = torch.tensor(values, dtype=torch.long)
    if t.numel() != batch_size:
        raise WSOLError(f"targets: got {t.numel()} class indices for a batch of {batch_size}")
    bad = (t < 0) | (t >= num_classes)
    if bool(bad.any()):
        v = int(t[bad.nonzero()[0, 0]])
        raise WSOLError(f"target class {v} out of range [0, {num_classes})")
    return t.to(device) if device is not None else t


def pick_targets(explicit: Tensor | None, logits: Tensor) -> Tensor:
    """The explicit targets, or the top-1 prediction."""
    if explicit is None:
        return logits.detach().argmax(dim=1)
    return explicit.to(logits.device)


@contextmanager
def preserved_state(model: nn.Module, eval_mode: bool = True) -> Iterator[None]:
    """Run in eval mode (optional) and restore every module's train/eval flag and every parameter's
    ``requires_grad`` and ``.grad`` exactly as found, even on exceptions."""
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    with kept_modes(model):
        try:
            if eval_mode:
                model.eval()
            yield
        finally:
            for p, rg, g in params:
                if p.requires_grad != rg:
                    p.requires_grad_(rg)
                p.grad = g


def resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> nn.Module | None:
    """A target layer given by dotted name or module; None = the model's feature layer F."""
    if layer is None or isinstance(layer, nn.Module):
        if isinstance(layer, nn.Module) and not any(m is layer for m in model.modules()):
            raise WSOLError(f"target_layer {type(layer).__name__} is not a sub-module of the model")
        return layer
    try:
        return model.get_submodule(layer)
    except AttributeError as exc:
        raise WSOLError(f"target_layer {layer!r} not found; see model.named_modules()") from exc


class _Capture:
    output: Tensor | None = None


@contextmanager
def capture_output(layer: nn.Module) -> Iterator[_Capture]:
    """Forward hook storing ``layer``'s output; the hook is removed on exit, even on exceptions."""
    store = _Capture()

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        store.output = out[0] if isinstance(out, (tuple, list)) else out

    handle = layer.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def forward_target_weights(model: nn.Module, x: Tensor,
                           explicit: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One forward pass without autograd: ``(F, logits, targets, W_k, b_k)`` with the folded weights of each
    image's target class (the CAM-family methods' common start)."""
    with torch.no_grad():
        f = model.features(x)
        logits = model.logits_from_features(f)
        tgt = pick_targets(explicit, logits)
        w, b = target_weights(model, f, tgt)
    return f, logits, tgt, w, b


def forward_raw_weights(model: nn.Module, x: Tensor,
                        explicit: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(F, logits, targets, W_k)`` with the target's *raw* head weights (``head.fc.weight``, no norm folded):
    what CAM Back Again's ``get_feature_maps`` multiplies F by."""
    fc = getattr(getattr(model, "head", None), "fc", None)
    if not isinstance(fc, nn.Linear):
        raise WSOLError(f"as_published needs a model with a linear head (model.head.fc); got {type(model).__name__}")
    with torch.no_grad():
        f = model.features(x)
        logits = model.logits_from_features(f)
        tgt = pick_targets(explicit, logits)
    return f, logits, tgt, fc.weight.detach()[tgt]


def target_weights(model: nn.Module, f: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Folded class weights of the target class: ``W_k`` (B, C) and ``b_k`` (B,)."""
    w, b = model.class_weights(f)
    idx = torch.arange(f.shape[0], device=f.device)
    return w[idx, targets], b[idx, targets]


def border_mask(h: int, w: int, device: torch.device | None = None) -> Tensor:
    """The true one-pixel frame of an h x w map (bool)."""
    m = torch.ones(h, w, dtype=torch.bool, device=device)
    if h > 2 and w > 2:
        m[1:-1, 1:-1] = False
    return m


def frame_is_on(maps: Tensor) -> Tensor:
    """(B,) bool: more than half of the border pixels lie above the map's mean."""
    b, h, w = maps.shape
    on = maps > maps.flatten(1).mean(1).view(b, 1, 1)
    frame = border_mask(h, w, maps.device)
    return on[:, frame].float().sum(1) > frame.sum() / 2


class CAMMethod:
    """A method: ``method(model, images, targets) -> CAMOutput``. Options are constructor arguments."""

    name: ClassVar[str] = ""

    def __init__(self, *, eval_mode: bool = True) -> None:
        self.eval_mode = eval_mode

    def __call__(self, model: nn.Module, images: Tensor, targets: Targets = None) -> CAMOutput:
        x = check_images(images)
        explicit = check_targets(targets, x.shape[0], int(model.num_classes))
        with preserved_state(model, self.eval_mode):
            maps, logits, tgt = self.compute(model, x, explicit)
        return CAMOutput(maps.detach().float(), logits.detach(), tgt)

    def compute(self, model: nn.Module, x: Tensor, explicit: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(maps (B, h, w), logits (B, K), targets (B,))``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({opts})"
