"""How often the claims verdict rule decides wrongly, and how often rightly, by simulation.

Every simulated study goes through the rule the report uses (`workbench.sweep.sequential.
decide_claim`, which `workbench.sweep.claims.judge` calls), on arrays of many studies at once.
Per measure kind and truth it prints the share of studies ending reproduced / refuted / absent /
undecided across all looks, and the share decided at each look. Beside it, the rule it replaced:
a 95% percentile bootstrap (9999 resamples) of the mean paired difference over a fixed 5 seeds.

Run: PYTHONPATH=. .venv/bin/python benchmarks/claims_rule.py [--studies 4000] [--looks 5,10,15,20]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from tests.test_claims_rule import old_bootstrap_rule  # the replaced rule lives only in its test
from workbench.sweep import sequential as sq

# measure kind -> (binary, margin, sampler of paired differences (rng, S, N, effect, spread) -> (S, N));
# spread: the differences' scale (continuous), the arms' base chance of a 1 (0/1)
KINDS = {
    "normal": (False, 0.25, lambda rng, s, n, d, sd: rng.normal(d, sd, (s, n))),
    "t3": (False, 0.25, lambda rng, s, n, d, sd: d + sd * rng.standard_t(3, (s, n))),
    # 0/1 per run: each arm collapses with its own chance, independently per seed
    "0/1": (True, 0.3, lambda rng, s, n, d, p: ((rng.random((s, n)) < p + d / 2).astype(float)
                                                - (rng.random((s, n)) < p - d / 2))),
}
# rows: (truth, effect, spread); "tight" rows are where "absent" can be reached, 2x margin there
# must not be called absent, and "at margin" is the worst case for a false "absent".
ROWS = {
    "normal": [("zero", 0.0, 1.0), ("effect", 0.75, 1.0), ("zero tight", 0.0, 0.15), ("at margin", 0.25, 0.15),
               ("2x margin", 0.5, 0.15)],
    "t3": [("zero", 0.0, 1.0), ("effect", 1.0, 1.0), ("zero tight", 0.0, 0.1), ("at margin", 0.25, 0.1),
           ("2x margin", 0.5, 0.1)],
    "0/1": [("zero", 0.0, 0.3), ("effect", 0.6, 0.3), ("zero rare", 0.0, 0.0), ("at margin", 0.3, 0.3)],
}
EFFECTS = {"normal": 0.75, "t3": 1.0, "0/1": 0.6}  # the old rule's "known effect" rows


def simulate(kind: str, effect: float, spread: float, looks: list[int], studies: int, seed: int = 0) -> sq.ClaimDecision:
    binary, margin, draw = KINDS[kind]
    rng = np.random.default_rng(seed)
    return sq.decide_claim([draw(rng, studies, looks[-1], effect, spread)], looks, binary, margin, +1.0)


def chain(effects: tuple[float, float], looks: list[int], studies: int, seed: int = 0) -> sq.ClaimDecision:
    """Three arms a > b > c, normal with a shared seed effect: the links share arm b."""
    rng = np.random.default_rng(seed)
    n = looks[-1]
    shared = rng.normal(0, 2.0, (studies, n))
    a, b, c = (shared + m + rng.normal(0, 1 / np.sqrt(2), (studies, n)) for m in (effects[0] + effects[1], effects[1], 0))
    return sq.decide_claim([a - b, b - c], looks, False, 0.25, +1.0)


def shares(verdict: np.ndarray) -> np.ndarray:
    return np.bincount(verdict, minlength=4) / len(verdict)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=4000)
    ap.add_argument("--looks", default="5,10,15,20")
    args = ap.parse_args()
    looks = [int(x) for x in args.looks.split(",")]
    s = args.studies
    print(f"load {os.getloadavg()[0]:.1f}; {s} studies per row; looks {looks} (seeds); alpha 0.05 split "
          f"{sq.look_alpha(len(looks)):.4f} per look per link; Monte Carlo SE at 0.05: {np.sqrt(.05 * .95 / s):.4f}")
    t0 = time.perf_counter()
    head = (f"{'measure':7} {'truth':>10} {'effect':>6} {'spread':>6} {'margin':>6} | {'reprod':>6} {'refuted':>7} "
            f"{'absent':>6} {'undec':>6} | decided at look ")
    print(head + " ".join(f"{n:>5}" for n in looks))
    rows = [(kind, label, eff, spread, KINDS[kind][1], simulate(kind, eff, spread, looks, s))
            for kind in KINDS for label, eff, spread in ROWS[kind]]
    rows += [("chain3", label, eff[0], 1.0, 0.25, chain(eff, looks, s))
             for label, eff in (("zero", (0.0, 0.0)), ("a>b, b=c", (1.0, 0.0)), ("both", (0.75, 0.75)))]
    for kind, label, eff, spread, margin, d in rows:
        r = shares(d.verdict)
        print(f"{kind:7} {label:>10} {eff:6g} {spread:6g} {margin:6g} | {r[1]:6.3f} {r[2]:7.3f} {r[3]:6.3f} {r[0]:6.3f} | "
              + " ".join(f"{np.mean(d.look == k):5.3f}" for k in range(len(looks))))
    print("spread: sd of the differences (normal), scale of t3, base chance of a 1 in each arm (0/1); chain3: "
          "a > b > c, effect per link, differences of sd 1")
    print("old rule: 95% percentile bootstrap over a fixed 5 seeds (false decision = reproduced or refuted)")
    for kind in KINDS:
        draw = KINDS[kind][2]
        spread = ROWS[kind][0][2]
        zero = old_bootstrap_rule(draw(np.random.default_rng(1), s, 5, 0.0, spread))
        eff = old_bootstrap_rule(draw(np.random.default_rng(2), s, 5, EFFECTS[kind], spread))
        print(f"{kind:8} false decision {np.mean(zero != 0):.3f}  reproduced at effect {EFFECTS[kind]:g}: "
              f"{np.mean(eff == sq.REPRODUCED):.3f}")
    print(f"wall {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
