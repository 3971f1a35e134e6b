"""How long `dispo-wb train` takes to refuse a bad input: process start to exit, per input and median.

    python benchmarks/cli_refuse.py                  # this checkout
    python benchmarks/cli_refuse.py --src /tmp/old   # another source tree (e.g. `git archive main`), same venv

Each of the ten inputs runs in a fresh interpreter (`python -m workbench.cli train ...`) in a
temporary folder; the script checks that each one ended with exit code 2 and wrote no store,
and prints the median of `--repeat` rounds per input and the median over all runs: wall time,
and the refusing process's CPU time (user + sys), which the machine's load inflates far less.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BAD_INPUTS: list[list[str]] = [
    ["--objective", "nosuch"],
    ["--eps-neg-up", "-0.5"],
    ["--eps-neg-up", "nan"],
    ["--lr", "1e400"],
    ["--set", "reward_timeout_s=.inf"],
    ["--set", "rollout.temperature=.inf"],
    ["--set", "eval.benchmarks=[gsm9k]"],
    ["--experiment", ""],
    ["--seed", str(2**64)],
    ["--steps", "0"],
]


def refuse_once(args: list[str], env: dict[str, str], timeout_s: float) -> tuple[float, float, int | None, bool]:
    """(seconds, CPU seconds, exit code or None when it ran past timeout_s and was killed, store untouched)."""
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "workbench.cli", "train", "--tracking-uri", f"sqlite:///{d}/m.db", "--quiet", *args]
        t0, cpu0 = time.perf_counter(), _children_cpu()
        try:
            code = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            code = None
        took, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
        return took, cpu, code, not Path(d, "m.db").exists()


def _children_cpu() -> float:
    """User + sys seconds of the children this process has waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", help="source tree to import workbench from (PYTHONPATH)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=30.0, help="an input not refused by then counts as accepted")
    a = ap.parse_args()
    env = dict(os.environ)
    if a.src:
        env["PYTHONPATH"] = str(Path(a.src).resolve())
    refused, cpus, accepted = [], [], 0
    for args in BAD_INPUTS:
        times, note = [], ""
        for _ in range(a.repeat):
            took, cpu, code, clean = refuse_once(args, env, a.timeout)
            if code is None:
                note = f"  NOT REFUSED: still running after {a.timeout:.0f} s (store {'untouched' if clean else 'written'})"
                accepted += 1
                break
            times.append(took)
            cpus.append(cpu)
            if code != 2 or not clean:
                note = f"  (exit {code}, store {'untouched' if clean else 'WRITTEN'})"
        refused += times
        shown = f"{statistics.median(times):6.2f} s" if times else "     - "
        print(f"{shown}  {' '.join(args) or repr('')}{note}", flush=True)
    if refused:
        print(f"median time to refuse: {statistics.median(refused):.2f} s over {len(refused)} runs"
              f"{f'; {accepted} input(s) not refused' if accepted else ''}")
        print(f"median CPU time (user + sys) to refuse: {statistics.median(cpus):.2f} s")
    print(f"load average over 1 min at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
