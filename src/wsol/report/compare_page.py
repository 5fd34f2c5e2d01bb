"""The page of ``wsol report``: tables, curves and a gallery in one self-contained HTML file.

Everything is local: the plots and thumbnails are files beside the page, referenced relatively; the data is
embedded as JSON (``<`` escaped as ``\\u003c``, as in :mod:`wsol.report.html`) and rendered by a small
inline script. DOM hooks for tests: ``figure.card[data-id][data-cls]`` per gallery image, ``div.tile[data-m]``
per method inside it (``data-iou``), ``div.box.gt`` / ``div.box.pred`` boxes, ``tr[data-m]`` metric rows,
selects ``#cls``, ``#method`` and ``#sort``; ``body[data-rendered]`` once the script ran.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsol.files import replacing, write_text
from wsol.report.html import _json_for_script

THUMB = 192  # longest side of the gallery thumbnails
DISAGREE_ROWS = 10  # rows of the "disagree most" table

_CSS = """
body{font-family:system-ui,sans-serif;margin:0;background:#f4f4f4;color:#222}
header{position:sticky;top:0;background:#222;color:#eee;padding:.6em 1em;display:flex;gap:1em;align-items:center;
flex-wrap:wrap;z-index:2}
header h1{font-size:1.1em;margin:0}
section{padding:.5em 1em}
h2{font-size:1.05em;margin:.8em 0 .4em}
table{border-collapse:collapse;background:#fff;font-size:.85em}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right}
th:first-child,td:first-child{text-align:left}
.plots img{max-width:100%;height:auto;background:#fff}
#grid{display:flex;flex-direction:column;gap:10px}
.card{background:#fff;margin:0;border-radius:6px;box-shadow:0 1px 3px #0003;padding:.4em}
.card .row{display:flex;gap:6px;flex-wrap:wrap}
.tile{width:192px}
.thumb{position:relative;line-height:0}
.thumb img{width:100%;height:auto;display:block}
.box{position:absolute;box-sizing:border-box;pointer-events:none}
.box.gt{border:2px solid #f33}
.box.pred{border:2px solid #0f0}
.tile .cap{font-size:.75em;line-height:1.3;padding-top:.2em;word-break:break-all}
figcaption{font-size:.85em;margin-bottom:.3em}
figcaption .id{font-family:monospace;color:#555}
.hidden{display:none}
"""

_JS = """
(function(){
  const data = JSON.parse(document.getElementById('wsol-data').textContent);
  const grid = document.getElementById('grid');
  const cls = document.getElementById('cls'), method = document.getElementById('method');
  const sort = document.getElementById('sort'), count = document.getElementById('count');
  function pct(v, total){ return (100 * v / total).toFixed(3) + '%'; }
  function url(p){ return p.split('/').map(encodeURIComponent).join('/'); }
  function box(kind, b, w, h){
    const d = document.createElement('div'); d.className = 'box ' + kind; d.dataset.box = b.join(',');
    d.style.left = pct(b[0], w); d.style.top = pct(b[1], h);
    d.style.width = pct(b[2] - b[0] + 1, w); d.style.height = pct(b[3] - b[1] + 1, h);
    return d;
  }
  function tile(c, src, label, m){
    const t = document.createElement('div'); t.className = 'tile';
    const th = document.createElement('div'); th.className = 'thumb';
    const img = document.createElement('img'); img.src = url(src); img.alt = label;
    img.width = c.tw; img.height = c.th; th.appendChild(img);
    for (const b of c.gt) th.appendChild(box('gt', b, c.width, c.height));
    if (m) th.appendChild(box('pred', m.box, 224, 224));
    const cap = document.createElement('div'); cap.className = 'cap'; cap.textContent = label;
    t.append(th, cap);
    return t;
  }
  function card(c, want){
    const fig = document.createElement('figure');
    fig.className = 'card'; fig.dataset.id = c.id; fig.dataset.cls = String(c.cls);
    const cap = document.createElement('figcaption');
    const id = document.createElement('span'); id.className = 'id'; id.textContent = c.id;
    cap.append(id, ' \\u00b7 ' + data.classes[c.cls] + ' \\u00b7 IoU spread ' + c.spread.toFixed(2));
    const row = document.createElement('div'); row.className = 'row';
    row.appendChild(tile(c, c.image, 'GT', null));
    c.tiles.forEach((m, j) => {
      if (want !== '' && String(j) !== want) return;
      const e = data.entries[j];
      const t = tile(c, m.src, e.key + ': IoU ' + m.iou.toFixed(2) + ' (pred ' + m.pred_name + ')', m);
      t.dataset.m = String(j); t.dataset.iou = String(m.iou);
      row.appendChild(t);
    });
    fig.append(cap, row);
    return fig;
  }
  function render(){
    const wantCls = cls.value, want = method.value, how = sort.value;
    let rows = data.cards.filter(c => wantCls === '' || String(c.cls) === wantCls);
    if (how === 'spread') rows.sort((a, b) => b.spread - a.spread || (a.id < b.id ? -1 : 1));
    else if (how.startsWith('iou:')) {
      const j = Number(how.slice(4));
      rows.sort((a, b) => a.tiles[j].iou - b.tiles[j].iou || (a.id < b.id ? -1 : 1));
    } else rows.sort((a, b) => (a.id < b.id ? -1 : 1));
    grid.replaceChildren(...rows.map(c => card(c, want)));
    count.textContent = rows.length + ' of ' + data.cards.length + ' images';
    for (const tr of document.querySelectorAll('tr[data-m]'))
      tr.classList.toggle('hidden', want !== '' && tr.dataset.m !== want);
    for (const tr of document.querySelectorAll('tr[data-cls]'))
      tr.classList.toggle('hidden', wantCls !== '' && tr.dataset.cls !== wantCls);
  }
  for (const s of [cls, method, sort]) s.addEventListener('change', render);
  render();
  document.body.dataset.rendered = 'true';
})();
"""


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "–"


def _plots(folder: Path, entries: Sequence[Any], thresholds: np.ndarray) -> list[str]:
    """BoxAcc-vs-threshold (largest box at IoU 50; all boxes, mean over the IoU criteria) and the pixel
    precision-recall curves of every entry on shared axes; returns the files written (relative)."""
    from wsol.metrics.counts import box_curves, pixel_curves, pixel_edges
    from wsol.report.plots import agg_pyplot

    plt = agg_pyplot()

    written = []
    boxed = [e for e in entries if e.box_state is not None]
    if boxed:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for e in boxed:
            curves = box_curves(e.box_state)
            axes[0].plot(thresholds, curves["largest"], label=e.key)
            axes[1].plot(thresholds, curves["all"].mean(0), label=e.key)
        axes[0].set(title="BoxAcc, largest box, IoU 50 (MaxBoxAcc)")
        axes[1].set(title="BoxAcc, all boxes, mean over IoU criteria (MaxBoxAccV2)")
        for ax in axes:
            ax.set(xlabel="score-map threshold", ylabel="BoxAcc (%)", xlim=(0, 1), ylim=(0, 100))
            ax.grid(alpha=0.3)
            ax.legend(loc="best", fontsize=8)
        written.append(_save(fig, folder / "boxacc.png", plt))
    pixels = [e for e in entries if e.pixel_state is not None]
    if pixels:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for e in pixels:
            c = pixel_curves(e.pixel_state, pixel_edges(thresholds))
            ax.plot(c["recall"], c["precision"], label=f"{e.key} (PxAP {e.metrics['PxAP']:.2f})")
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="pixel precision-recall")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        written.append(_save(fig, folder / "pr.png", plt))
    return written


def _save(fig: Any, path: Path, plt: Any) -> str:
    fig.tight_layout()
    try:
        with replacing(path) as tmp:
            fig.savefig(tmp, dpi=90, format="png")
    finally:
        plt.close(fig)
    return path.name


def pick_gallery(ids: Sequence[str], spread: dict[str, float], n: int) -> list[str]:
    """Up to ``n`` images: half the most disagreed on, the rest spread evenly over the others (all if few)."""
    if n >= len(ids):
        return list(ids)
    top = sorted(ids, key=lambda i: (-spread[i], i))[: (n + 1) // 2]
    rest = [i for i in ids if i not in set(top)]
    k = n - len(top)
    picks = [rest[int(j * len(rest) / k)] for j in range(k)] if k else []
    return top + picks


def _tiles(folder: Path, root: Path, meta: Any, entries: Sequence[Any], chosen: Sequence[str],
           logits: dict[str, np.ndarray], ids: Sequence[str]) -> list[dict[str, Any]]:
    """Write each chosen image and each entry's overlay of it under ``images/``; the gallery's cards."""
    from wsol.data.datasets import display_shape
    from wsol.data.images import read_image
    from wsol.localize.pipeline import class_names_of
    from wsol.metrics.scoremaps import load_score_map
    from wsol.report.overlay import render_overlay, write_image

    position = {i: n for n, i in enumerate(ids)}
    cards = []
    for n, image_id in enumerate(chosen):
        image, width, height, _ = read_image(root / image_id, draft_size=THUMB)
        tw, th = display_shape(width, height, THUMB)
        pixels = np.asarray(image.convert("RGB").resize((tw, th)), dtype=np.uint8)
        src = f"images/{n:05d}.jpg"
        write_image(folder / src, pixels)
        gt = meta.boxes[image_id].tolist() if meta.has_boxes else []
        tiles = []
        for j, e in enumerate(entries):
            m_src = f"images/{n:05d}_{j}.jpg"
            write_image(folder / m_src, render_overlay(pixels, load_score_map(e.scoremaps / f"{image_id}.npy")))
            pred = int(np.argmax(logits[e.model.label][position[image_id]]))
            tiles.append({"src": m_src, "box": e.boxes.get(image_id, [0, 0, 0, 0]),
                          "iou": round(e.ious.get(image_id, 0.0), 4), "pred": pred,
                          "pred_name": class_names_of(e.model.net)[pred].split(",")[0]})
        ious = [t["iou"] for t in tiles]
        cards.append({"id": image_id, "cls": meta.labels[image_id], "width": width, "height": height, "tw": tw,
                      "th": th, "image": src, "gt": gt, "tiles": tiles,
                      "spread": round(max(ious) - min(ious), 4) if ious else 0.0})
    return cards


def _metric_table(entries: Sequence[Any], iou_thresholds: Sequence[int]) -> str:
    cols = [("MaxBoxAcc", "MaxBoxAcc"), ("MaxBoxAcc_threshold", "best τ"), ("MaxBoxAccV2", "MaxBoxAccV2")]
    cols += [(f"iou{v}", f"V2 IoU {v}") for v in iou_thresholds]
    cols += [("top1_loc", "Top-1 Loc"), ("top5_loc", "Top-5 Loc"), ("PxAP", "PxAP"), ("peak_IoU", "peak IoU"),
             ("top1_cls", "Top-1 cls"), ("top5_cls", "Top-5 cls")]
    head = "".join(f"<th>{html.escape(c[1])}</th>" for c in cols)
    rows = []
    for j, e in enumerate(entries):
        m = dict(e.metrics)
        for v, r in (m.get("per_iou") or {}).items():
            m[f"iou{v}"] = r["max_box_acc"]
        cells = "".join(f"<td>{_fmt(m.get(c[0]))}</td>" for c in cols)
        where = "reused " if e.reused else "computed "
        rows.append(f"<tr data-m=\"{j}\"><td title=\"{html.escape(where + str(e.scoremaps))}\">"
                    f"{html.escape(e.key)}</td>{cells}</tr>")
    return f"<table id=\"metrics\"><tr><th>method</th>{head}</tr>{''.join(rows)}</table>"


def _class_table(entries: Sequence[Any], class_names: Sequence[str], counts: dict[int, int]) -> str:
    keys = ("MaxBoxAcc", "MaxBoxAccV2", "top1_loc", "PxAP")
    shown = [k for k in keys if any(k in r for e in entries for r in e.per_class.values())]
    head = "".join(f"<th>{html.escape(e.key)}<br>{k}</th>" for e in entries for k in shown)
    rows = []
    for c in sorted(counts):
        cells = "".join(f"<td>{_fmt(e.per_class.get(c, {}).get(k))}</td>" for e in entries for k in shown)
        rows.append(f"<tr data-cls=\"{c}\"><td>{html.escape(class_names[c])} ({counts[c]})</td>{cells}</tr>")
    return f"<table id=\"per-class\"><tr><th>class (images)</th>{head}</tr>{''.join(rows)}</table>"


def write_report(page: Path, meta: Any, root: Path, entries: Sequence[Any], logits: dict[str, np.ndarray], *,
                 gallery: int, class_names: Sequence[str], cam_curve_interval: float,
                 iou_thresholds: Sequence[int]) -> dict[str, Any]:
    """Plots, thumbnails and the page; returns the report's record (metrics, choices) for ``report.json``."""
    from wsol.metrics.counts import threshold_list

    folder = page.parent
    folder.mkdir(parents=True, exist_ok=True)
    ids = list(meta.image_ids)
    plots = _plots(folder, entries, threshold_list(cam_curve_interval))
    spread = {i: (max(e.ious.get(i, 0.0) for e in entries) - min(e.ious.get(i, 0.0) for e in entries))
              for i in ids}
    chosen = pick_gallery(ids, spread, gallery)
    cards = _tiles(folder, root, meta, entries, chosen, logits, ids)
    disagree = sorted(ids, key=lambda i: (-spread[i], i))[:DISAGREE_ROWS]
    counts: dict[int, int] = {}
    for i in ids:
        counts[meta.labels[i]] = counts.get(meta.labels[i], 0) + 1
    title = f"wsol report: {Path(meta.split_dir).name} ({len(ids)} images, {len(entries)} methods)"
    payload = {"title": title, "classes": list(class_names),
               "entries": [{"key": e.key} for e in entries], "cards": cards}
    dis_rows = "".join(
        f"<tr><td>{html.escape(i)}</td><td>{html.escape(class_names[meta.labels[i]])}</td><td>{spread[i]:.2f}</td>"
        + "".join(f"<td>{e.ious.get(i, 0.0):.2f}</td>" for e in entries) + "</tr>" for i in disagree)
    dis_head = "".join(f"<th>{html.escape(e.key)} IoU</th>" for e in entries)
    cls_opts = "".join(f"<option value=\"{c}\">{html.escape(class_names[c])} ({counts[c]})</option>"
                       for c in sorted(counts))
    m_opts = "".join(f"<option value=\"{j}\">{html.escape(e.key)}</option>" for j, e in enumerate(entries))
    sort_opts = ("<option value=\"spread\">disagreement (IoU spread)</option><option value=\"id\">image id</option>"
                 + "".join(f"<option value=\"iou:{j}\">IoU of {html.escape(e.key)}, lowest first</option>"
                           for j, e in enumerate(entries)))
    text = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{html.escape(title)}</h1>"
        f"<label>class <select id=\"cls\"><option value=\"\">all classes</option>{cls_opts}</select></label>"
        f"<label>method <select id=\"method\"><option value=\"\">all methods</option>{m_opts}</select></label>"
        f"<label>sort <select id=\"sort\">{sort_opts}</select></label><span id=\"count\"></span></header>"
        "<section><h2>Metrics</h2>"
        f"<p>GT-known score maps, threshold interval {cam_curve_interval:g}, IoU criteria "
        f"{', '.join(map(str, iou_thresholds))}; boxes in the gallery at each method's MaxBoxAcc threshold "
        "(green), GT in red.</p>"
        f"{_metric_table(entries, iou_thresholds)}</section>"
        "<section class=\"plots\"><h2>Curves</h2>"
        + "".join(f"<img src=\"{html.escape(p)}\" alt=\"{html.escape(p)}\">" for p in plots) + "</section>"
        f"<section><h2>Where the methods disagree most</h2><table id=\"disagree\"><tr><th>image</th><th>class</th>"
        f"<th>IoU spread</th>{dis_head}</tr>{dis_rows}</table></section>"
        f"<section><h2>Per class</h2>{_class_table(entries, class_names, counts)}</section>"
        "<section><h2>Gallery</h2><div id=\"grid\"></div></section>"
        f"<script type=\"application/json\" id=\"wsol-data\">{_json_for_script(payload)}</script>"
        f"<script>{_JS}</script>"
        "<noscript>The gallery needs JavaScript; the numbers are also in report.json.</noscript></body></html>\n"
    )
    write_text(page, text)
    return {
        "title": title, "split": str(meta.split_dir), "num_images": len(ids), "page": str(page), "plots": plots,
        "methods": [{"key": e.key, "model": e.model.label, "checkpoint": e.model.checkpoint, "method": e.method,
                     "scoremaps": str(e.scoremaps), "reused": e.reused, "metrics": e.metrics,
                     "per_class": {str(c): r for c, r in e.per_class.items()}} for e in entries],
        "disagree": [{"id": i, "spread": spread[i], "iou": {e.key: e.ious.get(i) for e in entries}}
                     for i in disagree],
        "gallery": chosen,
    }
