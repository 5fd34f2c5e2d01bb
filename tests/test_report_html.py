"""The HTML report renders every image and box in a real browser (headless Chromium)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np
import pytest

from wsol.report.html import render_html, write_html
from wsol.report.overlay import render_overlay, write_image

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def _records(tmp_path: Path) -> list[dict]:
    rng = np.random.default_rng(0)
    records = []
    specs = [("a/cat.jpg", 281, "tabby, tabby cat", [[10, 20, 200, 180]]),
             ("b.png", 967, "espresso", [[0, 0, 99, 49], [120, 60, 299, 199]]),
             ("weird </script> <b>name</b>.png", 281, "tabby, tabby cat", [[5, 5, 50, 60]]),
             ("empty.png", 3, "tiger shark <x>", [])]
    for i, (key, cls, name, boxes) in enumerate(specs):
        width, height = 300 + 10 * i, 200
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        overlay = f"overlays/{i} #%?.png" if i == 1 else f"overlays/{i}.png"  # characters with a URL meaning
        write_image(tmp_path / overlay, render_overlay(image, rng.random((7, 7)), np.array(boxes)))
        records.append({"id": key, "path": key, "width": width, "height": height, "overlay": overlay,
                        "target": {"class": cls, "name": name, "prob": 0.5},
                        "top5": [{"class": cls, "name": name, "prob": 0.5}, {"class": 0, "name": "tench", "prob": 0.1}],
                        "boxes": [{"box": b, "score": 0.6} for b in boxes]})
    return records


class _Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cards: list[dict[str, str]] = []
        self.boxes: list[tuple[str, str]] = []  # (card id, data-box)
        self.images: list[tuple[str, str]] = []  # (card id, src)
        self.options: list[str] = []
        self.body: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = a
        if tag == "figure" and "card" in a.get("class", ""):
            self.cards.append(a)
        elif tag == "div" and a.get("class") == "box":
            self.boxes.append((self.cards[-1]["data-id"], a["data-box"]))
        elif tag == "img" and self.cards:
            self.images.append((self.cards[-1]["data-id"], a.get("src", "")))
        elif tag == "option":
            self.options.append(a.get("value", ""))


def test_page_is_self_contained_and_escaped(tmp_path: Path) -> None:
    page = render_html(_records(tmp_path), title="t <i>")
    assert "t &lt;i&gt;" in page
    assert page.count("</script>") == 2  # the data block and the script: a name cannot close them
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched from the network
    data = page.split('id="wsol-data">')[1].split("</script>")[0]
    assert len(json.loads(data)["records"]) == 4


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium); "
                                              "the page is only checked in a real browser")
def test_chromium_renders_every_image_and_box(tmp_path: Path) -> None:
    records = _records(tmp_path)
    page = write_html(tmp_path / "index.html", records)
    dom = _dump(page.resolve().as_uri(), tmp_path)
    assert dom.body.get("data-rendered") == "true", "the page's script did not run"
    assert [c["data-id"] for c in dom.cards] == [r["id"] for r in records]
    assert sorted(dom.images) == sorted((r["id"], quote(r["overlay"])) for r in records)
    expected = sorted((r["id"], ",".join(map(str, b["box"]))) for r in records for b in r["boxes"])
    assert sorted(dom.boxes) == expected
    assert sorted(dom.options) == ["", "281", "3", "967"]  # the class filter: all, then each target class
    for src in {s for _, s in dom.images}:
        assert (tmp_path / unquote(src)).is_file()
    filtered = _dump(page.resolve().as_uri() + "#class=281", tmp_path)
    assert [c["data-id"] for c in filtered.cards] == [records[0]["id"], records[2]["id"]]


def _dump(url: str, tmp_path: Path) -> _Dom:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
           "--dump-dom", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = _Dom()
    dom.feed(proc.stdout)
    return dom
