"""Time `dispo-wb report` on a 64-trial study with 200 steps per run; print the page size.

Bar (issue 5): under 20 s on 2 cores and index.html under 15 MB. The study is fabricated
through MlflowClient into a temporary SQLite store (about a minute), then the report is
made three times; the median counts. Run from the repository root:
    .venv/bin/python benchmarks/report.py [--store DIR] [--no-png]
`--store DIR` keeps (or reuses) the fabricated store there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ holds the run fabricator

GRID = {"eps_pos_up": [0.1, 0.2, 0.3, 1.0], "eps_pos_down": [0.1, 0.2, 0.5, 1.0], "eps_neg_up": [0.01, 0.2],
        "eps_neg_down": [0.05, 0.2]}  # 64 trials; eps_neg_up 0.01 collapses


def fabricate(root: Path) -> str:
    import logging

    from mlflow import MlflowClient

    from tests.report_fixtures import experiment, log_study

    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    if (root / "mlflow.db").exists():
        return uri
    t = time.perf_counter()
    client = MlflowClient(uri)
    # Collapse is a direction, so collapsed trials run all 200 steps instead of being pruned.
    log_study(client, experiment(client), root / "bench.journal", name="bench", grid=GRID, seeds=(0,), steps=200,
              directions=("maximize eval/micro/accuracy", "minimize collapse"))
    print(f"fabricated 64 runs x 200 steps in {time.perf_counter() - t:.0f} s")
    return uri


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", type=Path, help="directory to keep or reuse the fabricated store in")
    ap.add_argument("--no-png", action="store_true", help="skip the kaleido PNG images")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.store or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        uri = fabricate(root)
        from workbench import tracking
        from workbench.report.page import make_report

        found = tracking.resolve_target("bench", uri)
        t = time.perf_counter()
        tracking.load_histories(found.runs, uri)
        points = sum(len(s.steps) for r in found.runs for s in r.metrics.values())
        print(f"metric histories: {len(found.runs)} runs, {points} values read in {time.perf_counter() - t:.2f} s")
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            index = make_report("bench", tracking_uri=uri, out_dir=Path(tmp) / "reports", png=not args.no_png)
            times.append(time.perf_counter() - t)
        size = index.stat().st_size / 1e6
        pngs = len(list(index.parent.glob("*.png")))
        print(f"report: median {statistics.median(times):.1f} s over {len(times)} (each: "
              f"{', '.join(f'{x:.1f}' for x in times)}), PNGs {pngs}, index.html {size:.1f} MB "
              f"(bar: < 20 s, < 15 MB): {'PASS' if statistics.median(times) < 20 and size < 15 else 'FAIL'}")


if __name__ == "__main__":
    main()
