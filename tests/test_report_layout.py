"""What the report page looks like at 1400 px in headless Chromium: no menu over a figure title, and a
summary table that fits or scrolls inside its own box (not the page).

Needs the Debian package `chromium` (`apt-get install -y chromium`); skipped without it.
Run: .venv/bin/python -m pytest tests/test_report_layout.py -q
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.report_fixtures import build_store
from workbench.report.page import make_report

CHROME = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
WIDTH = 1400
MENU_FIGURES = ("fig-exploration", "fig-collapse", "fig-pair")  # the figures with a menu beside their title

# After load: per figure the boxes of its title and of its menu's header, and the summary's boxes.
PROBE = """<script>
window.addEventListener("load", function () { setTimeout(function () {
  function box(el) { if (!el) return null; var r = el.getBoundingClientRect();
                     return {left: r.left, right: r.right, top: r.top, bottom: r.bottom}; }
  var figs = {};
  [].forEach.call(document.querySelectorAll(".plotly-graph-div"), function (d) {
    figs[d.id] = {title: box(d.querySelector(".g-gtitle text")), menu: box(d.querySelector(".updatemenu-header-group"))};
  });
  var scroll = document.querySelector(".scroll"), table = document.querySelector("table.summary");
  var out = {figs: figs, window: window.innerWidth, table_width: table.offsetWidth, box: box(scroll),
             box_client_width: scroll.clientWidth, box_scroll_width: scroll.scrollWidth,
             box_overflow_x: getComputedStyle(scroll).overflowX, page_scroll_width: document.documentElement.scrollWidth};
  var pre = document.createElement("pre"); pre.id = "layout-check"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 1500); });
</script>"""

pytestmark = pytest.mark.skipif(CHROME is None, reason="no chromium on PATH (Debian: apt-get install -y chromium)")


def overlap(a: dict | None, b: dict | None) -> bool:
    return bool(a and b) and a["left"] < b["right"] and b["left"] < a["right"] and a["top"] < b["bottom"] \
        and b["top"] < a["bottom"]


def layout(page: Path, profile: Path) -> dict:
    probe = page.with_name("layout.html")
    probe.write_text(page.read_text().replace("<head>", "<head>" + PROBE, 1))
    dom = subprocess.run([CHROME, "--no-sandbox", "--headless", "--disable-gpu", "--enable-unsafe-swiftshader",
                          "--disable-background-networking", "--disable-component-update", "--no-first-run",
                          "--virtual-time-budget=20000", f"--window-size={WIDTH},900", f"--user-data-dir={profile}",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=180)
    found = re.search(r'<pre id="layout-check">(.*?)</pre>', dom.stdout, re.S)
    assert found, f"the page never finished loading; chromium said: {dom.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """A study report with runs of very different names, collapse cells and every menu figure."""
    tmp = tmp_path_factory.mktemp("layout")
    store = build_store(tmp / "store")
    index = make_report("clip-mini", tracking_uri=store.uri, out_dir=tmp / "reports", png=False, log_artifact=False)
    return layout(index, tmp / "profile")


def test_overlap_sees_a_covered_title():
    title = {"left": 60, "right": 800, "top": 50, "bottom": 70}
    assert overlap(title, {"left": 80, "right": 500, "top": 57, "bottom": 83})
    assert not overlap(title, {"left": 80, "right": 500, "top": 75, "bottom": 100})


@pytest.mark.parametrize("fig", MENU_FIGURES)
def test_no_menu_covers_a_figure_title(measured, fig):
    boxes = measured["figs"][fig]
    assert boxes["title"] and boxes["menu"], f"{fig}: expected a title and a menu, got {boxes}"
    assert not overlap(boxes["title"], boxes["menu"]), f"{fig}: the menu covers the title: {boxes}"


def test_the_summary_fits_or_scrolls_in_its_own_box(measured):
    m = measured
    assert m["window"] == WIDTH
    assert m["page_scroll_width"] <= WIDTH, "the page itself scrolls sideways"
    assert m["box"]["right"] <= WIDTH
    fits = m["table_width"] <= m["box_client_width"]
    assert fits or (m["box_overflow_x"] in ("auto", "scroll") and m["box_scroll_width"] > m["box_client_width"]), m
