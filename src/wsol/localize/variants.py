"""Map variants (a CAM method plus optional NWC and PaS) as score maps at 224, for evaluations.

A variant is written ``method[+nwc][+published][+pas]``: ``cam``, ``cam+nwc``, ``cam+pas``, ``pc1``,
``pc1+published``, ``gradcam``... ``+published`` (``--as-published``) is CAM Back Again's own procedure for
``cam`` and ``pc1`` (see :class:`wsol.cams.cam.CAM` and :mod:`wsol.cams.pc1`).

PaS (percentile as a standard, Bae et al.) makes the threshold relative to a percentile of the map instead
of its max. We implement it as a score-map transform that the unchanged evaluator can consume: after the
reference path (bicubic 224, min-max), each map is divided by its own 90th percentile ``p`` and clipped
to [0, 1]. The evaluator's foreground at threshold tau is then ``map > tau * p`` (up to the uint8 cut), so
the tau swept by MaxBoxAcc is the PaS ratio (the authors' fixed rule is tau = 0.35). A map whose 90th
percentile is 0 is left as it is. Pixels above ``p`` share the top score, which PxAP sees as ties.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn

from wsol.cams import compute_cams, get_method
from wsol.errors import WSOLError
from wsol.localize.maps import to_score_maps

PAS_PERCENTILE = 90.0
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


def pas_normalize(maps: np.ndarray, percentile: float = PAS_PERCENTILE) -> np.ndarray:
    """``clip(map / percentile(map), 0, 1)`` per map of a (B, H, W) batch; maps with a zero percentile stay."""
    ref = np.percentile(maps.reshape(len(maps), -1), percentile, axis=1).astype(np.float32)
    safe = np.where(ref > 0, ref, 1.0).astype(np.float32)
    return np.clip(maps / safe[:, None, None], 0.0, 1.0).astype(np.float32)
