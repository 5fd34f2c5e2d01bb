"""Finding and decoding images robustly: the one place where files become RGB images.

Used by ``wsol localize`` (folders of arbitrary photos) and by training (dataset images). Grayscale,
RGBA/LA/PA (composited on white), palette, CMYK, 16-bit and float images are converted to 8-bit RGB, the EXIF
orientation is applied, large JPEGs can decode at reduced scale, and anything unreadable raises a one-line
:class:`~wsol.errors.WSOLError` naming the file.

Policies, and why:

- Alpha is composited on white, not dropped: the RGB under fully transparent pixels is arbitrary (often
  black or leftover paint), while cut-out objects on white is what viewers and shops show.
- 16-bit images are scaled to 8 bit by ``/ 257`` (65535 -> 255); 32-bit integer and float images are
  min-max normalised (their range has no fixed meaning).
- Size cap: ``MAX_PIXELS`` (400 megapixels, above PIL's own 179 MP bomb limit, which is lifted while we
  decode). Anything larger raises :class:`WSOLError` rather than allocating gigabytes. Every WSOL pipeline
  resizes to 224-448 anyway, so ``draft_size`` lets a large JPEG decode at 1/2, 1/4 or 1/8 scale cheaply.
- Truncated files are errors (``LOAD_TRUNCATED_IMAGES`` stays off): a half-grey image would silently
  poison training or a benchmark.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from wsol.errors import WSOLError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                              ".pnm", ".pbm", ".jfif", ".dib", ".ico", ".tga"})
MAX_PIXELS = 400_000_000  # larger images are skipped (a decompression bomb guard, above PIL's 179 MP)


@dataclass
class Discovered:
    """Files to process (with a unique, relative output key each) and files ignored (not image files)."""

    files: list[Path] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)


# files that mark a folder written by a wsol run (localize --out, --scoremaps, a shard): not input
OUTPUT_MARKERS = ("results.jsonl", "scoremaps.json", "shard.json")
OUTPUT_SUBFOLDERS = ("overlays", "maps")  # what `wsol localize --out DIR` writes images into
OUTPUT_FILES = (*OUTPUT_MARKERS, "run.json", "index.html", "skipped.jsonl", "metrics.json")


def is_output_folder(folder: str | Path) -> bool:
    """Whether ``folder`` was written by a wsol run (it holds one of :data:`OUTPUT_MARKERS`)."""
    return any((Path(folder) / name).is_file() for name in OUTPUT_MARKERS)


def find_image_files(paths: str | Path | Sequence[str | Path],
                     exclude: Sequence[str | Path] = ()) -> Discovered:
    """Images under ``paths`` (files, or folders searched recursively, hidden entries skipped), sorted.

    Output is never input: the folders in ``exclude`` (``--out``) and any folder a wsol run wrote (one with
    a :data:`OUTPUT_MARKERS` file) are skipped; when such a folder is a given PATH itself (``wsol localize .
    --out .``), only its image outputs (``overlays/``, ``maps/``) are.

    A file named explicitly is always tried; inside folders only known image extensions are taken and
    other files (and pipes, sockets, devices, which would block or never end) are reported in ``ignored``.
    Symbolic links are followed, each real folder visited once (a link back up would loop). Keys are paths
    relative to their folder (prefixed with the folder's name when several paths are given), unique, with
    ``/`` separators.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found = Discovered()
    seen: set[Path] = set()
    used: set[str] = set()
    several = len(paths) > 1
    outputs = {os.path.realpath(p) for p in exclude}

    def written_by_wsol(folder: str) -> bool:
        return os.path.realpath(folder) in outputs or is_output_folder(folder)

    def add(path: Path, key: str) -> None:
        real = path.resolve()
        if real in seen:
            return
        seen.add(real)
        base, n = key, 1
        while key in used:
            n += 1
            key = f"{base}~{n}"
        used.add(key)
        found.files.append(path)
        found.keys.append(key)

    for raw in paths:
        root = Path(raw)
        if root.is_file():
            add(root, root.name)
        elif root.is_dir():
            visited: set[str] = set()
            for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
                real = os.path.realpath(dirpath)
                if real in visited:
                    dirnames[:] = []
                    continue
                visited.add(real)
                output = written_by_wsol(dirpath)  # only a given PATH can be: deeper ones are pruned here
                dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                                     and not (output and d in OUTPUT_SUBFOLDERS)
                                     and not written_by_wsol(os.path.join(dirpath, d)))
                for name in sorted(filenames):
                    if name.startswith(".") or (output and name in OUTPUT_FILES):
                        continue
                    path = Path(dirpath) / name
                    rel = path.relative_to(root).as_posix()
                    if path.exists() and not path.is_file():  # a pipe or device: reading it could block
                        found.ignored.append(path)
                    elif path.suffix.lower() in IMAGE_EXTENSIONS:
                        add(path, f"{root.resolve().name}/{rel}" if several else rel)
                    else:
                        found.ignored.append(path)
        elif root.exists():
            raise WSOLError(f"{root}: not a regular file or folder (a pipe or device?)")
        else:
            raise WSOLError(f"{root}: no such file or folder")
    return found


@contextmanager
def _pil_limits() -> Iterator[None]:
    old, old_trunc = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = MAX_PIXELS, False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = old, old_trunc


def _minmax(a: np.ndarray) -> np.ndarray:
    """``(a - min) / (max - min)``; NaN/inf become 0 first, a constant image becomes all zeros."""
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    span = float(a.max(initial=0) - a.min(initial=0))
    return (a - a.min(initial=0)) / span if span > 0 else np.zeros_like(a)


def _to_rgb(image: Image.Image) -> tuple[Image.Image, str]:
    """Any PIL mode to 8-bit RGB; returns the image and a note on the conversion ('' when none)."""
    mode = image.mode
    if mode == "RGB":
        return image, ""
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(image).astype(np.float64)
        if mode == "F" or a.max(initial=0) > 65535 or a.min(initial=0) < 0:
            a = _minmax(a) * 255
        elif a.max(initial=0) > 255:
            a = a / 257.0
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).convert("RGB"), f"{mode} (high bit depth)"
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB"), f"{mode} (alpha on white)"
    return image.convert("RGB"), mode


def read_image(path: str | Path, draft_size: int | None = None) -> tuple[Image.Image, int, int, str]:
    """Decode ``path`` to an RGB PIL image, applying the EXIF orientation.

    Returns ``(image, width, height, note)`` where width/height are the original (oriented) size and the
    image itself may be smaller when ``draft_size`` lets a JPEG decode at a reduced scale. Raises
    :class:`WSOLError` with a short reason for anything unreadable.
    """
    path = Path(path)
    with _pil_limits():
        try:
            image = Image.open(path)
        except UnidentifiedImageError:
            raise WSOLError(f"{path}: not an image (unknown format)") from None
        except Image.DecompressionBombError:
            raise WSOLError(f"{path}: too large (over {MAX_PIXELS // 1_000_000} megapixels)") from None
        except OSError as exc:
            raise WSOLError(f"{path}: cannot be opened ({exc})") from None
        if image.size[0] * image.size[1] > MAX_PIXELS:  # PIL itself only refuses twice its limit
            raise WSOLError(f"{path}: too large ({image.size[0]} x {image.size[1]}, over "
                            f"{MAX_PIXELS // 1_000_000} megapixels)")
        try:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1) if hasattr(image, "getexif") else 1
            if orientation in (5, 6, 7, 8):
                width, height = height, width
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            if orientation != 1:  # exif_transpose copies the image even when there is nothing to do
                image = ImageOps.exif_transpose(image) or image
            rgb, note = _to_rgb(image)
        except WSOLError:
            raise
        except Exception as exc:  # noqa: BLE001 - truncated / corrupt data, unsupported modes
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise WSOLError(f"{path}: corrupt or truncated image ({reason})") from None
    if width < 1 or height < 1:
        raise WSOLError(f"{path}: empty image ({width} x {height})")
    return rgb, width, height, note


def load_image(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """Decode ``path`` to an 8-bit RGB PIL image (EXIF orientation applied); see the module's policies.

    ``draft_size`` lets a JPEG decode at a reduced scale no smaller than that size (much faster and
    lighter for big photos that will be resized to 224 anyway). Raises :class:`WSOLError` naming the file.
    """
    return read_image(path, draft_size)[0]


def find_images(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """Image files under ``paths`` (files, or folders searched recursively), sorted and de-duplicated.

    A file named explicitly is always taken (whatever its extension); inside folders only
    ``IMAGE_EXTENSIONS`` count and hidden entries are skipped. A missing path raises :class:`WSOLError`.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    return sorted(set(find_image_files(list(paths)).files), key=lambda p: p.as_posix())
