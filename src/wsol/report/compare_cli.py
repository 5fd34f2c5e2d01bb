"""``wsol report``: the command (registered by :mod:`wsol.cli`; the work is in :mod:`wsol.report.compare`)."""

from __future__ import annotations

from pathlib import Path

import typer

from wsol.errors import WSOLError


def register(app: typer.Typer) -> None:
    """Add ``wsol report`` to ``app``."""

    @app.command()
    def report(
        metadata: Path = typer.Option(..., help="A WSOL metadata split folder (image_ids.txt, localization.txt...)."),
        data_root: Path = typer.Option(..., help="The images' root folder (the ids are relative to it)."),
        out: Path = typer.Option(..., "--out", "-o", help="The page: DIR/index.html (images, plots, report.json "
                                                         "and computed score maps go in DIR)."),
        checkpoint: list[Path] | None = typer.Option(None, help="A checkpoint (repeat for several models); any "
                                                                "format wsol.models.load reads."),
        model: str | None = typer.Option(None, help="Without --checkpoint: model name(s), comma-separated "
                                                    "(default: the embedded model). With it: the architecture."),
        methods: str | None = typer.Option(None, help="Map methods, comma-separated: cam, cam+nwc, cam+pas, pc1, "
                                                      "pc1+published, gradcam, acol... (default: cam, cam+pas, "
                                                      "gradcam; a checkpoint's own map for ACoL / SPG)."),
        mask_root: Path | None = typer.Option(None, help="Root of the mask PNGs (PxAP, peak IoU)."),
        scoremaps: list[Path] | None = typer.Option(None, help="Folders of earlier `wsol localize --metadata "
                                                               "--scoremaps` runs (or folders holding some) whose "
                                                               "maps are reused when their settings match."),
        gallery: int = typer.Option(40, help="Images in the gallery (half of them those the methods disagree on "
                                             "most)."),
        image_size: int | None = typer.Option(None, help="Model input size (default: the model's)."),
        batch_size: int = typer.Option(32, help="Images per batch."),
        device: str = typer.Option("auto", help="auto (CUDA if available), cpu, cuda, cuda:1..."),
        workers: int | None = typer.Option(None, help="DataLoader decoding workers."),
        cam_curve_interval: float = typer.Option(0.001, help="Threshold step of the metrics."),
        iou: str = typer.Option("30 50 70", help="IoU criteria (%) for MaxBoxAccV2."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress, no notes."),
    ) -> None:
        """Compare map methods of one or more models on a split: metrics, curves, per-class, a gallery (HTML)."""
        from rich.console import Console

        from wsol.files import check_output_path
        from wsol.maps.variants import MapVariant
        from wsol.report.compare import ModelSpec, compare

        console = Console(stderr=True)
        try:
            iou_thresholds = tuple(int(v) for v in iou.replace(",", " ").split())
        except ValueError:
            raise WSOLError(f"--iou: expected integers such as '30 50 70', got {iou!r}") from None
        method_list = [m.strip() for m in methods.split(",") if m.strip()] if methods is not None else None
        for m in method_list or []:
            MapVariant.parse(m)  # before any model loads
        if method_list is not None and not method_list:
            raise WSOLError("--methods: no method given")
        check_output_path(out, "--out", folder=out.is_dir() or not out.suffix)
        from wsol.localize.pipeline import load_model

        specs = []
        if checkpoint:
            for path in checkpoint:
                specs.append(ModelSpec(path.stem, load_model(model, path), str(path)))
        else:
            for name in [n.strip() for n in (model or "").split(",") if n.strip()] or [None]:
                net = load_model(name, None)
                specs.append(ModelSpec(name or str(getattr(net, "name", "model")), net, None))

        def log(text: str) -> None:
            if not quiet:
                console.print(f"note: {text}", highlight=False, soft_wrap=True)

        record = compare(metadata, data_root, specs, method_list, out, mask_root=mask_root, reuse=scoremaps or (),
                         image_size=image_size, batch_size=batch_size, device=device, workers=workers,
                         cam_curve_interval=cam_curve_interval, iou_thresholds=iou_thresholds, gallery=gallery,
                         quiet=quiet, log=log)
        for row in record["methods"]:
            m = row["metrics"]
            parts = [f"{k} {m[k]:.2f}" for k in ("MaxBoxAcc", "MaxBoxAccV2", "top1_loc", "PxAP") if k in m]
            typer.echo(f"{row['key']}: " + ", ".join(parts) + ("  (reused maps)" if row["reused"] else ""))
        console.print(f"report: {record['page']}", highlight=False, soft_wrap=True)
