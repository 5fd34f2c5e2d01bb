"""``wsol fcam``: train an F-CAM decoder on top of a trained classifier, and localize with it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from wsol.clihelp import HELP_SETTINGS

fcam_app = typer.Typer(name="fcam", help="F-CAM: full-resolution maps from a decoder trained on a frozen classifier.",
                       no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                       context_settings=HELP_SETTINGS)
console = Console(stderr=True)


@fcam_app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def train(
    overrides: list[str] | None = typer.Argument(None, help="Dotted key=value overrides, e.g. fcam.n_neg=0.3."),
    config: Path | None = typer.Option(None, "--config", "-c", help="A YAML recipe: a file or a shipped config's "
                                                                    "name such as fcam_synth_cpu (wsol configs)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from <trainer.out_dir>/checkpoints/last.ckpt."),
    classifier: Path | None = typer.Option(None, help="The trained classifier's checkpoint (= fcam.classifier)."),
    devices: str | None = typer.Option(None, help="Devices per node: auto, N or a list '0,1' (DDP when > 1)."),
    num_nodes: int | None = typer.Option(None, help="Nodes (multi-node DDP through Lightning's environment)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (= trainer.out_dir)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the line saying where the results are."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Lightning's own lines too (devices, model summary)."),
) -> None:
    """Train the F-CAM decoder (classifier frozen), select on val by the F-CAM maps, test CAM vs F-CAM."""
    from wsol.clihelp import quiet_libraries
    from wsol.fcam.train import load_fcam_config, train_fcam

    quiet_libraries(verbose)
    extra = list(overrides or [])
    for key, value in (("fcam.classifier", classifier), ("trainer.devices", devices),
                       ("trainer.num_nodes", num_nodes), ("trainer.out_dir", out)):
        if value is not None:
            extra.append(f"{key}={value}")
    summary = train_fcam(load_fcam_config(config, extra), resume=resume, quiet=quiet)
    if quiet:
        console.print(f"F-CAM checkpoint: {summary.get('fcam_checkpoint')}", highlight=False, soft_wrap=True)
    else:
        for spec, entry in summary.get("test", {}).items():
            if spec == "classification":
                continue
            parts = [f"{k} {entry[k]:.2f}" for k in ("MaxBoxAcc", "MaxBoxAccV2", "PxAP") if k in entry]
            console.print(f"{spec}: " + ", ".join(parts), highlight=False)
        console.print(f"F-CAM checkpoint: {summary.get('fcam_checkpoint')}", highlight=False)


def register(app: typer.Typer) -> None:
    """Mount ``wsol fcam`` on ``app``. (F-CAM checkpoints need nothing special to localize:
    ``wsol localize --checkpoint fcam.pt --method fcam``.)"""
    app.add_typer(fcam_app, name="fcam")
