"""Trials per hour with 1 and with 2 sweep workers, measured back to back on the same study.

    .venv/bin/python benchmarks/sweep_workers.py [--study studies/smoke.yaml] [--trials 4] [--steps N]

Takes the study's base run config and seeds, swaps its space for a grid of `--trials` values of
eps_neg_up (so both runs do the same trials), and runs it once with `--workers 1` and once with
`--workers 2`, each on a fresh storage and MLflow store in a temporary folder. Each worker gets
cores / workers torch threads, as `dispo-wb sweep` gives them. Short runs are dominated by
process start-up (imports, reward pool, model build), which the workers also overlap; give
`--steps` to weigh training itself more.

Bar (issue 4): 2 workers reach at least 1.3 times the trials per hour of 1 worker on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default=str(ROOT / "studies" / "smoke.yaml"))
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--steps", type=int, default=None, help="training steps per run (default: the study's)")
    ap.add_argument("--fake", action="store_true",
                    help="train on tests/fake_trainer.py: the sweep machinery alone, without training")
    args = ap.parse_args()

    from workbench.sweep.study_file import Dimension, load_study_file
    from workbench.sweep import run_study

    from tests import fake_trainer
    from workbench.sweep.trial import train_locally

    train_fn = fake_trainer.train if args.fake else train_locally

    base = load_study_file(args.study)
    if args.steps:
        # Both: trials are built from base_data, the logged base_config.yaml from base.
        base = dataclasses.replace(base, base_data={**base.base_data, "steps": args.steps},
                                   base=base.base.model_copy(update={"steps": args.steps}))
    values = [round(0.05 * 2 ** i, 4) for i in range(args.trials)]
    os.chdir(ROOT)  # the SFT warm-start cache (.cache/sft) is shared by both runs
    rates = {}
    for workers in (1, 2):
        work = Path(tempfile.mkdtemp(prefix=f"sweep-w{workers}-"))
        study = dataclasses.replace(base, name=f"workers{workers}", path=work / "study.yaml",
                                    space={"eps_neg_up": Dimension("eps_neg_up", "objective.params.eps_neg_up",
                                                                   values=values)},
                                    sampler="grid", n_trials=len(values), storage=None)
        study.path.write_text(Path(args.study).read_text())
        t0 = time.perf_counter()
        result = run_study(study, workers=workers, train_fn=train_fn, tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
                           echo=lambda s: print("   ", s))
        wall = time.perf_counter() - t0
        rates[workers] = result.counts.get("COMPLETE", 0) / wall * 3600
        print(f"workers={workers}: {result.counts} in {wall:.1f}s -> {rates[workers]:.1f} trials/hour "
              f"({os.cpu_count()} cores, {max(1, (os.cpu_count() or 1) // workers)} threads per trial)")
    print(f"speed-up 2 workers / 1 worker: {rates[2] / rates[1]:.2f}x (bar: >= 1.3x)")


if __name__ == "__main__":
    main()
