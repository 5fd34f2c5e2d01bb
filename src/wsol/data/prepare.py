"""``wsol data prepare NAME SRC --out DIR``: a standard WSOL dataset from its official files, in one command.

One module per dataset does the work (:mod:`wsol.data.cub`, :mod:`wsol.data.ilsvrc`; the synthetic dataset
is :mod:`wsol.data.synth`, ``wsol data synth``); :data:`PREPARERS` names them for the command line. Each
writes ``DIR/images`` (the data root: ``--data-root`` / ``data.root``), ``DIR/metadata/<split>/`` in the WSOL
format (``data.metadata``) and ``DIR/prepared.json``; see :mod:`wsol.data.sources`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from wsol.data.cub import prepare_cub
from wsol.data.ilsvrc import prepare_ilsvrc
from wsol.data.sources import Prepared
from wsol.errors import WSOLError

PREPARERS: dict[str, Callable[..., Prepared]] = {"cub": prepare_cub, "ilsvrc": prepare_ilsvrc}


def options(name: str) -> list[str]:
    """The dataset's own options (keyword arguments of its preparer besides ``overwrite``)."""
    parameters = inspect.signature(PREPARERS[name]).parameters.values()
    return [p.name for p in parameters if p.kind is p.KEYWORD_ONLY and p.name != "overwrite"]


def prepare(name: str, src: str | Path, out: str | Path, *, overwrite: bool = False, **kwargs: object) -> Prepared:
    """Run the preparer of dataset ``name`` (a key of :data:`PREPARERS`); ``kwargs`` are its own options."""
    if name not in PREPARERS:
        raise WSOLError(f"unknown dataset {name!r}: wsol data prepare knows {', '.join(PREPARERS)}")
    stray = [key for key in kwargs if key not in options(name)]
    if stray:
        flag = "--" + stray[0].replace("_", "-")
        takes = ", ".join("--" + o.replace("_", "-") for o in options(name)) or "no options"
        raise WSOLError(f"{flag} is not an option of {name} (it takes {takes})")
    return PREPARERS[name](src, out, overwrite=overwrite, **kwargs)
