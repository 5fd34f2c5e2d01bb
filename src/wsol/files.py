"""Files in and out: the one place where outputs are written atomically (a temporary file and a rename, so
an interrupted run never leaves half a file behind and a resumed run can trust what exists), and where
checkpoint files are read (``weights_only=True``, one-line errors)."""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wsol.errors import WSOLError

if TYPE_CHECKING:
    import torch


def _file_mode() -> int:
    """What ``open()`` would give a new file: 0o666 less the process umask (read once, at import)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.
    The file gets the usual permissions (``mkstemp`` alone would make it readable by its owner only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_output_path(path: str | Path, option: str, folder: bool = False) -> None:
    """Fail before the work rather than after it: ``path`` must be creatable as a file (``folder``: as a
    folder), i.e. not the other kind already, under a nearest existing parent that is a folder."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise WSOLError(f"{option} {path}: exists and is {'not ' if folder else ''}a folder")
    parent = next((q for q in path.parents if q.exists()), None)
    if parent is not None and not parent.is_dir():
        raise WSOLError(f"{option} {path}: {parent} is not a folder")


def write_bytes(path: str | Path, data: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _is_tensor(value: Any) -> bool:
    """A torch tensor, without importing torch (a CLI that never loads it starts in a fraction of a second)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def plain(value: Any) -> Any:
    """Nested data made plain, safe for JSON and for ``torch.load(weights_only=True)``: string keys, lists
    for tuples, arrays and tensors; Python numbers for numpy/torch scalars; None for NaN and infinities;
    ``str()`` of anything else."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray) or _is_tensor(value):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        return plain(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def json_text(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` keeping non-ASCII text readable, except where a string is not valid Unicode (a file name
    with undecodable bytes, kept by Python as lone surrogates): then everything is ``\\u``-escaped, which
    JSON readers (Python, browsers) turn back into the same string."""
    text = json.dumps(value, ensure_ascii=False, **kwargs)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, ensure_ascii=True, **kwargs)
    return text


def write_json(path: str | Path, payload: Any) -> None:
    """``payload`` (made :func:`plain`) as indented JSON, atomically."""
    write_text(path, json.dumps(plain(payload), indent=2, sort_keys=True) + "\n")


def save_npy(path: str | Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_bytes(path, buffer.getvalue())


def read_checkpoint(path: str | Path, what: str = "checkpoint", map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors naming the file (missing, unreadable,
    or pickled code that ``weights_only`` refuses)."""
    import torch
    path = Path(path)
    if path.is_dir():
        raise WSOLError(f"{path}: is a folder, not a {what} file")
    if not path.is_file():
        raise WSOLError(f"{path}: {what} file not found")
    if not _torch_file(path):  # a text file gave "KeyError: 101" (its byte 'e') from the legacy unpickler
        raise WSOLError(f"{path}: cannot read {what}: not a PyTorch file ({_file_kind(path)}, neither the zip "
                        "archive nor the pickle that torch.save writes)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise WSOLError(f"{path}: cannot read {what}: not a PyTorch file, or one that pickles code "
                        "(only plain tensors and data load, with weights_only=True)") from None
    except Exception as exc:  # noqa: BLE001 - any other loading failure is a user-facing error
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WSOLError(f"{path}: cannot read {what} ({type(exc).__name__}: {reason[:200]})") from None


def _torch_file(path: Path) -> bool:
    """What ``torch.save`` writes: a zip archive, or (legacy format) a pickle, whose first byte is 0x80."""
    import zipfile

    with path.open("rb") as handle:
        head = handle.read(1)
    return head == b"\x80" or zipfile.is_zipfile(path)


def _file_kind(path: Path) -> str:
    with path.open("rb") as handle:
        head = handle.read(512)
    if not head:
        return "an empty file"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return f"it starts with bytes {head[:8].hex(' ')}"
    return "a text file"
