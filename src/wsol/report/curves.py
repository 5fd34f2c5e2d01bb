"""Plots of evaluation curves: BoxAcc against the threshold, and the pixel precision-recall curve."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from wsol.errors import WSOLError
from wsol.files import replacing
from wsol.report.plots import agg_pyplot

if TYPE_CHECKING:
    from wsol.metrics import BoxAccuracy, BoxCounts, PixelAP, PixelCounts


def plot_format(path: str | Path) -> str:
    """The image format of ``path`` by its suffix (png when it has none); one line for an unknown one."""
    from matplotlib.backend_bases import FigureCanvasBase

    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    supported = FigureCanvasBase.get_supported_filetypes()
    if fmt not in supported:
        raise WSOLError(f"--plot {path}: cannot write .{fmt} (use one of {', '.join(sorted(supported))})")
    return fmt


def plot_curves(path: str | Path, boxes: BoxAccuracy | BoxCounts | None = None,
                masks: PixelAP | PixelCounts | None = None,
                title: str = "") -> None:
    """One figure with a panel per available metric, in the format of the path's suffix; written atomically."""
    fmt = plot_format(path)
    plt = agg_pyplot()
    panels = [p for p in (boxes, masks) if p is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, metric in zip(axes[0], panels):
        if hasattr(metric, "iou_thresholds"):  # BoxAccuracy or BoxCounts
            curves = metric.curves()
            for row, iou in enumerate(metric.iou_thresholds):
                ax.plot(metric.thresholds, curves["all"][row], label=f"all contours, IoU {iou}")
            ax.plot(metric.thresholds, curves["largest"], "k--", label="largest contour, IoU 50 (MaxBoxAcc)")
            ax.set(xlabel="score-map threshold", ylabel="BoxAcc (%)", ylim=(0, 100),
                   title=f"BoxAcc (interval {metric.cam_curve_interval:g})")
        else:
            curves = metric.curves()
            ax.plot(curves["recall"], curves["precision"])
            ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
                   title=f"pixel precision-recall, PxAP {metric.compute()['PxAP']:.2f}")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8) if hasattr(metric, "iou_thresholds") else None
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        with replacing(path) as tmp:
            fig.savefig(tmp, dpi=100, format=fmt)
    finally:
        plt.close(fig)
