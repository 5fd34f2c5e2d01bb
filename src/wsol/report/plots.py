"""Matplotlib for figures written to files: the non-interactive Agg backend is chosen when a figure is drawn,
so that importing a module of wsol leaves the caller's backend alone."""

from __future__ import annotations

from types import ModuleType


def agg_pyplot() -> ModuleType:
    """``matplotlib.pyplot``, after selecting the Agg backend (``matplotlib.use("Agg")``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


__all__ = ["agg_pyplot"]
