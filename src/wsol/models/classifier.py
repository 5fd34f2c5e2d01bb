"""The WSOL classifier: backbone + pooling head, exposing features, logits and folded class weights."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from wsol.errors import WSOLError
from wsol.files import read_checkpoint
from wsol.models.heads import LinearHead
from wsol.models.load import unwrap_state_dict


class WSOLClassifier(nn.Module):
    """``backbone.forward_features -> feature_layer (F) -> head (pool, [norm], fc)``.

    Attributes:
        num_classes: K.
        feature_layer: an ``nn.Identity`` whose output is the CAM feature map F (hook it for gradients).
        data_config: ``{"mean", "std", "input_size", "interpolation", "crop_pct"}`` for preprocessing.
        class_names: ImageNet class names for 1000-class ImageNet models, else None.
        new_layers: backbone sub-module names trained with the classifier learning rate (10x).
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: LinearHead,
        *,
        data_config: dict[str, Any] | None = None,
        class_names: list[str] | None = None,
        name: str = "",
        new_layers: Sequence[str] = (),
        external_key_map: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        if not callable(getattr(backbone, "forward_features", None)):
            raise WSOLError(f"backbone {type(backbone).__name__} has no forward_features()")
        self.backbone = backbone
        self.feature_layer = nn.Identity()
        self.head = head
        self.name = name
        self.data_config = dict(data_config or {
            "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
            "input_size": (3, 224, 224), "interpolation": "bilinear", "crop_pct": 0.875})
        self.class_names = class_names
        self.new_layers = tuple(new_layers)
        # prefix map from the key names of a plain backbone checkpoint (timm / wsolevaluation) to ours
        self.external_key_map = dict(external_key_map or {})

    # ------------------------------------------------------------------ core API
    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def features(self, x: Tensor) -> Tensor:
        """The CAM feature map F (B, C, h, w)."""
        if x.ndim != 4:
            raise WSOLError(f"expected a 4-D image batch (B, 3, H, W), got shape {tuple(x.shape)}")
        f = self.backbone.forward_features(x)
        if isinstance(f, (tuple, list)):
            f = f[0]
        return self.feature_layer(f)

    def logits_from_features(self, f: Tensor) -> Tensor:
        """The head: F (B, C, h, w) -> logits (B, K)."""
        return self.head(f)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits_from_features(self.features(x))

    def class_weights(self, f: Tensor) -> tuple[Tensor, Tensor]:
        """Effective (folded) ``W`` (B, K, C) and ``b`` (B, K) on the pooled features of F."""
        return self.head.class_weights(f)

    # ------------------------------------------------------------------ extras
    def multiscale_features(self, x: Tensor) -> list[Tensor]:
        """Encoder features at increasing stride (one per distinct resolution), the last one F."""
        info = getattr(self.backbone, "feature_info", None) or []
        names = [d["module"] for d in info if isinstance(d, Mapping) and "module" in d]
        captured: list[Tensor] = []
        with _capture_outputs(self.backbone, names, captured):
            f = self.features(x)
        out: list[Tensor] = []
        for t in captured:
            if t.ndim != 4 or t.shape[-1] <= f.shape[-1] and t.shape[-2] <= f.shape[-2]:
                continue
            if out and out[-1].shape[-2:] == t.shape[-2:]:
                out[-1] = t
            else:
                out.append(t)
        out.append(f)
        return out

    def param_groups(self, lr: float, classifier_mult: float = 10.0) -> list[dict[str, Any]]:
        """Two optimizer groups: backbone at ``lr``; head and new layers at ``classifier_mult * lr``."""
        prefixes = ("head.",) + tuple(f"backbone.{n}." for n in self.new_layers)
        base, cls = [], []
        for name, p in self.named_parameters():
            (cls if name.startswith(prefixes) else base).append(p)
        groups = [{"params": base, "lr": lr, "name": "backbone"},
                  {"params": cls, "lr": lr * classifier_mult, "name": "classifier"}]
        return [g for g in groups if g["params"]]

    def remap_external_keys(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Map a plain backbone checkpoint (timm / torchvision / wsolevaluation names) onto our keys."""
        own = self.state_dict()
        out: dict[str, Tensor] = {}
        for key, value in state.items():
            for src, dst in self.external_key_map.items():
                if key.startswith(src):
                    new = dst + key[len(src):]
                    break
            else:
                new = "backbone." + key
            if new in own and own[new].ndim == 2 and value.ndim == 4 and value.shape[2:] == (1, 1):
                value = value.flatten(1)  # a 1x1 conv classifier (SPG_A4) as a Linear
            out[new] = value
        return out

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_classes={self.num_classes}"


@contextmanager
def _capture_outputs(root: nn.Module, names: Sequence[str], sink: list[Tensor]) -> Iterator[None]:
    handles = []
    try:
        for n in names:
            try:
                mod = root.get_submodule(n)
            except AttributeError:
                continue
            handles.append(mod.register_forward_hook(lambda _m, _i, o: sink.append(o)))
        yield
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------- weights

def _problems(model: nn.Module, state: Mapping[str, Tensor]) -> tuple[list[str], list[str], list[str]]:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    return missing, unexpected, shapes


def _fmt(keys: list[str], n: int = 4) -> str:
    more = f" ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def check_finite_weights(model: nn.Module, source: str | Path) -> None:
    """Refuse weights holding NaN or inf (a diverged training): every map and score would be meaningless."""
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise WSOLError(f"{source}: {len(bad)} weight tensors hold NaN or inf (first: {bad[0]}); "
                        "did its training diverge?")


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a checkpoint with ``torch.load(weights_only=True)``, strictly.

    Unwraps ``{"state_dict"|"model"|...: {...}}`` and ``module.`` prefixes; for a ``WSOLClassifier`` a
    plain backbone checkpoint (timm names, classifier included) is also accepted. On mismatch raises
    ``WSOLError`` naming the file and the first missing / unexpected / mis-shaped keys.
    """
    path = Path(path)
    obj = read_checkpoint(path, "weights")
    state = unwrap_state_dict(obj, path)
    candidates = [state]
    if isinstance(model, WSOLClassifier):
        candidates.append(model.remap_external_keys(state))
        if all(k.startswith("model.") for k in state):  # e.g. a Lightning module holding `self.model`
            candidates.append({k[len("model."):]: v for k, v in state.items()})
    best, best_n = None, None
    for cand in candidates:
        probs = _problems(model, cand)
        n = sum(len(p) for p in probs)
        if n == 0:
            model.load_state_dict(cand, strict=True)
            check_finite_weights(model, path)
            return
        if best_n is None or n < best_n:
            best, best_n = probs, n
    raise WSOLError(f"{path}: weights do not match {getattr(model, 'name', '') or type(model).__name__}; "
                    + _describe(*best))


def _describe(missing: list[str], unexpected: list[str], shapes: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"missing keys: {_fmt(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_fmt(unexpected)}")
    if shapes:
        parts.append(f"shape mismatch: {_fmt(shapes, 2)}")
    return "; ".join(parts)


def load_state_strict(model: nn.Module, state: Mapping[str, Tensor], context: str) -> None:
    """``model.load_state_dict(state, strict=True)``, or one ``WSOLError`` line: ``context`` and the first
    missing / unexpected / mis-shaped keys."""
    problems = _problems(model, state)
    if any(problems):
        raise WSOLError(f"{context}; {_describe(*problems)}")
    model.load_state_dict(state, strict=True)
