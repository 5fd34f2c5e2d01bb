"""Importing the modules that draw figures leaves matplotlib's backend alone; drawing selects Agg."""

from __future__ import annotations

import subprocess
import sys

_CHECK = """
import matplotlib
matplotlib.use("svg")
import wsol.report.compare_page, wsol.report.curves, wsol.tune.outputs, wsol.analysis.plots
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
from wsol.report.plots import agg_pyplot
plt = agg_pyplot()
assert matplotlib.get_backend().lower() == "agg", matplotlib.get_backend()
assert plt is __import__("matplotlib.pyplot").pyplot
"""


def test_import_keeps_the_backend_and_drawing_selects_agg() -> None:
    done = subprocess.run([sys.executable, "-c", _CHECK], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
