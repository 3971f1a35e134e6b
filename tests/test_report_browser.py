"""The report page in headless Chromium: every figure draws, no JavaScript errors, a screenshot.

Needs the Debian package `chromium` (`apt-get install -y chromium`); skipped without it.
A copy of index.html gets a first script that records uncaught errors and console.error
calls and, after load, writes them and what each figure div drew into a <pre> that
`--dump-dom` prints. `--enable-unsafe-swiftshader` gives WebGL (parallel coordinates) a
software renderer where there is no GPU.
Run: .venv/bin/python -m pytest tests/test_report_browser.py -q
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pytest

from tests.report_fixtures import build_store
from workbench.report import make_report

CHROME = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
FLAGS = ["--no-sandbox", "--headless", "--disable-gpu", "--enable-unsafe-swiftshader", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--virtual-time-budget=20000"]
FIGURES = ["exploration", "collapse", "learning", "parallel", "pair", "importance", "pareto"]

PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) { window.__errors.push("uncaught: " + e.message); });
(function () {
  var original = console.error;
  console.error = function () { window.__errors.push(Array.prototype.join.call(arguments, " ")); return original.apply(console, arguments); };
})();
window.addEventListener("load", function () { setTimeout(function () {
  var figs = [].map.call(document.querySelectorAll(".plotly-graph-div"), function (d) {
    return {id: d.id, svg: d.querySelectorAll("svg.main-svg").length, canvas: d.querySelectorAll("canvas").length,
            drawn: d.querySelectorAll("g.trace, g.hm, g.parcoords, .bars path").length};
  });
  var pre = document.createElement("pre"); pre.id = "browser-check";
  pre.textContent = JSON.stringify({errors: window.__errors, figs: figs});
  document.body.appendChild(pre);
}, 1000); });
</script>"""

pytestmark = pytest.mark.skipif(CHROME is None, reason="no chromium on PATH (Debian: apt-get install -y chromium)")


def _chrome(profile, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROME, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("store"))


@pytest.mark.parametrize("target,figures", [
    ("multi", FIGURES),  # a two-objective study: every figure
    ("dispo-wb", FIGURES[:5]),  # an experiment: runs of all kinds, one without bounds or regime metrics
])
def test_report_renders_in_headless_chromium(store, tmp_path_factory, target, figures):
    tmp = tmp_path_factory.mktemp(target)
    index = make_report(target, tracking_uri=store.uri, out_dir=tmp / "reports", png=False, log_artifact=False)
    probe = index.with_name("probe.html")
    probe.write_text(index.read_text().replace("<head>", "<head>" + PROBE, 1))

    dom = _chrome(tmp / "profile", "--enable-logging=stderr", "--v=0", "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', dom.stdout, re.S)
    assert found, f"the page never finished loading; chromium said: {dom.stderr[-2000:]}"
    check = json.loads(html.unescape(found.group(1)))
    assert check["errors"] == []
    assert not re.search(r"Uncaught|SyntaxError|ReferenceError|TypeError", dom.stderr)
    figs = {f["id"]: f for f in check["figs"]}
    assert sorted(figs) == sorted(f"fig-{name}" for name in figures)
    for fig in figs.values():
        assert fig["svg"] >= 1 and (fig["drawn"] >= 1 or fig["canvas"] >= 1), fig
    assert figs["fig-parallel"]["canvas"] >= 1  # parcoords draws its lines with WebGL

    shot = tmp / f"{target}.png"
    _chrome(tmp / "profile2", "--window-size=1400,6400", f"--screenshot={shot}", index.as_uri())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 100_000
