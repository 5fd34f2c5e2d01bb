"""Map variants (a CAM method plus optional NWC and PaS) as score maps at 224, for evaluations.

A variant is written ``method[+nwc][+published][+pas]``: ``cam``, ``cam+nwc``, ``cam+pas``, ``pc1``,
``pc1+published``, ``gradcam``... ``+published`` (``--as-published``) is CAM Back Again's own procedure for
``cam`` and ``pc1`` (see :class:`wsol.cams.cam.CAM` and :mod:`wsol.cams.pc1`).

PaS (percentile as a standard, Bae et al.) makes the threshold relative to a percentile of the map instead
of its max: after the reference path (bicubic 224, min-max), each map goes through
:func:`wsol.maps.normalize.pas_normalize` (divided by its own 90th percentile, clipped to [0, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn

from wsol.cams import compute_cams, get_method
from wsol.errors import WSOLError
from wsol.maps.normalize import pas_normalize, to_score_maps

EVAL_SIZE = 224


@dataclass(frozen=True)
class MapVariant:
    """A parsed ``method[+nwc][+pas]`` spec."""

    spec: str
    method: str
    nwc: bool = False
    pas: bool = False
    published: bool = False

    @classmethod
    def parse(cls, spec: str) -> MapVariant:
        parts = [p.strip().lower() for p in str(spec).split("+")]
        method, flags = parts[0], set(parts[1:])
        unknown = flags - {"nwc", "pas", "published"}
        if unknown:
            raise WSOLError(f"map variant {spec!r}: unknown modifier {sorted(unknown)[0]!r}; "
                            "use +nwc, +published and/or +pas")
        if "nwc" in flags and method != "cam":
            raise WSOLError(f"map variant {spec!r}: +nwc applies to cam only")
        if "published" in flags and (method not in ("cam", "pc1") or "nwc" in flags):
            raise WSOLError(f"map variant {spec!r}: as published (CAM Back Again's procedure) exists for cam and "
                            "pc1, without +nwc")
        variant = cls(spec=str(spec), method=method, nwc="nwc" in flags, pas="pas" in flags,
                      published="published" in flags)
        get_method(method, **variant.options)  # validates the method name
        return variant

    @property
    def options(self) -> dict[str, bool]:
        """Keyword options of the method (:func:`wsol.cams.compute_cams`)."""
        return {"nwc": True} if self.nwc else {"as_published": True} if self.published else {}

    def raw_maps(self, model: nn.Module, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Raw maps (B, h, w) of ``targets`` and the logits."""
        out = compute_cams(model, images, targets, self.method, **self.options)  # works under no_grad too
        return out.maps, out.logits

    def score_maps(self, raw: Tensor) -> np.ndarray:
        """Raw maps -> (B, 224, 224) float32 score maps in [0, 1]: the reference path, then PaS if asked."""
        maps = to_score_maps(raw.float(), (EVAL_SIZE, EVAL_SIZE)).astype(np.float32, copy=False)
        return pas_normalize(maps) if self.pas else maps
