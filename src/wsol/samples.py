"""A few sample photos shipped with scikit-image (no network): ``wsol samples --out DIR``.

They are the README's first example: ``wsol samples --out samples && wsol localize samples --out wsol-out``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from wsol.errors import WSOLError
from wsol.files import replacing


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        image = getattr(skimage.data, name)()
        return image[0] if name == "stereo_motorcycle" else image

    return load


# file name -> loader of an RGB uint8 array; every one is bundled in the scikit-image wheel.
SAMPLES: dict[str, Callable[[], np.ndarray]] = {
    "chelsea_cat.png": _skimage("chelsea"),
    "coffee_cup.png": _skimage("coffee"),
    "astronaut.png": _skimage("astronaut"),
    "rocket.jpg": _skimage("rocket"),
    "motorcycle.png": _skimage("stereo_motorcycle"),
}


def write_samples(out_dir: str | Path, names: list[str] | None = None) -> list[Path]:
    """Write the sample photos into ``out_dir`` (created if needed), atomically; return their paths."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise WSOLError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    chosen = list(SAMPLES) if names is None else names
    written = []
    for name in chosen:
        if name not in SAMPLES:
            raise WSOLError(f"unknown sample {name!r}; valid: {', '.join(SAMPLES)}")
        try:
            array = SAMPLES[name]()
        except Exception as exc:  # noqa: BLE001 - a broken scikit-image install
            raise WSOLError(f"sample {name!r}: cannot be loaded from scikit-image ({exc})") from exc
        target = out / name
        with replacing(target) as tmp:
            Image.fromarray(np.asarray(array, dtype=np.uint8)).convert("RGB").save(tmp, quality=92)
        written.append(target)
    return written
