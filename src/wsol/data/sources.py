"""What the dataset preparers (:mod:`wsol.data.cub`, :mod:`wsol.data.ilsvrc`) share.

A prepared dataset is one folder: ``images/`` (the data root the image ids are relative to), ``metadata/<split>/``
(written by :func:`~wsol.data.metadata.write_split`) and ``prepared.json`` (what was prepared from where). It is
built in a temporary folder beside its final place and renamed at the end, so an interrupted run leaves
nothing half-written. Images come out of an archive (extracted once, in one pass) or, from an extracted
folder, as symbolic links to the source files: no gigabytes are copied, and ids stay those of the reference
metadata. Every problem with the source is a :class:`~wsol.errors.WSOLError` naming the file (and line).
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError

from wsol.errors import WSOLError
from wsol.files import write_json

FORMAT = "wsol-prepare/1"
PREPARED_FILE = "prepared.json"
_ENTRIES = frozenset({"images", "metadata", PREPARED_FILE})  # all a prepared folder holds


@dataclass
class Prepared:
    """A prepared dataset: where its data root and metadata are, and how many images each split has."""

    dataset: str
    out: Path
    splits: dict[str, int]
    linked: bool  # the images are symbolic links into the source (keep the source where it is)

    @property
    def data_root(self) -> Path:
        return self.out / "images"

    @property
    def metadata(self) -> Path:
        return self.out / "metadata"


@contextmanager
def building(out: str | Path, overwrite: bool = False,
             check_replaceable: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside ``out`` to fill; on success it becomes ``out``, on error it is removed.

    An existing ``out`` must be empty, or (with ``overwrite``) a folder that ``check_replaceable`` accepts (by
    default: one an earlier preparation wrote and nothing else): a folder holding anything else is never replaced.
    """
    check = check_replaceable or _check_replaceable
    out = Path(out).absolute()
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        check(out)
        if not overwrite:
            raise WSOLError(f"{out}: already exists (pass overwrite=True / --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            if any(out.iterdir()):  # again: files may have been put there in the meantime
                check(out)
            old = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
            out.rename(old / out.name)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _check_replaceable(out: Path) -> None:
    if not out.is_dir():
        raise WSOLError(f"{out}: exists and is not a folder; will not replace it with a prepared dataset")
    others = sorted(p.name for p in out.iterdir() if p.name not in _ENTRIES)
    try:
        written = json.loads((out / PREPARED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        written = None
    if others or not (isinstance(written, dict) and written.get("format") == FORMAT):
        found = f"it holds {', '.join(others[:3])}{', ...' if len(others) > 3 else ''}" if others else \
            f"it has no {PREPARED_FILE} written by wsol data prepare"
        raise WSOLError(f"{out}: not a prepared dataset folder ({found}); will not replace it, "
                        "choose a new or empty --out folder")


def write_prepared(root: Path, dataset: str, source: dict[str, str], splits: dict[str, int], linked: bool) -> None:
    """Write ``prepared.json``: the dataset, its sources, the splits and whether images are links."""
    write_json(root / PREPARED_FILE, {"format": FORMAT, "dataset": dataset, "source": source, "data_root": "images",
                                      "metadata": "metadata", "splits": splits, "linked_images": linked})


def link(source: Path, dest: Path) -> None:
    """``dest`` becomes a symbolic link to ``source`` (absolute, so the prepared folder may move)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(source.absolute(), dest)


def scan_archive(path: Path, place: Callable[[str], str | None], read: Callable[[str], bool],
                 dest: Path) -> dict[str, bytes]:
    """One pass over the tar archive ``path`` (any compression): each regular member for which
    ``place(name)`` gives a relative path is written to ``dest / that path``; the members for which
    ``read(name)`` is true are returned, by name. Names with ``..`` or a leading ``/`` are skipped."""
    texts: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = member.name[2:] if member.name.startswith("./") else member.name
                parts = PurePosixPath(name).parts
                if not member.isfile() or not parts or name.startswith("/") or ".." in parts:
                    continue
                if read(name):
                    texts[name] = tar.extractfile(member).read()
                    continue
                target = place(name)
                if target is not None:
                    out = dest / target
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as data, open(out, "wb") as f:
                        shutil.copyfileobj(data, f, 1 << 20)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # the file system's (a full disk, a permission), not a broken archive (gzip's have no errno)
        reason = str(exc).strip() or type(exc).__name__
        raise WSOLError(f"{path}: not a readable tar archive, or a truncated one ({reason})") from None
    return texts


def decode_text(data: bytes, label: str) -> str:
    """Bytes of a text file as str (UTF-8, a BOM ignored), or a one-line error naming ``label``."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise WSOLError(f"{label}: not a UTF-8 text file ({exc.reason})") from None


def read_text(path: Path, what: str = "") -> str:
    """A text file of the source as str; a missing file is a one-line error (``what`` says what it holds)."""
    if not path.is_file():
        raise WSOLError(f"{path}: file not found{f' ({what})' if what else ''}")
    return decode_text(path.read_bytes(), str(path))


def table(text: str, label: str, fields: str) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` of each non-empty line of a whitespace-separated table. ``fields`` names the
    expected columns (``"<image_id> <x> <y>"``); another count is an error naming ``label`` and the line."""
    count = len(fields.split())
    for number, line in enumerate(text.splitlines(), start=1):
        values = line.split()
        if not values:
            continue
        if len(values) != count:
            raise WSOLError(f"{label}:{number}: expected '{fields}', got {line.strip()!r}")
        yield number, values


def image_size(path: Path, where: str) -> tuple[int, int]:
    """``(width, height)`` as stored in the file (its header; the EXIF orientation is not applied: boxes are
    given in stored pixels). ``where`` says where the image was listed, for the error message."""
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise WSOLError(f"{path}: image file not found (listed in {where})") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise WSOLError(f"{path}: not a readable image (listed in {where}; {exc})") from None


def check_box(box: tuple[int, int, int, int], size: tuple[int, int], label: str) -> None:
    """Raise naming ``label`` unless ``box`` is ``x0 <= x1, y0 <= y1`` inside its ``width x height`` image (what
    :meth:`~wsol.data.metadata.Metadata.load` will check)."""
    x0, y0, x1, y1 = box
    width, height = size
    if x1 < x0 or y1 < y0:
        raise WSOLError(f"{label}: box ({x0}, {y0}, {x1}, {y1}) is not x0 <= x1, y0 <= y1")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise WSOLError(f"{label}: box ({x0}, {y0}, {x1}, {y1}) lies outside its {width} x {height} image")
