"""What every ``wsol`` command shares: ``-h`` as ``--help``, help that shows what an option takes, flags that
say they take no value, our own output lines only (libraries quiet unless ``--verbose``), Ctrl-C as exit 130.

Exit codes: 0 done, 1 nothing processed, 2 usage or input error, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import logging
import signal
import warnings
from collections.abc import Sequence
from typing import Any

import typer
import typer.core

HELP_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}
EXIT_DONE, EXIT_NOTHING, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
BOOLEAN_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "1", "0"})

# what a Ctrl-C leaves, per command: rerunning resumes where it stopped
RESUME_HINTS = {
    "localize": "rerun the same command to resume (finished images are kept in --out)",
    "train": "rerun with --resume to continue from <out>/checkpoints/last.ckpt",
    "fcam": "rerun with --resume to continue from <out>/checkpoints/last.ckpt",
    "tune": "rerun the same command to resume the study",
}


def _display_type(original: Any) -> Any:
    def display_type_rich(self: Any, ctx: Any) -> str | None:
        if getattr(self, "is_flag", False) and not getattr(self, "count", False):
            return None  # a flag takes no value
        text = original(self, ctx)
        if text and text.startswith("<list[") and text.endswith("]>"):  # one value per use, the option repeated
            return f"<{text[6:-2].lower()}>..."
        return text

    return display_type_rich


class _FlagValueCheck:
    """``--save-maps true``: a flag takes no value, so ``true`` would become a PATH; say so instead."""

    def __init__(self, original: Any) -> None:
        self.original = original

    def __call__(self, command: Any, ctx: Any, args: list[str]) -> list[str]:
        check_flag_values(command, args, ctx)
        return self.original(command, ctx, args)


def check_flag_values(command: Any, args: Sequence[str], ctx: Any = None) -> None:
    """Raise a usage error (exit 2) for a flag followed by true / false / yes / no... that is not a file.
    (``command`` and ``ctx`` are Typer's, which vendors its own click.)"""
    from pathlib import Path

    flags = {name for p in command.params if p.param_type_name == "option" and p.is_flag and not p.count
             for name in (*p.opts, *p.secondary_opts)}
    for flag, value in zip(args, args[1:]):
        if flag == "--":
            return
        if flag in flags and value.lower() in BOOLEAN_WORDS and not Path(value).exists():
            raise typer.BadParameter(f"a flag takes no value (got {flag} {value}): write {flag} alone to turn "
                                     "it on, leave it out for off", ctx=ctx, param_hint=repr(flag))


def patch_typer() -> None:
    """Flags shown without ``<bool>``, repeatable options as ``<str>...``, flag values refused (idempotent)."""
    if getattr(typer.core, "_wsol_patched", False):
        return
    for cls in (typer.core.TyperOption, typer.core.TyperArgument):
        cls.display_type_rich = _display_type(cls.display_type_rich)
    check = _FlagValueCheck(typer.core.TyperCommand.parse_args)
    typer.core.TyperCommand.parse_args = lambda self, ctx, args: check(self, ctx, args)
    typer.core._wsol_patched = True


def quiet_libraries(verbose: bool) -> None:
    """Our own lines only: Lightning's info lines (devices, tips, advertisements, batch limits, "fit
    stopped"; the model summary follows them, see ``wsol.train.run.make_trainer``) unless ``verbose``."""
    level = logging.INFO if verbose else logging.WARNING
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(level)
    if not verbose:
        warnings.filterwarnings("ignore", message=r".*(limit_(train|val|test)_batches|Total FLOPs|litlogger).*")


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                 line: str | None = None, *, original: Any = warnings.showwarning) -> None:
    """Our own warnings (:class:`wsol.errors.WSOLWarning`) as one ``warning:`` line; others as Python shows them."""
    from wsol.errors import WSOLWarning

    if issubclass(category, WSOLWarning):
        import sys

        print(f"warning: {message}", file=sys.stderr, flush=True)
        return
    original(message, category, filename, lineno, file, line)


def interrupted(command: str | None, message: str | None = None) -> str:
    """The line a Ctrl-C prints, and SIGINT ignored from now on: a second Ctrl-C while the process exits
    (atexit handlers, worker shutdown) would print a traceback."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        pass
    if message:
        return f"interrupted: {message}"
    hint = RESUME_HINTS.get(command or "")
    return "interrupted" + (f"; {hint}" if hint else "")
