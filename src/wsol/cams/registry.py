"""The one table of activation-map methods (name -> class). Adding a method = one file + one line here."""

from __future__ import annotations

from typing import Any

from wsol.cams.acol import ACoLMap
from wsol.cams.base import CAMMethod
from wsol.cams.cam import CAM
from wsol.cams.eigencam import EigenCAM
from wsol.cams.fcam import FCAMMap
from wsol.cams.gradcam import GradCAM
from wsol.cams.gradcampp import GradCAMpp
from wsol.cams.layercam import LayerCAM
from wsol.cams.pc1 import PC1
from wsol.cams.smoothgradcampp import SmoothGradCAMpp
from wsol.cams.spg import SPGMap
from wsol.cams.xgradcam import XGradCAM
from wsol.errors import WSOLError

METHODS: dict[str, type[CAMMethod]] = {
    "cam": CAM,
    "pc1": PC1,
    "eigencam": EigenCAM,
    "gradcam": GradCAM,
    "gradcampp": GradCAMpp,
    "smoothgradcampp": SmoothGradCAMpp,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "fcam": FCAMMap,
    "acol": ACoLMap,
    "spg": SPGMap,
}


def get_method(name: str, **options: Any) -> CAMMethod:
    """Instantiate a method by name with its options; a clear error for unknown names or options."""
    key = str(name).lower().replace("++", "pp").replace("-", "").replace("_", "")
    aliases = {"gradcamplusplus": "gradcampp", "smoothgradcamplusplus": "smoothgradcampp"}
    key = aliases.get(key, key)
    if key not in METHODS:
        raise WSOLError(f"unknown CAM method {name!r}; valid: {', '.join(METHODS)}")
    try:
        return METHODS[key](**options)
    except TypeError as exc:
        raise WSOLError(f"method {key!r}: bad options {sorted(options)} ({exc})") from exc
