"""A single self-contained HTML page of localization results (no external CSS, JS or fonts).

The records are embedded as JSON and rendered by a small inline script: one card per image (its overlay
thumbnail, referenced relatively, with every box redrawn as an element over it), the top-5 classes, and a
filter by target class (also from the URL: ``index.html#class=281``) and
by name. Every box is an element ``div.box`` with ``data-box="x0,y0,x1,y1"``
in original-image pixels, and every card a ``figure.card`` with ``data-id``; tests read them from the DOM.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from wsol.files import json_text, write_text

_CSS = """
body{font-family:system-ui,sans-serif;margin:0;background:#f4f4f4;color:#222}
header{position:sticky;top:0;background:#222;color:#eee;padding:.6em 1em;display:flex;gap:1em;align-items:center;
flex-wrap:wrap;z-index:2}
header h1{font-size:1.1em;margin:0}
header select,header input{font-size:.95em}
#grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:12px;padding:12px}
.card{background:#fff;margin:0;border-radius:6px;box-shadow:0 1px 3px #0003;overflow:hidden}
.thumb{position:relative;line-height:0}
.thumb img{width:100%;height:auto;display:block}
.box{position:absolute;border:2px solid #0f0;box-sizing:border-box;pointer-events:none}
figcaption{padding:.5em .7em;font-size:.85em;line-height:1.35}
figcaption .id{font-family:monospace;word-break:break-all;color:#555}
figcaption .target{font-weight:600}
figcaption ol{margin:.3em 0 0 1.2em;padding:0;color:#555}
#more{margin:1em auto 2em;display:block;font-size:1em}
.hidden{display:none}
"""

_JS = """
(function(){
  const data = JSON.parse(document.getElementById('wsol-data').textContent);
  const grid = document.getElementById('grid');
  const select = document.getElementById('cls');
  const search = document.getElementById('q');
  const count = document.getElementById('count');
  const more = document.getElementById('more');
  const PAGE = 500;
  let shown = PAGE;
  const classes = new Map();
  for (const r of data.records) {
    const k = String(r.target.class);
    classes.set(k, (classes.get(k) || {name: r.target.name, n: 0}));
    classes.get(k).n += 1;
  }
  for (const [k, v] of [...classes.entries()].sort((a, b) => b[1].n - a[1].n)) {
    const o = document.createElement('option');
    o.value = k; o.textContent = v.name + ' (' + v.n + ')';
    select.appendChild(o);
  }
  function pct(v, total){ return (100 * v / total).toFixed(3) + '%'; }
  function card(r){
    const fig = document.createElement('figure');
    fig.className = 'card'; fig.dataset.id = r.id; fig.dataset.cls = String(r.target.class);
    const t = document.createElement('div'); t.className = 'thumb';
    const img = document.createElement('img');
    // a file name is not a URL: '#', '?' and '%' must be escaped, segment by segment
    img.loading = 'lazy'; img.src = (r.overlay || '').split('/').map(encodeURIComponent).join('/'); img.alt = r.id;
    img.width = r.display_width || r.width; img.height = r.display_height || r.height;
    t.appendChild(img);
    for (const b of r.boxes) {
      const [x0, y0, x1, y1] = b.box;
      const d = document.createElement('div'); d.className = 'box';
      d.dataset.box = b.box.join(','); d.title = 'score ' + b.score.toFixed(3);
      d.style.left = pct(x0, r.width); d.style.top = pct(y0, r.height);
      d.style.width = pct(x1 - x0 + 1, r.width); d.style.height = pct(y1 - y0 + 1, r.height);
      t.appendChild(d);
    }
    fig.appendChild(t);
    const cap = document.createElement('figcaption');
    const id = document.createElement('div'); id.className = 'id'; id.textContent = r.id;
    const tg = document.createElement('div'); tg.className = 'target';
    tg.textContent = r.target.name + ' ' + (100 * r.target.prob).toFixed(1) + '% \\u00b7 ' +
      r.width + '\\u00d7' + r.height;
    const ol = document.createElement('ol');
    for (const c of r.top5) {
      const li = document.createElement('li');
      li.textContent = c.name + ' ' + (100 * c.prob).toFixed(1) + '%';
      ol.appendChild(li);
    }
    cap.append(id, tg, ol); fig.appendChild(cap);
    return fig;
  }
  function render(){
    const want = select.value, q = search.value.trim().toLowerCase();
    const rows = data.records.filter(r => (want === '' || String(r.target.class) === want) &&
      (q === '' || r.id.toLowerCase().includes(q) || r.top5.some(c => c.name.toLowerCase().includes(q))));
    grid.replaceChildren(...rows.slice(0, shown).map(card));
    count.textContent = rows.length + ' of ' + data.records.length + ' images';
    more.classList.toggle('hidden', rows.length <= shown);
  }
  const fromHash = /class=([^&]+)/.exec(location.hash);
  if (fromHash && classes.has(decodeURIComponent(fromHash[1]))) select.value = decodeURIComponent(fromHash[1]);
  select.addEventListener('change', () => {
    shown = PAGE; history.replaceState(null, '', select.value ? '#class=' + select.value : '#'); render();
  });
  search.addEventListener('input', () => { shown = PAGE; render(); });
  more.addEventListener('click', () => { shown += PAGE; render(); });
  render();
  document.body.dataset.rendered = 'true';
})();
"""


def _json_for_script(payload: Any) -> str:
    """JSON safe inside ``<script>`` and still valid JSON: ``<``, ``>`` and ``&`` (which only occur inside
    strings) as ``\\u`` escapes, so no ``</script>`` or ``<!--`` can appear."""
    text = json_text(payload, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(records: Iterable[Mapping[str, Any]], title: str = "wsol localize",
                summary: str = "") -> str:
    """The page as a string. Each record needs ``id``, ``width``, ``height``, ``overlay`` (a relative URL),
    ``target`` ``{class, name, prob}``, ``top5`` ``[{class, name, prob}]`` and ``boxes`` ``[{box, score}]``."""
    keep = ("id", "path", "width", "height", "display_width", "display_height", "overlay", "target", "top5", "boxes")
    rows = [{k: r[k] for k in keep if k in r} for r in records]
    payload = {"title": title, "records": rows}
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{html.escape(title)}</h1><span>{html.escape(summary)}</span>"
        "<label>class <select id=\"cls\"><option value=\"\">all classes</option></select></label>"
        "<input id=\"q\" type=\"search\" placeholder=\"filter by name or file\">"
        "<span id=\"count\"></span></header>"
        "<main id=\"grid\"></main><button id=\"more\" class=\"hidden\">show more</button>"
        f"<script type=\"application/json\" id=\"wsol-data\">{_json_for_script(payload)}</script>"
        f"<script>{_JS}</script>"
        "<noscript>This page needs JavaScript to show the results; they are also in results.jsonl.</noscript>"
        "</body></html>\n"
    )


def write_html(path: str | Path, records: Iterable[Mapping[str, Any]], title: str = "wsol localize",
               summary: str = "") -> Path:
    """Write :func:`render_html` to ``path`` atomically; returns the path."""
    path = Path(path)
    write_text(path, render_html(records, title, summary))
    return path
