"""The ``wsol`` command line. Each sub-command is a thin layer over the library.

Errors a user can fix (:class:`~wsol.errors.WSOLError`) print as one line and exit with status 2. Exit codes:
0 done, 1 nothing processed, 2 usage or input error, 130 interrupted (Ctrl-C; see :mod:`wsol.clihelp`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console

from wsol.clihelp import HELP_SETTINGS, interrupted, patch_typer, show_warning
from wsol.errors import Interrupted, WSOLError, one_line

patch_typer()  # flags shown without <bool>, `--flag true` refused (see wsol.clihelp)
app = typer.Typer(
    name="wsol",
    context_settings=HELP_SETTINGS,
    help="Weakly supervised object localization: maps, boxes, masks and the WSOL evaluation protocol.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)


def run() -> None:
    """Console-script entry point: the Typer app with one-line errors (also for the file system's: a full
    disk, a permission, a path that is not what it should be; WSOL_DEBUG=1 shows their traceback)."""
    import warnings

    warnings.showwarning = show_warning  # ours as one `warning:` line
    try:
        app()
    except Interrupted as error:  # a run stopped by Ctrl-C at a safe point, saying how to resume
        console.print(interrupted(_command, one_line(error)), highlight=False, soft_wrap=True)
        sys.exit(130)
    except SystemExit as exit_:  # Typer turns a KeyboardInterrupt into exit 130 without a word
        if exit_.code == 130:
            console.print(interrupted(_command), highlight=False, soft_wrap=True)
        raise
    except WSOLError as error:
        console.print(f"[bold red]error:[/] {one_line(error)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as error:
        if os.environ.get("WSOL_DEBUG"):
            raise
        console.print(f"[bold red]error:[/] {one_line(error)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (MemoryError, RuntimeError) as error:  # out of memory anywhere, CPU or CUDA: the setting to change
        from wsol.memory import is_out_of_memory, out_of_memory_message

        if os.environ.get("WSOL_DEBUG") or not is_out_of_memory(error):
            raise
        console.print(f"[bold red]error:[/] {out_of_memory_message(error)}", highlight=False, soft_wrap=True)
        sys.exit(2)


def _version(value: bool) -> None:
    if value:
        from wsol import __version__

        typer.echo(f"wsol {__version__}")
        raise typer.Exit()


_command: str | None = None  # the sub-command running (for the Ctrl-C hint)


@app.callback()
def main(ctx: typer.Context,
         version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """wsol: find where objects are with classifiers trained on image labels.

    Exit codes: 0 done, 1 nothing processed, 2 usage or input error, 130 interrupted."""
    global _command
    from wsol.runtime import tune_cpu_allocator

    _command = ctx.invoked_subcommand

    tune_cpu_allocator()  # 2x faster CPU forward passes (see wsol.runtime); WSOL_TUNE_MALLOC=0 turns it off


@app.command()
def evaluate(
    metadata: Path = typer.Option(..., help="Split folder with image_ids.txt, class_labels.txt, localization.txt..."),
    scoremaps: Path = typer.Option(..., help="Folder of <image_id>.npy score maps, 224 x 224, values in [0, 1]."),
    mask_root: Path | None = typer.Option(None, help="Root of the mask PNGs named in the metadata (for PxAP)."),
    cam_curve_interval: float = typer.Option(0.001, help="Threshold step: thresholds are arange(0, 1, interval)."),
    iou: str = typer.Option("30 50 70", help="IoU criteria (%) for MaxBoxAccV2, e.g. '30 50 70' or 30,50,70."),
    json_out: Path | None = typer.Option(None, "--json", help="Write every number to this JSON file."),
    plot: Path | None = typer.Option(None, help="Plot BoxAcc vs threshold (and the PR curve for masks) to a PNG."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Evaluate saved score maps with the WSOL protocol: MaxBoxAcc, MaxBoxAccV2, PxAP, peak IoU."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from wsol.data.metadata import Metadata
    from wsol.files import write_json
    from wsol.metrics.scoremaps import evaluate_scoremaps

    try:
        iou_thresholds = tuple(int(v) for v in iou.replace(",", " ").split())
    except ValueError:
        raise WSOLError(f"--iou: expected integers such as '30 50 70', got {iou!r}") from None
    from wsol.files import check_output_path

    if json_out is not None:
        check_output_path(json_out, "--json")
    if plot is not None:
        from wsol.report.curves import plot_format

        check_output_path(plot, "--plot")
        plot_format(plot)
    split = Metadata.load(metadata, mask_root=mask_root)
    if split.has_masks and mask_root is None and not quiet:
        console.print(f"note: {metadata} has masks: give --mask-root to evaluate PxAP too", highlight=False)
    with Progress(TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.speed} maps/s"),
                  TimeRemainingColumn(), console=console, disable=quiet, transient=True) as progress:
        task = progress.add_task("maps", total=len(split))
        result, boxes, masks = evaluate_scoremaps(split, scoremaps, mask_root, cam_curve_interval, iou_thresholds,
                                                  on_batch=lambda n: progress.advance(task, n))
    result["metadata"], result["scoremaps"] = str(metadata), str(scoremaps)

    table = Table(title=f"{metadata}  ({result['num_images']} images, threshold interval {cam_curve_interval:g})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("best threshold", justify="right")
    if boxes is not None:
        table.add_row("MaxBoxAcc (IoU 50, largest box)", f"{result['MaxBoxAcc']:.2f}",
                      f"{result['MaxBoxAcc_threshold']:.3f}")
        if "BoxAcc@0.2" in result:  # only when 0.2 is on the threshold grid
            table.add_row("BoxAcc at tau = 0.2 (IoU 50, largest box)", f"{result['BoxAcc@0.2']:.2f}", "0.200")
        table.add_row("MaxBoxAccV2 (all boxes, mean over IoU)", f"{result['MaxBoxAccV2']:.2f}", "")
        for iou_value, row in result["per_iou"].items():
            table.add_row(f"  IoU {iou_value}, all boxes", f"{row['max_box_acc']:.2f}", f"{row['best_threshold']:.3f}")
    if masks is not None:
        table.add_row("PxAP", f"{result['PxAP']:.2f}", "")
        table.add_row("peak IoU", f"{result['peak_IoU']:.2f}", f"{result['peak_IoU_threshold']:.3f}")
    Console().print(table)
    if json_out is not None:
        write_json(json_out, result)
    if plot is not None:
        from wsol.report.curves import plot_curves

        plot_curves(plot, boxes, masks, title=str(metadata))


data_app = typer.Typer(help="Datasets: prepare CUB / ILSVRC from their official files, or generate the "
                       "synthetic WSOL benchmark.", no_args_is_help=True, context_settings=HELP_SETTINGS)
app.add_typer(data_app, name="data")


def _synth_option(name: str, flag: str | None = None):
    """A `wsol data synth` option with the generator's own default and help (one source for both)."""
    from wsol.data.synth_config import KNOBS, SynthConfig

    return typer.Option(SynthConfig.__dataclass_fields__[name].default, flag or f"--{name.replace('_', '-')}",
                        help=KNOBS[name])


@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(..., "--out", "-o", help="Folder to create (images/, masks/, metadata/)."),
    seed: int = _synth_option("seed"),
    classes: int = _synth_option("num_classes", "--classes"),
    per_class_train: int = _synth_option("train_per_class", "--per-class-train"),
    per_class_val: int = _synth_option("val_per_class", "--per-class-val"),
    per_class_test: int = _synth_option("test_per_class", "--per-class-test"),
    part_size: float = _synth_option("part_size"),
    max_objects: int = _synth_option("max_objects"),
    distractors: int = _synth_option("distractors"),
    headless_bodies: int = _synth_option("headless_bodies"),
    head_cue: str = _synth_option("head_cue"),
    body_colour: str = _synth_option("body_colour"),
    texture: float = _synth_option("texture"),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Any other knob (see "
                                   "wsol.data.synth_config.KNOBS); repeat --set for each."),
    overwrite: bool = typer.Option(False, help="Replace an existing dataset folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Generate the synthetic WSOL dataset: the class lives in a small part of each object."""
    import dataclasses

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from wsol.data.synth import SynthConfig, generate

    knobs = {f.name: f for f in dataclasses.fields(SynthConfig)}
    values = dict(seed=seed, num_classes=classes, train_per_class=per_class_train, val_per_class=per_class_val,
                  test_per_class=per_class_test, part_size=part_size, max_objects=max_objects,
                  distractors=distractors, headless_bodies=headless_bodies, head_cue=head_cue,
                  body_colour=body_colour, texture=texture)
    for item in set_:
        key, sep, raw = item.partition("=")
        if not sep or key not in knobs:
            raise WSOLError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(knobs)}")
        kind = type(knobs[key].default)
        try:
            values[key] = kind(raw)
        except ValueError:
            raise WSOLError(f"--set {item!r}: {raw!r} is not a {kind.__name__}") from None
    config = SynthConfig(**values)
    with Progress(TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console,
                  disable=quiet, transient=True) as progress:
        task = progress.add_task("images", total=None)
        path = generate(config, out, overwrite=overwrite,
                        progress=lambda done, total: progress.update(task, completed=done, total=total))
    typer.echo(f"wrote {path} (data root {path / 'images'}, masks {path / 'masks'}, metadata {path / 'metadata'})")


@data_app.command("prepare")
def data_prepare(
    name: str = typer.Argument(..., help="Dataset: cub (CUB-200-2011) or ilsvrc (ImageNet val, the protocol's test)."),
    src: Path = typer.Argument(..., help="cub: CUB_200_2011.tgz or the extracted folder; ilsvrc: the folder of the "
                                         "val images (and their XML boxes or Kaggle's LOC_val_solution.csv)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to create (images/ = the data root, metadata/)."),
    val: Path | None = typer.Option(None, "--val", help="cub: the CUBV2 images (folder of class folders or "
                                                         "CUBV2.tar) for the val split (train-fullsup)."),
    val_boxes: Path | None = typer.Option(None, "--val-boxes", help="cub: the CUBV2 boxes, wsolevaluation's "
                                                                    "metadata/CUB/val/localization.txt."),
    boxes: Path | None = typer.Option(None, "--boxes", help="ilsvrc: the XML folder or LOC_val_solution.csv, when "
                                                            "not in SRC."),
    synsets: Path | None = typer.Option(None, "--synsets", help="ilsvrc: LOC_synset_mapping.txt or one wnid a line "
                                                                "(the class order), when not in SRC."),
    overwrite: bool = typer.Option(False, help="Replace a folder written by an earlier `wsol data prepare`."),
) -> None:
    """Prepare a standard WSOL dataset from its official files: the data root and the WSOL metadata."""
    from wsol.data.prepare import prepare

    given = {"val": val, "val_boxes": val_boxes, "boxes": boxes, "synsets": synsets}
    result = prepare(name, src, out, overwrite=overwrite, **{k: v for k, v in given.items() if v is not None})
    counts = ", ".join(f"{split} {n}" for split, n in result.splits.items())
    links = " (symbolic links into the source: keep it in place)" if result.linked else ""
    typer.echo(f"wrote {result.out}: {counts} images\n  --data-root {result.data_root}{links}\n"
               f"  metadata    {result.metadata}")


@app.command()
def samples(
    out: Path = typer.Option(Path("samples"), "--out", "-o", help="Folder to write the sample photos into."),
) -> None:
    """Write a few sample photos (bundled with scikit-image, no network) to try `wsol localize` on."""
    from wsol.samples import write_samples

    for path in write_samples(out):
        typer.echo(str(path))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def train(
    overrides: list[str] | None = typer.Argument(None, help="Dotted key=value overrides, e.g. optim.lr=0.001."),
    config: Path | None = typer.Option(None, "--config", "-c", help="A YAML recipe: a file, or a shipped "
                                                                    "config's name such as synth_gap (wsol configs)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from <trainer.out_dir>/checkpoints/last.ckpt."),
    devices: str | None = typer.Option(None, help="Devices per node: auto, N or a list '0,1' (DDP when > 1)."),
    num_nodes: int | None = typer.Option(None, help="Nodes (multi-node DDP through Lightning's environment)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (= trainer.out_dir)."),
    test_methods: str = typer.Option("", help="Map variants for the final test, e.g. 'cam cam+nwc cam+pas pc1'."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the line saying where the results are."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Lightning's own lines too (devices, model summary)."),
) -> None:
    """Train a WSOL classifier (Lightning), validate localization each epoch, test the selected checkpoint."""
    from wsol.clihelp import quiet_libraries
    from wsol.train.config import load_config
    from wsol.train.run import train as run_train

    quiet_libraries(verbose)

    extra = list(overrides or [])
    if devices is not None:
        extra.append(f"trainer.devices={devices}")
    if num_nodes is not None:
        extra.append(f"trainer.num_nodes={num_nodes}")
    if out is not None:
        extra.append(f"trainer.out_dir={out}")
    recipe = load_config(config, extra)
    methods = test_methods.replace(",", " ").split() or None
    summary = run_train(recipe, resume=resume, test_methods=methods, quiet=quiet)
    if quiet:
        console.print(_results_line(summary), highlight=False, soft_wrap=True)  # -q: where the results are
    else:
        test = summary.get("test", {})
        console.print(f"classification top-1 {test.get('classification', {}).get('top1_cls', float('nan')):.2f}",
                      highlight=False)
        for spec, entry in test.items():
            if spec == "classification":
                continue
            parts = [f"{k} {entry[k]:.2f}" for k in ("MaxBoxAcc", "MaxBoxAccV2", "PxAP") if k in entry]
            console.print(f"{spec}: " + ", ".join(parts), highlight=False)
        console.print(_results_line(summary), highlight=False, soft_wrap=True)


def _results_line(summary: dict) -> str:
    """Where a training's results are: its test_metrics.json, or the run folder when it had no test split."""
    out = Path(summary["out_dir"])
    return f"metrics: {out / 'test_metrics.json'}" if "test" in summary else f"run: {out}"


@app.command()
def configs() -> None:
    """The shipped recipes, by name (give one to --config): train, F-CAM and search spaces (spaces/...)."""
    from wsol.configs import config_dir, list_configs

    entries = list_configs()
    width = max(len(name) for name, _ in entries)
    for name, description in entries:
        typer.echo(f"{name:<{width}}  {description}")
    console.print(f"({len(entries)} configs in {config_dir()})", highlight=False)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def tune(
    overrides: list[str] | None = typer.Argument(None, help="Dotted key=value overrides of the recipe, as wsol train."),
    config: Path = typer.Option(..., "--config", "-c", help="The recipe every trial trains (wsol train or wsol "
                                                            "fcam train YAML; a file or a shipped config's name)."),
    space: Path = typer.Option(..., "--space", "-s", help="Search space YAML: dotted config keys -> distributions "
                                                          "(a file or a shipped name such as spaces/has)."),
    trials: int = typer.Option(..., "--trials", "-n", help="Completed trials wanted in the study, in total (a "
                                                           "resumed study counts the ones it has)."),
    timeout: float | None = typer.Option(None, help="Start no new trial after this many seconds."),
    sampler: str = typer.Option("random", help="random (the protocol's), tpe, or grid (every point once)."),
    pruner: str = typer.Option("median", help="median (stop trials below the median at the same epoch) or none."),
    storage: str | None = typer.Option(None, help="Optuna storage URL, default sqlite:///<out>/study.db; give "
                                                  "processes or machines the same one to share the study."),
    study: str | None = typer.Option(None, "--study", help="Study name (default: <config>-<space> file stems)."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Worker processes on this machine, one trial each."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default: runs/tune/<study>)."),
    seed: int | None = typer.Option(None, help="Sampler seed (each process and restart derives its own)."),
    final: bool = typer.Option(True, "--final/--no-final", help="Train and test the best recipe in <out>/best."),
    keep_checkpoints: bool = typer.Option(False, help="Keep each trial's checkpoints (deleted by default)."),
    heartbeat: int = typer.Option(60, help="Seconds between a running trial's heartbeats; a trial silent for twice "
                                           "that (its process died) is failed and re-queued."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the line saying where the results are."),
) -> None:
    """Search hyperparameters on the val split (Optuna): trials are wsol train runs scored by the val metric."""
    from wsol.configs import find_config
    from wsol.tune.study import TuneSettings, run_study

    summary = run_study(TuneSettings(
        config=find_config(config), space=find_config(space, "--space"), trials=trials,
        overrides=list(overrides or []), timeout=timeout, sampler=sampler,
        pruner=pruner, storage=storage, study=study, jobs=jobs, out=out, seed=seed, final=final,
        keep_checkpoints=keep_checkpoints, heartbeat=heartbeat, quiet=quiet))
    if quiet:
        console.print(f"trials: {summary['trials_csv']}", highlight=False, soft_wrap=True)
    else:
        console.print(f"study {summary['study']}: {summary['completed']} completed, {summary['pruned']} pruned, "
                      f"{summary['failed']} failed; {summary['trials_csv']}", highlight=False)
        if "best_value" in summary:
            params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in summary["best_params"].items())
            console.print(f"best: trial {summary['best_trial']}, val {summary['metric']} {summary['best_value']:.2f} "
                          f"({params}); recipe {summary['best_config']}", highlight=False)
        for spec, entry in summary.get("final", {}).get("test", {}).items():
            if spec != "classification":
                parts = [f"{k} {entry[k]:.2f}" for k in ("MaxBoxAcc", "MaxBoxAccV2", "PxAP") if k in entry]
                console.print(f"best recipe, test {spec}: " + ", ".join(parts), highlight=False)


@app.command()
def localize(
    paths: list[Path] | None = typer.Argument(None, help="Images or folders (searched recursively)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder: results.jsonl, overlays/, index.html."),
    model: str | None = typer.Option(None, help="Model name (default: the embedded EfficientNet-Lite0, offline)."),
    checkpoint: Path | None = typer.Option(None, help="A checkpoint of any format wsol.models.load reads (wsol, "
                                                      "wsolevaluation, CAM Back Again, timm, RepLKNet, SLaK...)."),
    method: str | None = typer.Option(None, help="Activation-map method (any registered one: cam, gradcam, pc1...; "
                                                 "cam+nwc; cam+pas with --metadata). Default: the map of the "
                                                 "checkpoint's training method (acol, spg), else cam."),
    as_published: bool = typer.Option(False, "--as-published", help="cam / pc1 exactly as CAM Back Again's script "
                                      "computes them (raw head weights, their frame test)."),
    large_feature_map: bool | None = typer.Option(None, "--large-feature-map/--no-large-feature-map",
                                                  help="WSOL backbones: the 28 x 28 variant (wsolevaluation "
                                                       "files do not record it)."),
    target: str = typer.Option("top1", help="Class to localize: top1, a class index or a class name."),
    threshold: float = typer.Option(0.2, help="Foreground = map > threshold x reference value."),
    percentile: float = typer.Option(100.0, help="Reference value: this percentile of the map (100 = the max)."),
    boxes: str = typer.Option("largest", help="largest (one box) or all (one per connected region)."),
    image_size: int | None = typer.Option(None, help="Model input size (default: the model's, e.g. 224)."),
    batch_size: int = typer.Option(32, help="Images per batch."),
    device: str = typer.Option("auto", help="auto (CUDA if available), cpu, cuda, cuda:1..."),
    workers: int | None = typer.Option(None, help="DataLoader decoding workers (default: on a GPU, CPUs - 1 up to 4; "
                                            "on the CPU, 0 below 4 CPUs, then 1 per 4)."),
    save_maps: bool = typer.Option(False, "--save-maps", help="Also write maps/<image>.npy at the original size."),
    crf: bool = typer.Option(False, "--crf", help="Refine each map against its image with a dense CRF first."),
    metadata: Path | None = typer.Option(None, help="A WSOL metadata split folder (GT-known score maps mode)."),
    data_root: Path | None = typer.Option(None, help="With --metadata: the images' root folder."),
    scoremaps: Path | None = typer.Option(None, help="With --metadata: write <image_id>.npy 224 x 224 maps here."),
    evaluate_: bool = typer.Option(False, "--evaluate", help="With --metadata: evaluate in the same pass."),
    mask_root: Path | None = typer.Option(None, help="With --metadata --evaluate: mask PNG root (PxAP)."),
    cam_curve_interval: float = typer.Option(0.001, help="With --evaluate: threshold step."),
    shard: str | None = typer.Option(None, "--shard", help="K/N: only shard K (0-based) of N of the inputs, split by "
                                     "a hash of their names (the same on any machine), into --out; then `wsol "
                                     "localize merge OUT_0 ... OUT_N-1 --out OUT`."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, no summary."),
) -> None:
    """Heatmaps, boxes and an HTML report for any images (offline, CPU by default); or score maps of a split.
    `wsol localize merge SHARD_OUT... --out OUT` joins the outputs of --shard runs."""
    import json

    from wsol.files import plain
    from wsol.localize.shards import parse_shard

    if paths and str(paths[0]) == "merge":
        _merge_shards(paths[1:], out, quiet)
        return
    shard_k = parse_shard(shard)
    from wsol.localize.folder import LocalizeOptions, localize_images
    from wsol.localize.pipeline import default_map_method, load_model, preprocessing
    from wsol.localize.split import localize_split

    explicit_method = method is not None or as_published
    method = method or "cam"
    if as_published:
        method = _published(method)

    # options of one mode given in the other would be silently ignored: say so instead
    folder_only = {"--target": target != "top1", "--threshold": threshold != 0.2, "--percentile": percentile != 100,
                   "--boxes": boxes != "largest", "--save-maps": save_maps}
    split_only = {"--data-root": data_root is not None, "--scoremaps": scoremaps is not None,
                  "--evaluate": evaluate_, "--mask-root": mask_root is not None,
                  "--cam-curve-interval": cam_curve_interval != 0.001}
    if metadata is not None:
        if paths:
            raise WSOLError("give either image PATHs or --metadata, not both")
        stray = [flag for flag, given in folder_only.items() if given]
        if mask_root is not None and not evaluate_:
            raise WSOLError("--mask-root is read only with --evaluate (the masks give PxAP)")
        if stray:
            why = {"--save-maps": "the split's maps are written with --scoremaps DIR",
                   "--target": "the maps are GT-known (the split's labels)",
                   "--boxes": "the protocol scores the largest box and all boxes itself"}.get(
                stray[0], "the protocol sweeps every threshold (for PaS: --method cam+pas)")
            raise WSOLError(f"{stray[0]} has no effect with --metadata: {why}")
        if data_root is None:
            raise WSOLError("--metadata needs --data-root (the folder the image ids are relative to)")
        if out is not None:
            from wsol.files import check_output_path

            check_output_path(out, "--out", folder=True)
        net = load_model(model, checkpoint, large_feature_map=large_feature_map)
        method = method if explicit_method else default_map_method(net)
        summary = localize_split(metadata, data_root, net, method=method, scoremap_dir=scoremaps,
                                 evaluate=evaluate_, mask_root=mask_root, batch_size=batch_size, device=device,
                                 workers=workers, image_size=image_size or preprocessing(net)["size"],
                                 cam_curve_interval=cam_curve_interval, crf=crf,
                                 checkpoint=str(checkpoint) if checkpoint else None, quiet=quiet,
                                 shard=shard_k, shard_dir=out if shard_k is not None else None)
        if summary.metrics is not None:
            text = json.dumps(plain(summary.metrics), indent=1)
            typer.echo(text)
            if out is not None:
                from wsol.files import write_text

                write_text(out / "metrics.json", text + "\n")
        if not quiet:
            if checkpoint is None and model is None:
                summary.notes.append("no --checkpoint: these are the embedded ImageNet model's maps")
            for note in summary.notes:
                console.print(f"note: {note}", highlight=False, soft_wrap=True)
            console.print(f"{summary.processed} score maps in {summary.seconds:.1f}s "
                          f"({summary.images_per_second:.1f} images/s), {summary.resumed} already there"
                          + (f", {len(summary.skipped)} unreadable" if summary.skipped else ""), highlight=False)
            for path, reason in summary.skipped:
                console.print(f"  skipped {path}: {reason}", highlight=False, soft_wrap=True)
        if summary.total == 0 and shard_k is None:
            raise typer.Exit(1)
        return
    stray = [flag for flag, given in split_only.items() if given]
    if stray:
        raise WSOLError(f"{stray[0]} works only with --metadata SPLIT_DIR")
    if not paths:
        raise WSOLError("no PATH given: wsol localize PATH... --out DIR (or --metadata SPLIT_DIR)")
    if out is None:
        raise WSOLError("--out DIR is required")
    options = LocalizeOptions(method=method, target=target, threshold=threshold, percentile=percentile, boxes=boxes,
                              image_size=image_size, batch_size=batch_size, device=device, save_maps=save_maps,
                              workers=workers, crf=crf)
    options.check()  # wrong options fail before the model loads
    net = load_model(model, checkpoint, large_feature_map=large_feature_map)
    if not explicit_method:
        options.method = default_map_method(net)
    summary = localize_images(paths, out, net, options, quiet=quiet,
                              checkpoint=str(checkpoint) if checkpoint else None, shard=shard_k)
    if not quiet:
        for note in summary.notes:
            console.print(f"note: {note}", highlight=False, soft_wrap=True)
        console.print(f"{summary.processed} images in {summary.seconds:.1f}s ({summary.images_per_second:.1f} "
                      f"images/s), {summary.resumed} already done; report: {out / 'index.html'}", highlight=False)
        for path, reason in summary.skipped:
            console.print(f"  skipped {path}: {reason}", highlight=False, soft_wrap=True)
        for path in summary.ignored:
            console.print(f"  ignored {path}: not an image file", highlight=False, soft_wrap=True)
    if summary.total == 0 and (shard_k is None or summary.skipped):
        console.print("[bold red]error:[/] no image could be processed"  # shown with --quiet too
                      + (f" ({len(summary.skipped)} unreadable, {len(summary.ignored)} not images)" if quiet else ""),
                      highlight=False)
        raise typer.Exit(1)
    if quiet:  # -q: only where the results are
        report = out / "index.html"
        console.print(f"report: {report}" if report.is_file() else f"results: {out / 'results.jsonl'}",
                      highlight=False, soft_wrap=True)


def _merge_shards(outs: list[Path], out: Path | None, quiet: bool) -> None:
    """`wsol localize merge OUT_0 ... OUT_N-1 --out OUT`."""
    import json

    from wsol.files import plain
    from wsol.localize.shards import merge

    if out is None:
        raise WSOLError("merge needs --out DIR (a new folder for the joined results)")
    summary = merge(outs, out)
    if "metrics" in summary:
        typer.echo(json.dumps(plain(summary["metrics"]), indent=1))
    if not quiet:
        what = (f"{summary['images']} images" if summary["mode"] == "images"
                else f"{summary['images']} images, {summary['scoremaps']} score maps")
        console.print(f"merged {len(outs)} shards into {out}: {what}", highlight=False)


def _published(method: str) -> str:
    """``--as-published``: the ``+published`` variant of cam / pc1 (before any +pas)."""
    from wsol.maps.variants import MapVariant

    base, _, rest = method.partition("+")
    spec = "+".join([base, "published"] + ([rest] if rest else []))
    MapVariant.parse(spec)  # one line for a method without a published procedure
    return spec


@app.command()
def inspect(
    checkpoint: Path = typer.Argument(..., help="A checkpoint file of any format wsol reads."),
    model: str | None = typer.Option(None, help="Architecture override (for files that do not name it)."),
    large_feature_map: bool | None = typer.Option(None, "--large-feature-map/--no-large-feature-map",
                                                  help="WSOL backbones: the 28 x 28 variant."),
) -> None:
    """What a checkpoint holds: format, architecture, classes, head, feature map, preprocessing."""
    from wsol.models.load import describe, load

    net = load(checkpoint, model=model, large_feature_map=large_feature_map)
    for line in describe(net):
        typer.echo(line)


from wsol.fcam.cli import register as _register_fcam  # noqa: E402  (wsol fcam train | localize)

_register_fcam(app)

from wsol.report.compare_cli import register as _register_report  # noqa: E402  (wsol report)

_register_report(app)

from wsol.analysis.cli import analyze_app as _analyze_app  # noqa: E402  (wsol analyze erf | features)

app.add_typer(_analyze_app, name="analyze")
