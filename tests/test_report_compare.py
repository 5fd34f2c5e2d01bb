"""`wsol report`: several methods of a checkpoint on a synthetic split, side by side on one page."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
import torch
from typer.testing import CliRunner

from wsol.cli import app
from wsol.errors import WSOLError

runner = CliRunner()
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
METHODS = ["cam", "gradcam", "cam+pas"]
SIZE = "64"


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A synthetic split, a random resnet10t checkpoint (wsol train's format), an earlier run's score maps
    (cam with the report's settings, gradcam with another image size) and the report made from them."""
    from wsol.data.synth import SynthConfig, generate
    from wsol.localize.split import localize_split
    from wsol.models import build_model

    base = tmp_path_factory.mktemp("report")
    synth = generate(SynthConfig(num_classes=2, train_per_class=2, val_per_class=1, test_per_class=3, min_side=64,
                                 max_side=96), base / "ds")
    torch.manual_seed(0)
    net = build_model("resnet10t", num_classes=2, surgery=True)
    record = {"model": "resnet10t", "num_classes": 2, "surgery": True}
    ckpt = base / "net.ckpt"
    torch.save({"wsol": record, "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}, ckpt)
    paths = {"synth": synth, "split": synth / "metadata" / "test", "images": synth / "images",
             "masks": synth / "masks", "ckpt": ckpt, "prev": base / "prev", "out": base / "out"}
    from wsol.models import load

    model = load(ckpt)
    localize_split(paths["split"], paths["images"], model, method="cam", scoremap_dir=paths["prev"] / "cam",
                   image_size=64, checkpoint=str(ckpt), workers=0, quiet=True)
    localize_split(paths["split"], paths["images"], model, method="gradcam", scoremap_dir=paths["prev"] / "gc96",
                   image_size=96, checkpoint=str(ckpt), workers=0, quiet=True)
    paths["mtimes"] = {p: p.stat().st_mtime_ns for p in (paths["prev"]).rglob("*.npy")}  # type: ignore[assignment]
    result = _report(paths, paths["out"])
    assert result.exit_code == 0, result.output
    return paths


def _report(paths: dict, out: Path, *extra: str):
    return runner.invoke(app, ["report", "--metadata", str(paths["split"]), "--data-root", str(paths["images"]),
                               "--mask-root", str(paths["masks"]), "--checkpoint", str(paths["ckpt"]),
                               "--methods", ",".join(METHODS), "--scoremaps", str(paths["prev"]),
                               "--image-size", SIZE, "--workers", "0", "--out", str(out / "index.html"), "-q",
                               *extra])


def test_metrics_equal_localize_split(setup: dict) -> None:
    from wsol.data.metadata import Metadata
    from wsol.localize.split import localize_split
    from wsol.metrics.scoremaps import evaluate_scoremaps
    from wsol.models import load

    split = Metadata.load(setup["split"], setup["masks"])
    record = json.loads((setup["out"] / "report.json").read_text())
    assert [m["method"] for m in record["methods"]] == METHODS
    model = load(setup["ckpt"])
    for row in record["methods"]:
        ref = localize_split(setup["split"], setup["images"], model, method=row["method"], evaluate=True,
                             mask_root=setup["masks"], image_size=64, workers=0, quiet=True).metrics
        got = row["metrics"]
        for key, value in ref["boxes"].items():
            assert got[key] == (value if key != "per_iou" else {str(k): v for k, v in value.items()}), (row, key)
        for key, value in ref["masks"].items():
            assert got[key] == value, (row, key)
        assert set(row["per_class"]) == {"0", "1"}
        evaluated, _, _ = evaluate_scoremaps(split, row["scoremaps"], setup["masks"])  # `wsol evaluate`
        assert {k: got[k] for k in ("MaxBoxAcc", "MaxBoxAccV2", "PxAP", "peak_IoU")} == {
            k: evaluated[k] for k in ("MaxBoxAcc", "MaxBoxAccV2", "PxAP", "peak_IoU")}


def test_matching_scoremaps_are_reused_and_others_not(setup: dict) -> None:
    record = json.loads((setup["out"] / "report.json").read_text())
    by = {m["method"]: m for m in record["methods"]}
    assert by["cam"]["reused"] and Path(by["cam"]["scoremaps"]) == setup["prev"] / "cam"
    assert not by["gradcam"]["reused"]  # the earlier gradcam maps were made at another image size
    assert Path(by["gradcam"]["scoremaps"]).is_relative_to(setup["out"] / "scoremaps")
    assert {p: p.stat().st_mtime_ns for p in setup["prev"].rglob("*.npy")} == setup["mtimes"]  # not rewritten
    own = {p: p.stat().st_mtime_ns for p in (setup["out"] / "scoremaps").rglob("*.npy")}
    again = _report(setup, setup["out"])  # a second run reuses everything, its own maps included
    assert again.exit_code == 0, again.output
    assert all(m["reused"] for m in json.loads((setup["out"] / "report.json").read_text())["methods"])
    assert {p: p.stat().st_mtime_ns for p in (setup["out"] / "scoremaps").rglob("*.npy")} == own


class _Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cards: list[dict[str, str]] = []
        self.tiles: list[tuple[str, str]] = []  # (card id, data-m)
        self.images: list[str] = []
        self.body: dict[str, str] = {}
        self.rows: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = a
        elif tag == "figure":
            self.cards.append(a)
        elif tag == "div" and a.get("class") == "tile" and "data-m" in a:
            self.tiles.append((self.cards[-1]["data-id"], a["data-m"]))
        elif tag == "img":
            self.images.append(a.get("src", ""))
        elif tag == "tr" and "data-m" in a:
            self.rows.append(a)


def test_page_is_self_contained(setup: dict) -> None:
    page = (setup["out"] / "index.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert page.count("</script>") == 2
    data = json.loads(page.split('id="wsol-data">')[1].split("</script>")[0])
    assert len(data["cards"]) == 6 and len(data["entries"]) == 3
    for card in data["cards"]:
        assert (setup["out"] / card["image"]).is_file()
        assert all((setup["out"] / t["src"]).is_file() for t in card["tiles"])
    assert (setup["out"] / "boxacc.png").is_file() and (setup["out"] / "pr.png").is_file()


def test_one_line_errors(setup: dict, tmp_path: Path) -> None:
    cases = [(["--methods", "cam,nosuch"], "nosuch"),
             (["--metadata", str(tmp_path / "missing")], "missing"),
             (["--checkpoint", str(tmp_path / "bad.pt")], "bad.pt")]
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    for extra, culprit in cases:
        result = _report(setup, tmp_path / "o", *extra)
        assert isinstance(result.exception, WSOLError), (extra, result.output)
        assert culprit in str(result.exception) and "\n" not in str(result.exception)


def _dump(url: str, tmp_path: Path) -> tuple[_Dom, str]:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
           "--dump-dom", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = _Dom()
    dom.feed(proc.stdout)
    return dom, proc.stdout


_PROBE = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src);
  const method = document.getElementById('method'), sort = document.getElementById('sort');
  const ids = () => [...document.querySelectorAll('figure.card')].map(f => f.dataset.id);
  const tiles = () => [...document.querySelectorAll('div.tile[data-m]')].map(t => t.dataset.m);
  const rows = () => [...document.querySelectorAll('tr[data-m]')].filter(r => !r.classList.contains('hidden')).length;
  const before = {tiles: tiles().length, ids: ids(), rows: rows()};
  method.value = '1'; method.dispatchEvent(new Event('change'));
  const filtered = {tiles: tiles().length, ms: [...new Set(tiles())], rows: rows()};
  sort.value = 'iou:0'; sort.dispatchEvent(new Event('change'));
  const byIou = ids();
  const cls = document.getElementById('cls'); cls.value = '1'; cls.dispatchEvent(new Event('change'));
  const byCls = ids();
  const pre = document.createElement('pre'); pre.id = 'probe';
  pre.textContent = btoa(JSON.stringify({n: imgs.length, broken, before, filtered, byIou, byCls}));
  document.body.appendChild(pre);
});</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium); "
                                              "the page is only checked in a real browser")
def test_chromium_loads_every_image_and_the_controls_work(setup: dict, tmp_path: Path) -> None:
    import base64

    out = setup["out"]
    page = (out / "index.html").resolve()
    dom, _ = _dump(page.as_uri(), tmp_path)
    assert dom.body.get("data-rendered") == "true", "the page's script did not run"
    assert len(dom.cards) == 6 and len(dom.tiles) == 6 * 3
    for src in dom.images:
        assert (out / unquote(src)).is_file(), src
    probe = page.parent / "probe.html"  # the page plus a script that checks what loaded and what the controls do
    probe.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    try:
        _, text = _dump(probe.as_uri(), tmp_path)
    finally:
        probe.unlink()
    found = re.search(r'<pre id="probe">([A-Za-z0-9+/=]+)</pre>', text)
    assert found, text[-2000:]
    result = json.loads(base64.b64decode(found.group(1)))
    assert result["n"] == 2 + 6 * 4 and result["broken"] == []  # two plots, each card's image and 3 overlays
    data = json.loads(page.read_text().split('id="wsol-data">')[1].split("</script>")[0])
    spread = {c["id"]: c["spread"] for c in data["cards"]}
    iou0 = {c["id"]: c["tiles"][0]["iou"] for c in data["cards"]}
    assert result["before"]["ids"] == sorted(spread, key=lambda i: (-spread[i], i))  # default: disagreement
    assert result["before"]["tiles"] == 18 and result["before"]["rows"] == 3
    assert result["filtered"] == {"tiles": 6, "ms": ["1"], "rows": 1}  # the method filter
    assert result["byIou"] == sorted(iou0, key=lambda i: (iou0[i], i))  # the sort by one method's IoU
    cls = {c["id"]: c["cls"] for c in data["cards"]}
    assert result["byCls"] == [i for i in result["byIou"] if cls[i] == 1] and len(result["byCls"]) == 3  # class filter
