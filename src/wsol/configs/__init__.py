"""The shipped recipes (``configs/`` of the repository): found by name as well as by path, listed by
``wsol configs``.

They live in one place, the checkout's top-level ``configs/`` (the editable install of
``scripts/install.sh`` reads them there); a wheel installs the same files as data files under
``<prefix>/share/wsol/configs`` (``[tool.setuptools.data-files]`` in ``pyproject.toml``). A name is a path
relative to that folder without ``.yaml``: ``synth_gap``, ``methods/cub_resnet50_acol``, ``spaces/has``.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

from wsol.errors import WSOLError

SUFFIXES = (".yaml", ".yml")


def _candidates() -> list[Path]:
    checkout = Path(__file__).resolve().parents[3] / "configs"  # src/wsol/configs -> the repository root
    installed = [Path(p) / "share" / "wsol" / "configs"
                 for p in dict.fromkeys([sysconfig.get_path("data"), sys.prefix, sys.base_prefix]) if p]
    return [checkout, *installed]


def config_dir() -> Path:
    """The folder of the shipped configs (the checkout's, else the installed data files)."""
    for folder in _candidates():
        if folder.is_dir() and any(folder.glob("*.yaml")):
            return folder
    raise WSOLError("the shipped configs are not installed (no configs/ beside the package nor in "
                    f"{_candidates()[1]}); reinstall wsol")


def find_config(name: str | Path, option: str = "--config") -> Path:
    """``name`` as a path if such a file exists, else the shipped config of that name (``synth_gap``,
    ``configs/synth_gap.yaml`` from another folder, ``spaces/has``)."""
    path = Path(name)
    if path.is_file():
        return path
    if path.is_dir():
        raise WSOLError(f"{option} {path}: is a folder, not a config file")
    parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    if parts and not path.is_absolute():
        try:
            base = config_dir()
        except WSOLError:
            base = None
        if base is not None:
            stem = base.joinpath(*parts)
            for candidate in (stem, *(stem.with_name(stem.name + s) for s in SUFFIXES)):
                if candidate.is_file():
                    return candidate
    raise WSOLError(f"{name}: no such config file nor shipped config of that name (`wsol configs` lists them)")


def list_configs() -> list[tuple[str, str]]:
    """``(name, description)`` of every shipped config, the description being its first comment line."""
    base = config_dir()
    out = []
    for path in sorted(base.rglob("*.y*ml")):
        if path.suffix not in SUFFIXES:
            continue
        name = path.relative_to(base).with_suffix("").as_posix()
        out.append((name, _description(path)))
    return out


def _description(path: Path) -> str:
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            text = line.strip()
            if text.startswith("#"):
                return text.lstrip("#").strip()
            if text:
                break
    return ""
