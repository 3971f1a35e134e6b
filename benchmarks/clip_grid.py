"""Run studies/clip_grid.yaml from scratch with 2 workers; print its wall time and best trial.

    .venv/bin/python benchmarks/clip_grid.py [--workers 2] [--study studies/clip_grid.yaml]

Storage and MLflow store go to a fresh temporary folder, so the time is that of the whole grid.
Bar (issue 4): under 45 minutes on 2 CPU cores with 2 workers.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default=str(ROOT / "studies" / "clip_grid.yaml"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--fake", action="store_true",
                    help="train on tests/fake_trainer.py: the sweep machinery alone, without training")
    args = ap.parse_args()

    import os

    from workbench.sweep.study_file import load_study_file
    from workbench.sweep import run_study, study_status

    os.chdir(ROOT)
    work = Path(tempfile.mkdtemp(prefix="clip-grid-"))
    study = load_study_file(args.study)
    study = dataclasses.replace(study, storage=str(work / f"{study.name}.journal"))
    from tests import fake_trainer
    from workbench.sweep.trial import train_locally

    train_fn = fake_trainer.train if args.fake else train_locally
    result = run_study(study, workers=args.workers, tracking_uri=f"sqlite:///{work / 'mlflow.db'}", train_fn=train_fn)
    info = study_status(args.study, study.storage)
    durations = [r.duration_s for r in info.rows if r.duration_s]
    print(f"{study.name}: {result.counts} with {args.workers} workers in {result.wall_s / 60:.1f} min "
          f"(median trial {statistics.median(durations):.0f}s; bar: < 45 min)")
    for n in info.best:
        row = info.rows[n]
        print(f"best trial #{n}: {dict(zip(info.directions, row.values or []))} at {row.params}"
              f"{'; collapse ' + row.collapse if row.collapse else ''}")
    print(f"storage {study.storage}; MLflow store sqlite:///{work / 'mlflow.db'}")


if __name__ == "__main__":
    main()
