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
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.report_fixtures import build_store
from workbench.report.page import make_report

CHROME = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
FLAGS = ["--no-sandbox", "--headless", "--disable-gpu", "--enable-unsafe-swiftshader", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--virtual-time-budget=20000"]
FIGURES = ["exploration", "collapse", "learning", "trials", "perf", "parallel", "pair", "importance", "pareto"]

# After load: uncaught errors, and per figure what it drew and how many finite numbers its traces
# hold (plotly's decoded `_fullData`: y, z, bar x, parallel-coordinate values), in all traces and
# in the traces shown at first. A figure of empty or NaN-only traces holds none.
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) { window.__errors.push("uncaught: " + e.message); });
(function () {
  var original = console.error;
  console.error = function () { window.__errors.push(Array.prototype.join.call(arguments, " ")); return original.apply(console, arguments); };
})();
function __finite(a) {
  if (!a || typeof a === "string") return 0;
  var n = 0;
  for (var i = 0; i < a.length; i++) {
    var v = a[i];
    if (v && typeof v === "object" && v.length !== undefined) n += __finite(v);
    else if (typeof v === "number" && isFinite(v)) n++;
  }
  return n;
}
function __traceFinite(t) {
  var n = __finite(t.y) + __finite(t.z) + (t.type === "bar" ? __finite(t.x) : 0);
  (t.dimensions || []).forEach(function (d) { n += __finite(d.values); });
  return n;
}
window.addEventListener("load", function () { setTimeout(function () {
  var figs = [].map.call(document.querySelectorAll(".plotly-graph-div"), function (d) {
    var traces = d._fullData || [], all = 0, shown = 0;
    traces.forEach(function (t) { var n = __traceFinite(t); all += n; if (t.visible === true) shown += n; });
    return {id: d.id, svg: d.querySelectorAll("svg.main-svg").length, canvas: d.querySelectorAll("canvas").length,
            drawn: d.querySelectorAll("g.trace, g.hm, g.parcoords, .bars path").length,
            traces: traces.length, finite: all, finite_shown: shown};
  });
  var pre = document.createElement("pre"); pre.id = "browser-check";
  pre.textContent = JSON.stringify({errors: window.__errors, figs: figs});
  document.body.appendChild(pre);
}, 1000); });
</script>"""

pytestmark = pytest.mark.skipif(CHROME is None, reason="no chromium on PATH (Debian: apt-get install -y chromium)")


def _chrome(profile, *args: str) -> subprocess.CompletedProcess:
    # 180 s: a 6400-pixel screenshot on 2 cores shared with other jobs has taken over 60 s.
    return subprocess.run([CHROME, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=180)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("store"))


def _probe(page: Path, profile: Path) -> tuple[dict, str]:
    """Load `page` with PROBE first in its head; returns the probe's findings and chromium's stderr."""
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("<head>", "<head>" + PROBE, 1))
    dom = _chrome(profile, "--enable-logging=stderr", "--v=0", "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', dom.stdout, re.S)
    assert found, f"the page never finished loading; chromium said: {dom.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1))), dom.stderr


def figure_problem(fig: dict) -> str | None:
    """Why a figure the browser loaded shows nothing, or None when it shows data."""
    if fig["svg"] < 1 or (fig["drawn"] < 1 and fig["canvas"] < 1):
        return f"{fig['id']}: nothing drawn"
    if fig["traces"] < 1:
        return f"{fig['id']}: no traces"
    if fig["finite"] < 1:
        return f"{fig['id']}: every value is NaN or missing"
    if fig["finite_shown"] < 1:
        return f"{fig['id']}: the traces shown at first hold no finite value"
    return None


@pytest.fixture(scope="module", params=["multi", "dispo-wb"])
def rendered(request, store, tmp_path_factory):
    """A two-objective study (every figure) and an experiment (runs of all kinds, one without bounds)."""
    tmp = tmp_path_factory.mktemp(request.param)
    index = make_report(request.param, tracking_uri=store.uri, out_dir=tmp / "reports", png=False, log_artifact=False)
    check, stderr = _probe(index, tmp / "profile")
    return request.param, index, check, stderr


EXPECTED = {"multi": FIGURES, "dispo-wb": FIGURES[:7]}


def test_the_page_loads_without_errors_and_has_the_expected_figures(rendered, tmp_path):
    target, index, check, stderr = rendered
    assert check["errors"] == []
    assert not re.search(r"Uncaught|SyntaxError|ReferenceError|TypeError", stderr)
    assert sorted(f["id"] for f in check["figs"]) == sorted(f"fig-{name}" for name in EXPECTED[target])
    shot = tmp_path / f"{target}.png"
    _chrome(tmp_path / "profile2", "--window-size=1400,6400", f"--screenshot={shot}", index.as_uri())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 100_000


@pytest.mark.parametrize("name", FIGURES)
def test_every_figure_kind_draws_finite_data(rendered, name):
    target, _, check, _ = rendered
    if name not in EXPECTED[target]:
        pytest.skip(f"a {target} report has no {name} figure")
    fig = next(f for f in check["figs"] if f["id"] == f"fig-{name}")
    assert figure_problem(fig) is None, fig
    if name == "parallel":
        assert fig["canvas"] >= 1  # parcoords draws its lines with WebGL


def test_the_check_fails_on_an_empty_and_on_a_nan_only_figure(tmp_path):
    """The probe itself: a figure without traces and one whose values are all NaN are caught."""
    import plotly.graph_objects as go
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    (tmp_path / "plotly.min.js").write_text(get_plotlyjs())
    figs = {"empty": go.Figure(), "nan": go.Figure(go.Scatter(x=[1, 2, 3], y=[math.nan] * 3)),
            "hidden": go.Figure([go.Scatter(y=[1.0, 2.0], visible="legendonly"), go.Scatter(y=[math.nan])]),
            "fine": go.Figure(go.Scatter(x=[1, 2], y=[0.1, math.nan]))}
    divs = "".join(pio.to_html(f, full_html=False, include_plotlyjs=False, div_id=f"fig-{k}") for k, f in figs.items())
    page = tmp_path / "index.html"
    page.write_text(f'<!doctype html><html><head><script src="plotly.min.js"></script></head><body>{divs}</body></html>')
    check, _ = _probe(page, tmp_path / "profile")
    problems = {f["id"]: figure_problem(f) for f in check["figs"]}
    assert problems["fig-empty"] in ("fig-empty: nothing drawn", "fig-empty: no traces")
    assert problems["fig-nan"] == "fig-nan: every value is NaN or missing"
    assert problems["fig-hidden"] == "fig-hidden: the traces shown at first hold no finite value"
    assert problems["fig-fine"] is None
