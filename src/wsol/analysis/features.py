"""What the CAM feature map F holds on a WSOL split, per image, for the target (GT) class k.

CAM Back Again's question is why one backbone localizes better than another: a larger receptive field, or
better feature maps? This module measures the feature maps. With ``G_c = W[k, c] F_c`` the class-weighted
channels (``W`` the folded class weights, so that ``CAM = sum_c G_c`` is exactly the CAM method's map):

(a) ``cam_mass_in_gt``: the share of the CAM's positive mass ``relu(CAM)`` that lies inside the GT (boxes or
    mask), and ``evidence_in_gt``: the same for the class evidence before channels cancel each other,
    ``sum_c relu(G_c)``. The GT is brought to F's grid by area (a cell half covered by the GT counts half),
    so a share is exact for the map as the nearest-neighbour upsampling of F sees it; the ignore region of a
    mask counts neither inside nor outside. ``gt_area`` (the GT's share of the image) is what a uniform map
    would score.
(b) ``pc1_evr``: the explained-variance ratio of PC1, the first principal component of the class-weighted
    channels exactly as :mod:`wsol.cams.pc1` prepares them (each channel min-max normalised, centred over
    channels); ``pc1_cam_pearson``, ``pc1_cam_box_iou`` and ``pc1_cam_mask_iou``: the agreement of the PC1
    map with the CAM after the protocol's bicubic resize to 224 x 224 and min-max normalisation (Pearson
    correlation over pixels; IoU of their largest boxes, and of their foregrounds, at threshold 0.2). With
    GT boxes, ``cam_box_iou_gt`` and ``pc1_box_iou_gt``: each map's largest box at 0.2 against the best GT box.
(c) histograms of the CAM score map (the same 224 x 224 normalised map) inside and outside the GT.
(d) ``channels_90``: how many channels carry the CAM. Channel c contributes ``sum of G_c over the pixels
    where CAM > 0`` (the contributions add up to the CAM's positive mass); ``channels_90`` is the fewest
    channels, by decreasing contribution, whose contributions reach 90 % of the sum of the positive ones
    (which is the positive mass itself unless some channels pull the CAM down: ``cam_cancelled`` is the
    share of the positive contributions such channels cancel). ``channels_90_fraction`` divides by C.

Per-image values are aggregated per class and over the split (mean, median, std; histograms summed).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from wsol.errors import WSOLError

EVAL_SIZE = 224
HIST_BINS = 20
COVERAGE = 0.9
MAP_THRESHOLD = 0.2
SCALARS = ("gt_area", "cam_mass_in_gt", "evidence_in_gt", "pc1_evr", "pc1_cam_pearson", "pc1_cam_box_iou",
           "pc1_cam_mask_iou", "cam_box_iou_gt", "pc1_box_iou_gt", "channels_90", "channels_90_fraction",
           "cam_cancelled", "cam_mean_in_gt", "cam_mean_out_gt")


# ------------------------------------------------------------------------------------------ per-image math
def area_weights(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in): the share of output cell i (``[i n_in / n_out, (i + 1) n_in / n_out)``) that input pixel
    j (``[j, j + 1)``) covers; each row sums to 1. Exact area averaging, in float64."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo = np.maximum(edges[:-1, None], np.arange(n_in)[None, :])
    hi = np.minimum(edges[1:, None], np.arange(1, n_in + 1)[None, :])
    return np.clip(hi - lo, 0, None) / (n_in / n_out)


def gt_coverage(foreground: np.ndarray, ignore: np.ndarray | None, shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """The fraction of each cell of an (h, w) grid covered by the GT (``inside``) and by neither the GT nor
    the ignore region (``outside``): exact area averages of the masks (the grid spans the whole image)."""
    h, w = shape
    fg = np.asarray(foreground, dtype=np.float64)
    ign = np.zeros_like(fg) if ignore is None else np.asarray(ignore, dtype=np.float64) * (1 - fg)
    rows, cols = area_weights(h, fg.shape[0]), area_weights(w, fg.shape[1])
    inside = rows @ fg @ cols.T
    outside = rows @ (1 - fg - ign) @ cols.T
    return np.clip(inside, 0, 1), np.clip(outside, 0, 1)


def boxes_mask(boxes: np.ndarray, size: int = EVAL_SIZE) -> np.ndarray:
    """The union of boxes (n, 4) ``x0, y0, x1, y1`` with inclusive ends (the protocol's IoU convention)."""
    mask = np.zeros((size, size), dtype=bool)
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.int64).reshape(-1, 4):
        mask[max(y0, 0):max(y1 + 1, 0), max(x0, 0):max(x1 + 1, 0)] = True
    return mask


def _share(mass: Tensor, inside: Tensor, outside: Tensor) -> Tensor:
    """(B,) ``sum(mass * inside) / sum(mass * (inside + outside))``; NaN where the denominator is 0."""
    num = (mass * inside).flatten(1).sum(1)
    den = (mass * (inside + outside)).flatten(1).sum(1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(den, math.nan))


def pc1_matrix(f: Tensor, w: Tensor, eps: float = 1e-12) -> Tensor:
    """(B, C, hw): the class-weighted channels min-max normalised and centred over channels, as
    :func:`wsol.cams.pc1.first_component` prepares them before its SVD."""
    b, c = f.shape[:2]
    x = (f * w.to(f.dtype).view(b, c, 1, 1)).flatten(2).double()
    mn = x.amin(dim=2, keepdim=True)
    rng = x.amax(dim=2, keepdim=True) - mn
    x = torch.where(rng > eps, (x - mn) / rng.clamp_min(eps), torch.zeros_like(x))
    return x - x.mean(dim=1, keepdim=True)


def explained_variance_ratio(f: Tensor, w: Tensor) -> Tensor:
    """(B,) PC1's share of the total variance (first squared singular value over their sum); NaN when the
    normalised channels do not vary at all."""
    s = torch.linalg.svdvals(pc1_matrix(f, w))
    power = s.square()
    total = power.sum(1)
    return torch.where(total > 0, power[:, 0] / total.clamp_min(1e-300), torch.full_like(total, math.nan))


def channels_to_cover(g: Tensor, coverage: float = COVERAGE) -> tuple[Tensor, Tensor, Tensor]:
    """From class-weighted channels ``g`` (B, C, h, w), each channel's contribution to the CAM where the CAM is
    positive (``sum of g_c there``; they add up to the CAM's positive mass), and with ``P`` the sum of the
    positive contributions:

    - ``count`` (B,): the fewest channels, by decreasing contribution, that reach ``coverage`` of P;
    - ``curve`` (B, C): their cumulative share of P;
    - ``cancelled`` (B,): ``1 - positive mass / P``, the share of that evidence cancelled by channels that
      pull the CAM down (0 when no channel does: then P is the CAM's positive mass itself).

    All NaN where the CAM has no positive pixel."""
    cam = g.sum(1)
    mass = cam.clamp_min(0).flatten(1).sum(1)
    contrib = (g * (cam > 0).unsqueeze(1)).flatten(2).sum(2).clamp_min(0)
    total = contrib.sum(1)
    ok = total > 0
    cum = contrib.sort(dim=1, descending=True).values.cumsum(1) / total.clamp_min(1e-300).unsqueeze(1)
    count = (cum >= coverage * (1 - 1e-9)).double().argmax(1) + 1
    nan = torch.full_like(total, math.nan)
    count = torch.where(ok, count.double(), nan)
    curve = torch.where(ok.unsqueeze(1), cum, torch.full_like(cum, math.nan))
    cancelled = torch.where(ok, 1 - mass / total.clamp_min(1e-300), nan)
    return count, curve, cancelled


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a.ravel().astype(np.float64) - a.mean()
    b = b.ravel().astype(np.float64) - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else math.nan


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int(np.logical_or(a, b).sum())
    return int(np.logical_and(a, b).sum()) / union if union else math.nan


def _histogram(values: np.ndarray, bins: int) -> np.ndarray:
    idx = np.minimum((values * bins).astype(np.int64), bins - 1)
    return np.bincount(idx, minlength=bins).astype(np.int64)


@dataclass
class ImageStats:
    """One image's numbers (:data:`SCALARS`), its CAM histograms and its channel-coverage curve."""

    values: dict[str, float]
    hist_in: np.ndarray
    hist_out: np.ndarray
    curve: np.ndarray


def batch_stats(f: Tensor, w: Tensor, foregrounds: Sequence[np.ndarray], ignores: Sequence[np.ndarray | None],
                gt_boxes: Sequence[np.ndarray | None] | None = None, *, coverage: float = COVERAGE,
                bins: int = HIST_BINS) -> list[ImageStats]:
    """Per-image analysis of a batch: F (B, C, h, w), the target's folded weights ``w`` (B, C), GT masks at
    EVAL_SIZE x EVAL_SIZE (and ignore masks), optionally the GT boxes at EVAL_SIZE (for the box IoUs)."""
    from wsol.cams.pc1 import pc1_maps
    from wsol.maps.boxes import box_iou, boxes_from_map, mask_from_map
    from wsol.maps.normalize import to_score_maps

    if f.ndim != 4 or w.shape != f.shape[:2]:
        raise WSOLError(f"features: expected F (B, C, h, w) and W (B, C), got {tuple(f.shape)} and {tuple(w.shape)}")
    b, c, h, wd = f.shape
    f64 = f.detach().double()
    g = f64 * w.detach().double().view(b, c, 1, 1)
    cam = g.sum(1)
    cov = [gt_coverage(fg, ign, (h, wd)) for fg, ign in zip(foregrounds, ignores)]
    inside = torch.tensor(np.stack([c_[0] for c_ in cov]), dtype=torch.float64, device=f.device)
    outside = torch.tensor(np.stack([c_[1] for c_ in cov]), dtype=torch.float64, device=f.device)
    cam_share = _share(cam.clamp_min(0), inside, outside)
    evidence_share = _share(g.clamp_min(0).sum(1), inside, outside)
    evr = explained_variance_ratio(f64, w.detach().double())
    count, curves, cancelled = channels_to_cover(g, coverage)
    pc1 = pc1_maps(f.detach().float(), w.detach().float())
    cam_scores = to_score_maps(cam.float(), (EVAL_SIZE, EVAL_SIZE))
    pc1_scores = to_score_maps(pc1, (EVAL_SIZE, EVAL_SIZE))
    cam_share, evidence_share, evr, count, cancelled = (
        t.cpu().numpy() for t in (cam_share, evidence_share, evr, count, cancelled))
    curves = curves.cpu().numpy()
    out = []
    for i in range(b):
        fg = np.asarray(foregrounds[i], dtype=bool)
        ign = np.zeros_like(fg) if ignores[i] is None else np.asarray(ignores[i], dtype=bool) & ~fg
        background = ~fg & ~ign
        cs, ps = cam_scores[i], pc1_scores[i]
        cam_box = boxes_from_map(cs, MAP_THRESHOLD, components="largest")
        pc1_box = boxes_from_map(ps, MAP_THRESHOLD, components="largest")
        values = {
            "gt_area": float(fg.mean()),
            "cam_mass_in_gt": float(cam_share[i]),
            "evidence_in_gt": float(evidence_share[i]),
            "pc1_evr": float(evr[i]),
            "pc1_cam_pearson": _pearson(cs, ps),
            "pc1_cam_box_iou": float(box_iou(cam_box, pc1_box)[0, 0]),
            "pc1_cam_mask_iou": _mask_iou(mask_from_map(cs, MAP_THRESHOLD), mask_from_map(ps, MAP_THRESHOLD)),
            "cam_box_iou_gt": math.nan,
            "pc1_box_iou_gt": math.nan,
            "channels_90": float(count[i]),
            "channels_90_fraction": float(count[i]) / c,
            "cam_cancelled": float(cancelled[i]),
            "cam_mean_in_gt": float(cs[fg].mean()) if fg.any() else math.nan,
            "cam_mean_out_gt": float(cs[background].mean()) if background.any() else math.nan,
        }
        boxes = None if gt_boxes is None else gt_boxes[i]
        if boxes is not None and len(boxes):
            values["cam_box_iou_gt"] = float(box_iou(cam_box, boxes).max())
            values["pc1_box_iou_gt"] = float(box_iou(pc1_box, boxes).max())
        out.append(ImageStats(values, _histogram(cs[fg], bins), _histogram(cs[background], bins), curves[i]))
    return out


# ------------------------------------------------------------------------------------------ aggregation
def _summary(values: Sequence[float]) -> dict[str, float | int | None]:
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return {"mean": None, "median": None, "std": None, "n": 0}
    return {"mean": float(arr.mean()), "median": float(np.median(arr)), "std": float(arr.std()), "n": int(arr.size)}


def _mean_curve(curves: Sequence[np.ndarray]) -> list[float | None]:
    good = [c for c in curves if np.isfinite(c).all()]
    if not good:
        return []
    return [float(v) for v in np.mean(np.stack(good), axis=0)]


@dataclass
class FeatureAnalysis:
    """Per-image rows and their aggregation per class and over the split."""

    image_ids: list[str]
    labels: list[int]
    stats: list[ImageStats]
    class_names: list[str] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    bins: int = HIST_BINS

    def class_name(self, k: int) -> str:
        names = self.class_names
        return names[k] if names is not None and 0 <= k < len(names) else f"class {k}"

    def _group(self, members: Sequence[int]) -> dict[str, Any]:
        hist_in = np.sum([self.stats[i].hist_in for i in members], axis=0) if members else np.zeros(self.bins)
        hist_out = np.sum([self.stats[i].hist_out for i in members], axis=0) if members else np.zeros(self.bins)
        return {"num_images": len(members),
                **{key: _summary([self.stats[i].values[key] for i in members]) for key in SCALARS},
                "hist_in": [int(v) for v in hist_in], "hist_out": [int(v) for v in hist_out],
                "channel_curve": _mean_curve([self.stats[i].curve for i in members])}

    def per_class(self) -> dict[int, dict[str, Any]]:
        groups: dict[int, list[int]] = {}
        for i, k in enumerate(self.labels):
            groups.setdefault(k, []).append(i)
        return {k: {"name": self.class_name(k), **self._group(groups[k])} for k in sorted(groups)}

    def split(self) -> dict[str, Any]:
        return self._group(list(range(len(self.stats))))

    def record(self) -> dict[str, Any]:
        """The JSON record: settings, the split's aggregate, per-class aggregates (keyed by class index)."""
        return {"settings": self.settings, "hist_edges": np.linspace(0, 1, self.bins + 1).tolist(),
                "split": self.split(), "per_class": {str(k): v for k, v in self.per_class().items()}}

    def per_image_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["image_id", "label", "class", *SCALARS])
        for image_id, k, s in zip(self.image_ids, self.labels, self.stats):
            writer.writerow([image_id, k, self.class_name(k), *(_fmt(s.values[key]) for key in SCALARS)])
        return buffer.getvalue()

    def per_class_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["label", "class", "num_images", *(f"{key}_mean" for key in SCALARS)])
        rows = [(str(k), v) for k, v in self.per_class().items()] + [("all", {"name": "(split)", **self.split()})]
        for k, v in rows:
            writer.writerow([k, v["name"], v["num_images"], *(_fmt(v[key]["mean"]) for key in SCALARS)])
        return buffer.getvalue()


def _fmt(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.6g}"


# ------------------------------------------------------------------------------------------ the split
def analyze_split(split_dir: str | Path, data_root: str | Path, model: nn.Module, *,
                  mask_root: str | Path | None = None, gt: str = "auto", batch_size: int = 32,
                  device: str = "auto", workers: int | None = None, image_size: int | None = None,
                  num_images: int | None = None, coverage: float = COVERAGE, bins: int = HIST_BINS,
                  on_batch: Any = None) -> FeatureAnalysis:
    """Analyse the CAM feature map of ``model`` on a WSOL split (GT-known: each image's own label).

    ``gt``: ``boxes``, ``masks`` (needs ``mask_root``) or ``auto`` (masks when ``mask_root`` is given and the
    split has them, else boxes). Images are preprocessed as the protocol does (``wsol localize --metadata``):
    the whole image resized to a square with PIL bilinear, the model's mean and std."""
    from wsol.analysis.inputs import classifier_of
    from wsol.cams.base import preserved_state, target_weights
    from wsol.data.datasets import ImageSource, check_data_root, collate_images, default_workers
    from wsol.data.metadata import read_class_names
    from wsol.data.transforms import normalize_batch
    from wsol.localize.pipeline import check_batching, open_split, preprocessing, resolve_device

    if gt not in ("auto", "boxes", "masks"):
        raise WSOLError(f"--gt must be auto, boxes or masks, got {gt!r}")
    if num_images is not None and num_images < 1:
        raise WSOLError(f"--num-images must be >= 1, got {num_images}")
    if not 0 < coverage <= 1:
        raise WSOLError(f"--coverage must lie in (0, 1], got {coverage}")
    if bins < 1:
        raise WSOLError(f"--bins must be >= 1, got {bins}")
    check_batching(batch_size, workers)
    dev = resolve_device(device)
    meta, root = open_split(split_dir, data_root, mask_root)
    use_masks = gt == "masks" or (gt == "auto" and mask_root is not None and meta.has_masks)
    if use_masks:
        if not meta.has_masks:
            raise WSOLError(f"{meta.split_dir}: this split has no masks (use --gt boxes)")
        if mask_root is None:
            raise WSOLError("--gt masks needs --mask-root (the folder the mask paths are relative to)")
    elif not meta.has_boxes:
        raise WSOLError(f"{meta.split_dir}: this split has no boxes; give --mask-root to use its masks")
    clf = classifier_of(model)
    k = int(clf.num_classes)
    bad = [i for i in meta.image_ids if meta.labels[i] >= k]
    if bad:
        raise WSOLError(f"{meta.split_dir}: label {meta.labels[bad[0]]} of {bad[0]!r} >= the model's {k} classes")
    ids = list(meta.image_ids)[:num_images]
    check_data_root(meta, root)
    boxes = meta.resized_boxes(EVAL_SIZE) if meta.has_boxes else None
    prep = preprocessing(clf)
    size = image_size or prep["size"]
    dataset = ImageSource([root / i for i in ids], size, "bilinear", display_size=0, exact=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_images,
                                         num_workers=default_workers(dev) if workers is None else workers)
    # the split's own names first: a 1000-class model on another dataset carries ImageNet's
    names = read_class_names(Path(split_dir).parent / "class_names.txt") or getattr(clf, "class_names", None)
    kept_ids: list[str] = []
    stats: list[ImageStats] = []
    clf = clf.to(dev)
    with preserved_state(clf, eval_mode=True), torch.no_grad():
        for batch in loader:
            if batch["errors"]:
                index, reason = batch["errors"][0]
                raise WSOLError(f"{root / ids[index]}: unreadable ({reason})")
            batch_ids = [ids[i] for i in batch["indices"]]
            x = normalize_batch(batch["images"].to(dev), prep["mean"], prep["std"])
            f = clf.features(x)
            targets = torch.tensor([meta.labels[i] for i in batch_ids], dtype=torch.long, device=dev)
            w, _ = target_weights(clf, f, targets)
            if use_masks:
                pairs = [meta.load_mask(i, mask_root, EVAL_SIZE) for i in batch_ids]
                fgs, igns = [p[0] for p in pairs], [p[1] for p in pairs]
            else:
                fgs, igns = [boxes_mask(boxes[i]) for i in batch_ids], [None] * len(batch_ids)
            gt_boxes = [boxes[i] for i in batch_ids] if boxes is not None else None
            # the per-image work (float64, SVDs of C x hw, OpenCV) on the CPU: small next to the forward pass
            stats.extend(batch_stats(f.cpu(), w.cpu(), fgs, igns, gt_boxes, coverage=coverage, bins=bins))
            kept_ids.extend(batch_ids)
            if on_batch is not None:
                on_batch(len(batch_ids))
    settings = {"split": str(meta.split_dir), "data_root": str(root), "gt": "masks" if use_masks else "boxes",
                "model": getattr(clf, "name", type(clf).__name__), "image_size": size,
                "num_images": len(kept_ids), "coverage": coverage, "map_threshold": MAP_THRESHOLD,
                "feature_channels": int(f.shape[1]) if stats else None,
                "feature_map": list(f.shape[2:]) if stats else None}
    return FeatureAnalysis(kept_ids, [meta.labels[i] for i in kept_ids], stats, names, settings, bins)
