"""The ``wsol`` command line. Each sub-command is a thin layer over the library."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="wsol",
    help="Weakly supervised object localization: maps, boxes, masks and the WSOL evaluation protocol.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main() -> None:
    """wsol: find where objects are with classifiers trained on image labels."""
