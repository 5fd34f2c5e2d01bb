"""F-CAM checkpoints: one file a loader can rebuild alone.

Layout (a plain dict, ``torch.load(..., weights_only=True)``-safe)::

    {"wsol":  {"kind": "fcam", "model": <classifier name>, "num_classes": K, "pool": ..., "tap_theta": ...,
               "large_feature_map": ..., "class_names": [...] | None, "data_config": {...}},
     "fcam":  {"feature_channels": [...], "channels": [...], "config": {...training settings...}},
     "state_dict": <the classifier's state dict, plain WSOLClassifier keys>,
     "decoder": <the decoder's state dict>}

The classifier part is an ordinary wsol classifier checkpoint: anything that loads those (``wsol localize
--checkpoint``'s loader, ``build_model(weights=...)``) still gets the classifier from this file.
:func:`load_fcam` also reads the Lightning checkpoints of ``wsol fcam train`` (``state_dict`` with
``model.classifier.*`` / ``model.decoder.*`` keys next to the same ``wsol`` and ``fcam`` records).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from wsol.errors import WSOLError
from wsol.fcam.decoder import FCAMDecoder
from wsol.fcam.model import FCAM
from wsol.files import plain, read_checkpoint, replacing


def fcam_checkpoint(model: FCAM, build: Mapping[str, Any] | None = None,
                    config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint dict of ``model``; ``build`` = the classifier's ``build_model`` keyword arguments."""
    clf = model.classifier
    meta = {"kind": "fcam", "model": getattr(clf, "name", ""), "num_classes": int(clf.num_classes),
            "class_names": list(clf.class_names) if getattr(clf, "class_names", None) else None,
            "data_config": plain(getattr(clf, "data_config", {}))}
    pool = getattr(getattr(clf, "head", None), "pool", None)
    if pool is not None:
        meta["pool"] = str(getattr(pool, "kind", "gap"))
        meta["tap_theta"] = float(getattr(pool, "theta", 0.1))
    meta.update(plain(dict(build or {})))
    return {"wsol": meta,
            "fcam": {"feature_channels": list(model.decoder.feature_channels),
                     "channels": list(model.decoder.channels), "config": plain(dict(config or {}))},
            "state_dict": {k: v.detach().cpu() for k, v in clf.state_dict().items()},
            "decoder": {k: v.detach().cpu() for k, v in model.decoder.state_dict().items()}}


def save_fcam(model: FCAM, path: str | Path, build: Mapping[str, Any] | None = None,
              config: Mapping[str, Any] | None = None) -> Path:
    """Write :func:`fcam_checkpoint` atomically (temp file + rename)."""
    path = Path(path)
    with replacing(path) as tmp:
        torch.save(fcam_checkpoint(model, build, config), tmp)
    return path


def is_fcam_checkpoint(obj: Any) -> bool:
    """Whether a loaded checkpoint object is an F-CAM checkpoint (ours or a Lightning one)."""
    return (isinstance(obj, Mapping) and isinstance(obj.get("fcam"), Mapping)
            and isinstance(obj.get("state_dict"), Mapping))


def _split_state(obj: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(classifier state, decoder state) of either checkpoint layout."""
    if isinstance(obj.get("decoder"), Mapping):
        return dict(obj["state_dict"]), dict(obj["decoder"])
    state = obj["state_dict"]
    clf = {k[len("model.classifier."):]: v for k, v in state.items() if k.startswith("model.classifier.")}
    dec = {k[len("model.decoder."):]: v for k, v in state.items() if k.startswith("model.decoder.")}
    return clf, dec


def load_fcam(path: str | Path, map_location: str | torch.device = "cpu") -> FCAM:
    """Rebuild an :class:`FCAM` from a checkpoint written by :func:`save_fcam` (strict key check)."""
    from wsol.models import build_model, check_finite_weights
    from wsol.models.classifier import load_state_strict

    path = Path(path)
    obj = read_checkpoint(path, "F-CAM checkpoint", map_location)
    if not is_fcam_checkpoint(obj):
        raise WSOLError(f"{path}: not an F-CAM checkpoint (no 'fcam' record); "
                        "train one with `wsol fcam train`")
    meta = dict(obj.get("wsol") or {})
    if not meta.get("model"):
        raise WSOLError(f"{path}: F-CAM checkpoint names no classifier model (wsol.model)")
    kwargs = {k: meta[k] for k in ("pool", "tap_theta", "large_feature_map", "surgery") if k in meta}
    classifier = build_model(str(meta["model"]), num_classes=meta.get("num_classes"), pretrained=False, **kwargs)
    state, decoder_state = _split_state(obj)
    load_state_strict(classifier, state, f"{path}: classifier weights do not match {meta['model']!r}")
    if isinstance(meta.get("data_config"), Mapping):
        cfg = dict(meta["data_config"])
        for key in ("mean", "std", "input_size"):
            if isinstance(cfg.get(key), list):
                cfg[key] = tuple(cfg[key])
        classifier.data_config = cfg
    names = meta.get("class_names")
    if isinstance(names, list) and len(names) == classifier.num_classes:
        classifier.class_names = [str(n) for n in names]
    spec = obj["fcam"]
    decoder = FCAMDecoder(spec["feature_channels"], spec["channels"])
    try:
        decoder.load_state_dict(decoder_state, strict=True)
    except RuntimeError as exc:
        raise WSOLError(f"{path}: decoder weights do not match its channels "
                        f"({str(exc).splitlines()[0][:200]})") from exc
    model = FCAM(classifier, decoder).eval()
    check_finite_weights(model, path)
    return model
