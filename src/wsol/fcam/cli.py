"""``wsol fcam``: train an F-CAM decoder on top of a trained classifier, and localize with it."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

fcam_app = typer.Typer(name="fcam", help="F-CAM: full-resolution maps from a decoder trained on a frozen classifier.",
                       no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
console = Console(stderr=True)


@fcam_app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def train(
    overrides: list[str] | None = typer.Argument(None, help="Dotted key=value overrides, e.g. fcam.n_neg=0.3."),
    config: Path | None = typer.Option(None, "--config", "-c", help="A YAML recipe (configs/fcam_*.yaml)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from <trainer.out_dir>/checkpoints/last.ckpt."),
    classifier: Path | None = typer.Option(None, help="The trained classifier's checkpoint (= fcam.classifier)."),
    devices: str | None = typer.Option(None, help="Devices per node: auto, N or a list '0,1' (DDP when > 1)."),
    num_nodes: int | None = typer.Option(None, help="Nodes (multi-node DDP through Lightning's environment)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (= trainer.out_dir)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or model summary."),
) -> None:
    """Train the F-CAM decoder (classifier frozen), select on val by the F-CAM maps, test CAM vs F-CAM."""
    from wsol.fcam.train import load_fcam_config, train_fcam

    extra = list(overrides or [])
    for key, value in (("fcam.classifier", classifier), ("trainer.devices", devices),
                       ("trainer.num_nodes", num_nodes), ("trainer.out_dir", out)):
        if value is not None:
            extra.append(f"{key}={value}")
    summary = train_fcam(load_fcam_config(config, extra), resume=resume, quiet=quiet)
    if not quiet:
        for spec, entry in summary.get("test", {}).items():
            if spec == "classification":
                continue
            parts = [f"{k} {entry[k]:.2f}" for k in ("MaxBoxAcc", "MaxBoxAccV2", "PxAP") if k in entry]
            console.print(f"{spec}: " + ", ".join(parts), highlight=False)
        console.print(f"F-CAM checkpoint: {summary.get('fcam_checkpoint')}", highlight=False)


@contextmanager
def _fcam_aware_loader() -> Iterator[None]:
    """While active, ``wsol.localize.run.load_model`` rebuilds F-CAM checkpoints as :class:`FCAM` models
    (and falls back to the usual loader for anything else)."""
    import torch

    import wsol.localize.run as run
    from wsol.errors import WSOLError
    from wsol.fcam.checkpoint import is_fcam_checkpoint, load_fcam

    original = run.load_model

    @functools.wraps(original)
    def load(model_name: str | None = None, checkpoint: str | Path | None = None) -> Any:
        if checkpoint is not None and Path(checkpoint).is_file():
            try:
                obj = torch.load(checkpoint, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001
                raise WSOLError(f"--checkpoint {checkpoint}: cannot be read ({type(exc).__name__})") from exc
            if is_fcam_checkpoint(obj):
                return load_fcam(checkpoint)
        return original(model_name, checkpoint)

    run.load_model = load
    try:
        yield
    finally:
        run.load_model = original


def _localize_command() -> Any:
    from wsol.cli import localize as base

    @functools.wraps(base)
    def localize(**kwargs: Any) -> None:
        with _fcam_aware_loader():
            base(**kwargs)

    localize.__doc__ = ("`wsol localize` for F-CAM checkpoints (fcam.pt or a `wsol fcam train` .ckpt): same "
                        "options; use --method fcam (or any CAM method on the frozen classifier).")
    return localize


def register(app: typer.Typer) -> None:
    """Add ``localize`` (which needs the main app's command) and mount ``wsol fcam`` on ``app``."""
    fcam_app.command("localize")(_localize_command())
    app.add_typer(fcam_app, name="fcam")
