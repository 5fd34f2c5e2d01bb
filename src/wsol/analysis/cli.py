"""``wsol analyze``: the effective receptive field of a model, and what its CAM feature map holds on a split.

Heavy modules (torch, matplotlib) are imported inside the commands, so that ``wsol --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console

from wsol.clihelp import HELP_SETTINGS
from wsol.errors import WSOLError

analyze_app = typer.Typer(name="analyze", help="Why one backbone localizes better: the effective receptive "
                          "field, and the CAM feature map on a WSOL split.", no_args_is_help=True,
                          pretty_exceptions_enable=False, add_completion=False, context_settings=HELP_SETTINGS)
console = Console(stderr=True)

_MODEL_HELP = ("Model name(s), comma-separated: one panel each (default: the embedded EfficientNet-Lite0). "
               "With --checkpoint: the architecture override of the files.")
_RANDOM_HELP = "Random weights instead of ImageNet ones (no download): an untrained network, or offline tests."


def _progress(quiet: bool, label: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console,
                    disable=quiet, transient=True)


@contextmanager
def _model_errors(label: str, where: str) -> Iterator[None]:
    """A model that fails on these inputs (a size it cannot take, memory) as one line, not a traceback."""
    try:
        yield
    except (RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        hint = "; lower --batch-size or --image-size" if "memory" in first.lower() else ""
        raise WSOLError(f"{label}: the model failed {where} ({type(exc).__name__}: {first}){hint}") from None


@analyze_app.command("erf")
def erf(
    paths: list[Path] | None = typer.Argument(None, help="Images or folders (searched recursively); none and no "
                                                         "--metadata: seeded random images."),
    out: Path = typer.Option(..., "--out", "-o", help="The heat map PNG; the ratios go to the same name .json."),
    model: str | None = typer.Option(None, "--model", "--models", "-m", help=_MODEL_HELP),
    checkpoint: list[Path] | None = typer.Option(None, "--checkpoint", "-c", help="A checkpoint wsol reads "
                                                                                   "(repeat for side by side)."),
    random_init: bool = typer.Option(False, "--random-init", help=_RANDOM_HELP),
    metadata: Path | None = typer.Option(None, help="A WSOL split folder: its images (with --data-root)."),
    data_root: Path | None = typer.Option(None, help="Root the split's image ids are relative to."),
    num_images: int = typer.Option(50, "--num-images", "-n", help="Images averaged over (the authors: 50)."),
    image_size: int = typer.Option(1024, help="Input side: images are resized (bicubic) to a square of it "
                                              "(the authors: 1024)."),
    batch_size: int = typer.Option(2, help="Images per forward / backward pass (EfficientNet-Lite0 at 1024 px "
                                           "holds about 2 GB per image for the backward pass)."),
    device: str = typer.Option("auto", help="auto (CUDA when available), cpu, cuda, cuda:N, mps."),
    seed: int = typer.Option(0, help="Seed of the random images."),
    json_out: Path | None = typer.Option(None, "--json", help="Where to write the ratios (default: OUT as .json)."),
    save_maps: bool = typer.Option(False, "--save-maps", help="Also write the raw mean contribution maps (OUT as "
                                                              ".npz, one array per model)."),
    workers: int = typer.Option(0, help="Image decoding worker processes."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, no table."),
) -> None:
    """Effective receptive field (RepLKNet's measure): heat maps and high-contribution area ratios."""
    from wsol.files import check_output_path

    if out.suffix.lower() != ".png":
        raise WSOLError(f"--out {out}: the heat map is a PNG; name it .png")
    json_path = json_out or out.with_suffix(".json")
    check_output_path(out, "--out")
    check_output_path(json_path, "--json")
    if num_images < 1:
        raise WSOLError(f"--num-images must be >= 1, got {num_images}")
    if batch_size < 1:
        raise WSOLError(f"--batch-size must be >= 1, got {batch_size}")
    if image_size < 8:
        raise WSOLError(f"--image-size must be >= 8, got {image_size}")
    if workers < 0:
        raise WSOLError(f"--workers must be >= 0, got {workers}")

    from wsol.analysis.erf import measure_erf
    from wsol.analysis.inputs import image_batches, image_set, model_specs
    from wsol.analysis.plots import erf_figure
    from wsol.files import write_bytes, write_json
    from wsol.localize.pipeline import resolve_device

    specs = model_specs(model, list(checkpoint or []), random_init)
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise WSOLError(f"--model / --checkpoint: the same model twice ({', '.join(labels)})")
    images = image_set(list(paths or []), metadata, data_root, seed)
    dev = resolve_device(device)
    skipped: dict[str, str] = {}
    results = []
    with _progress(quiet, "ERF") as progress:
        task = progress.add_task("images", total=num_images * len(specs))
        for spec in specs:
            net = spec.load()
            batches = image_batches(images, net, size=image_size, num_images=num_images, batch_size=batch_size,
                                    workers=workers, on_skip=lambda p, why: skipped.setdefault(str(p), why))
            with _model_errors(spec.label, f"at {image_size} x {image_size} px"):
                results.append(measure_erf(net, batches, label=spec.label, device=dev,
                                           on_batch=lambda n: progress.advance(task, n)))
            del net
    record = {"method": "RepLKNet ERF: mean over images of relu(d relu(F)[centre].sum() / d input) summed over "
                        "colour channels; ratios on log10(1 + ERF) / max",
              "images": images.description, "image_size": image_size, "device": str(dev),
              "models": [r.record() for r in results], "unreadable": skipped}
    erf_figure(results, out, title=f"effective receptive field, {images.description}")
    write_json(json_path, record)
    if save_maps:
        import io

        import numpy as np

        buffer = io.BytesIO()
        np.savez_compressed(buffer, **{r.label: r.erf.astype(np.float32) for r in results})
        write_bytes(out.with_suffix(".npz"), buffer.getvalue())
    if not quiet:
        from rich.table import Table

        table = Table(title=f"high-contribution area ratio (% of the {image_size} x {image_size} input), "
                            f"{images.description}")
        table.add_column("model")
        thresholds = list(results[0].ratios)
        for t in thresholds:
            table.add_column(f"t = {float(t):.0%}", justify="right")
        table.add_column("images", justify="right")
        for r in results:
            cells = ["n/a" if r.ratios[t] is None else f"{r.ratios[t]['area_ratio'] * 100:.2f}" for t in thresholds]
            table.add_row(r.label, *cells, str(r.num_images))
        Console().print(table)
        for r in results:
            if r.num_images < num_images:
                console.print(f"note: {r.label}: {r.num_images} images used of the {num_images} asked"
                              + (f" ({r.skipped} with a non-finite gradient)" if r.skipped else ""), highlight=False)
        for path, why in skipped.items():
            console.print(f"  skipped {path}: {why}", highlight=False, soft_wrap=True)
        console.print(f"wrote {out} and {json_path}", highlight=False)


@analyze_app.command("features")
def features(
    metadata: Path = typer.Option(..., help="A WSOL split folder (image_ids.txt, class_labels.txt, "
                                            "localization.txt ...)."),
    data_root: Path = typer.Option(..., help="Root the split's image ids are relative to."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for features.json, per_image.csv, per_class.csv "
                                                      "and features.png."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model name (default: the embedded model); "
                                                                 "with --checkpoint, its architecture override."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", "-c", help="A checkpoint wsol reads."),
    random_init: bool = typer.Option(False, "--random-init", help=_RANDOM_HELP),
    mask_root: Path | None = typer.Option(None, help="Root of the split's mask PNGs (to use masks as the GT)."),
    gt: str = typer.Option("auto", help="auto (masks with --mask-root, else boxes), boxes or masks."),
    num_images: int | None = typer.Option(None, "--num-images", "-n", help="Only the split's first N images."),
    image_size: int | None = typer.Option(None, help="Input side (default: the model's)."),
    batch_size: int = typer.Option(32, help="Images per forward pass."),
    device: str = typer.Option("auto", help="auto (CUDA when available), cpu, cuda, cuda:N, mps."),
    workers: int | None = typer.Option(None, help="Image decoding worker processes (default: by device)."),
    coverage: float = typer.Option(0.9, help="Share of the CAM's positive mass the channel count must reach."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, no summary."),
) -> None:
    """What the CAM feature map holds on a split: evidence inside the GT, PC1, histograms, channels needed."""
    from wsol.files import check_output_path

    check_output_path(out, "--out", folder=True)
    if "," in (model or ""):
        raise WSOLError("--model: one model per run (run once per backbone and compare the folders)")
    if num_images is not None and num_images < 1:
        raise WSOLError(f"--num-images must be >= 1, got {num_images}")
    if image_size is not None and image_size < 8:
        raise WSOLError(f"--image-size must be >= 8, got {image_size}")

    from wsol.analysis.features import analyze_split
    from wsol.analysis.inputs import model_specs
    from wsol.analysis.plots import features_figure
    from wsol.data.metadata import Metadata
    from wsol.files import write_json, write_text

    split = Metadata.load(metadata, mask_root)  # a bad split fails before the model loads
    (spec,) = model_specs(model, [checkpoint] if checkpoint else [], random_init)
    net = spec.load()
    total = min(len(split), num_images or len(split))
    with _progress(quiet, "features") as progress:
        task = progress.add_task("images", total=total)
        with _model_errors(spec.label, "on this split"):
            analysis = analyze_split(metadata, data_root, net, mask_root=mask_root, gt=gt, batch_size=batch_size,
                                     device=device, workers=workers, image_size=image_size,
                                     num_images=num_images, coverage=coverage,
                                     on_batch=lambda n: progress.advance(task, n))
    analysis.settings["model"] = spec.label
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "features.json", analysis.record())
    write_text(out / "per_image.csv", analysis.per_image_csv())
    write_text(out / "per_class.csv", analysis.per_class_csv())
    features_figure(analysis, out / "features.png", title=f"{spec.label} on {metadata} ({analysis.settings['gt']})")
    if not quiet:
        s = analysis.split()

        def mean(key: str, pct: bool = True) -> str:
            v = s[key]["mean"]
            return "n/a" if v is None else (f"{v * 100:.1f} %" if pct else f"{v:.3g}")

        console.print(f"{spec.label}: {s['num_images']} images of {metadata} (GT: {analysis.settings['gt']})\n"
                      f"  CAM positive mass in GT      {mean('cam_mass_in_gt')} (GT area {mean('gt_area')})\n"
                      f"  class evidence in GT         {mean('evidence_in_gt')}\n"
                      f"  PC1 explained variance       {mean('pc1_evr')}\n"
                      f"  Pearson(PC1, CAM)            {mean('pc1_cam_pearson', False)}\n"
                      f"  box IoU(PC1, CAM) at 0.2     {mean('pc1_cam_box_iou', False)}\n"
                      f"  channels for {coverage:.0%} of the CAM  {mean('channels_90', False)} of "
                      f"{analysis.settings['feature_channels']} ({mean('cam_cancelled')} of their evidence "
                      "cancelled)\n"
                      f"wrote {out}/features.json, per_image.csv, per_class.csv, features.png", highlight=False)
