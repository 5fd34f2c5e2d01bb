"""Figures of the analyses (matplotlib, Agg backend), written atomically as PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wsol.files import replacing
from wsol.report.plots import agg_pyplot

if TYPE_CHECKING:
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure

    from wsol.analysis.erf import ERFResult
    from wsol.analysis.features import FeatureAnalysis


def _save(fig: Figure, path: str | Path, dpi: int = 100) -> None:
    try:
        with replacing(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        agg_pyplot().close(fig)


def _ratio_text(result: ERFResult) -> str:
    parts = []
    for t, entry in result.ratios.items():
        pct = f"{float(t) * 100:g}%"
        parts.append(f"r({pct}) = " + ("n/a" if entry is None else f"{entry['area_ratio'] * 100:.2f}%"))
    return ", ".join(parts[:2]) + "\n" + ", ".join(parts[2:])


def _erf_colours() -> Colormap:
    """The upper half of RdYlGn (yellow -> dark green): how the authors' seaborn heat map, centred at 0, shows
    a map in [0, 1]."""
    from matplotlib.colors import ListedColormap

    return ListedColormap(agg_pyplot().get_cmap("RdYlGn")(np.linspace(0.5, 1.0, 256)), name="erf")


def erf_figure(results: Sequence[ERFResult], path: str | Path, title: str = "") -> None:
    """The log-scaled ERF of each model side by side (shared colour scale [0, 1]), its area ratios below."""
    n = len(results)
    colours = _erf_colours()
    fig, axes = agg_pyplot().subplots(1, n, figsize=(4.2 * n + 1.0, 5.0), squeeze=False, layout="constrained")
    image = None
    for ax, result in zip(axes[0], results):
        image = ax.imshow(result.scaled, cmap=colours, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(result.label, fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([])
        h, w = result.scaled.shape
        ax.set_xlabel(f"{_ratio_text(result)}\n{w} x {h} input, {result.num_images} images", fontsize=8.5)
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label="log10(1 + contribution) / max")
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)


def features_figure(analysis: FeatureAnalysis, path: str | Path, title: str = "") -> None:
    """Four panels: CAM histograms inside / outside the GT; the channel-coverage curve; per-class bars of the
    CAM mass in the GT, the evidence in the GT and the PC1 explained variance; PC1 EVR against the CAM mass."""
    split = analysis.split()
    per_class = analysis.per_class()
    edges = np.linspace(0, 1, analysis.bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    fig, axes = agg_pyplot().subplots(2, 2, figsize=(12, 8.5))

    ax = axes[0, 0]
    for key, label, colour in (("hist_in", "inside GT", "tab:green"), ("hist_out", "outside GT", "tab:red")):
        counts = np.asarray(split[key], dtype=np.float64)
        share = counts / counts.sum() if counts.sum() else counts
        ax.bar(centres, share, width=1 / analysis.bins, alpha=0.5, color=colour, label=label, edgecolor=colour)
    ax.set(xlabel="CAM score (224 x 224, min-max normalised)", ylabel="share of pixels",
           title="CAM scores inside and outside the GT")
    ax.legend()

    ax = axes[0, 1]
    curve = split["channel_curve"]
    coverage = float(analysis.settings.get("coverage", 0.9))
    if curve:
        ks = np.arange(1, len(curve) + 1)
        ax.plot(ks, curve, color="tab:blue")
        ax.set_xscale("log")
    ax.axhline(coverage, color="grey", ls="--", lw=1)
    med = split["channels_90"]["median"]
    ax.set(xlabel="channels (by decreasing contribution)", ylabel="share of the positive contributions",
           ylim=(0, 1.02),
           title=f"channels for {coverage:.0%} of the CAM: median {med if med is None else f'{med:g}'}"
                 f" of {analysis.settings.get('feature_channels')}")
    ax.grid(alpha=0.3)

    ax = axes[1, 0]
    keys = (("cam_mass_in_gt", "CAM mass in GT"), ("evidence_in_gt", "evidence in GT"), ("pc1_evr", "PC1 EVR"),
            ("gt_area", "GT area"))
    groups = [("all", split)] + [(v["name"], v) for v in per_class.values()]
    x = np.arange(len(groups))
    width = 0.8 / len(keys)
    for j, (key, label) in enumerate(keys):
        vals = [g[key]["mean"] if g[key]["mean"] is not None else np.nan for _, g in groups]
        ax.bar(x + (j - (len(keys) - 1) / 2) * width, vals, width=width, label=label)
    ax.set_xticks(x, [name for name, _ in groups], rotation=30 if len(groups) > 4 else 0, ha="right"
                  if len(groups) > 4 else "center", fontsize=8)
    ax.set(ylim=(0, 1), ylabel="mean over images", title="per class")
    ax.legend(fontsize=8, ncols=2)

    ax = axes[1, 1]
    evr = [s.values["pc1_evr"] for s in analysis.stats]
    mass = [s.values["cam_mass_in_gt"] for s in analysis.stats]
    colour = [s.values["pc1_cam_pearson"] for s in analysis.stats]
    points = ax.scatter(evr, mass, c=colour, cmap="coolwarm_r", vmin=-1, vmax=1, s=14)
    fig.colorbar(points, ax=ax, label="Pearson(PC1, CAM)")
    ax.set(xlabel="PC1 explained-variance ratio", ylabel="CAM mass in GT", xlim=(0, 1), ylim=(0, 1),
           title="per image")
    ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
