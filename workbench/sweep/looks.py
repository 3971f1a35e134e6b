"""A sequential claims study: one trial per arm and look, and which arms the next look needs.

A claims study that declares looks (`seeds: {looks: [5, 10, 20]}`) runs look by look. The
trial of an arm at look k trains that arm on the seeds the look adds, `seeds[n_{k-1}:n_k]`.
When every trial of look k has ended, the verdicts are recomputed from those trials' stored
runs by the report's own code (`workbench.sweep.measures`, `claims.judge` at the declared
looks, so alpha is split over all of them), and only the arms of claims still undecided get
look k+1's trials (`claims.arms_needing_seeds`). An arm all of whose claims are decided stops
getting seeds, which is where the sequential design saves its runs.

The trials of a look are enqueued with their arm fixed and the look index in a user attribute,
so any worker on any host takes them; the coordinator (`workbench.sweep.coordinator`) drives
the looks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from workbench import tracking
from workbench.sweep.claims import ClaimResult, arms_needing_seeds, judge
from workbench.sweep.measures import measures_by_arm
from workbench.sweep.study_file import ARM, Study
from workbench.tracking.series import accuracy_key

if TYPE_CHECKING:
    from optuna.trial import Trial

LOOK = "look"  # trial user attribute: the 0-based look whose seeds the trial trains
RETRIES = 1  # a failed trial of a look is queued again this many times; then the study stops FAILED


def is_sequential(study: Study) -> bool:
    """A claims study over arms with declared looks runs look by look."""
    return bool(study.looks and study.claims and ARM in study.space)


def arms(study: Study) -> list[str]:
    """The study's arms in the order the study file gives them."""
    return list(study.space[ARM].choices)


def look_seeds(study: Study, look: int) -> list[int]:
    """The seeds look `look` (0-based) adds: `seeds[n_{look-1}:n_look]`."""
    start = study.looks[look - 1] if look else 0
    return study.seeds[start:study.looks[look]]


def trial_seeds(study: Study, trial: Trial | FrozenTrial) -> list[int]:
    """The seeds a trial trains: its look's in a sequential study, else every seed of the study."""
    look = trial.user_attrs.get(LOOK)
    return look_seeds(study, int(look)) if look is not None and is_sequential(study) else list(study.seeds)


def trial_arm(t: FrozenTrial) -> str | None:
    """The arm of a trial, also while it waits in the queue (its params are set only once it runs)."""
    return t.params.get(ARM, t.system_attrs.get("fixed_params", {}).get(ARM))


class LookState(NamedTuple):
    done: dict[str, FrozenTrial]  # arm -> its COMPLETE or PRUNED trial at this look
    waiting: int
    running: int
    failed: dict[str, int]  # arm -> FAIL trials at this look, for arms not done


def look_state(ostudy: optuna.Study, look: int) -> LookState:
    done: dict[str, FrozenTrial] = {}
    failed: dict[str, int] = {}
    waiting = running = 0
    for t in ostudy.get_trials(deepcopy=False):
        if t.user_attrs.get(LOOK) != look:
            continue
        arm = trial_arm(t)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            done[arm] = t
        elif t.state == TrialState.WAITING:
            waiting += 1
        elif t.state == TrialState.RUNNING:
            running += 1
        elif t.state == TrialState.FAIL:
            failed[arm] = failed.get(arm, 0) + 1
    return LookState(done, waiting, running, {a: n for a, n in failed.items() if a not in done})


def enqueue_look(ostudy: optuna.Study, study: Study, look: int, needed: Sequence[str]) -> list[str]:
    """Queue one trial per needed arm that has none at this look yet; the arms queued."""
    have = {trial_arm(t) for t in ostudy.get_trials(deepcopy=False) if t.user_attrs.get(LOOK) == look}
    queued = [a for a in arms(study) if a in needed and a not in have]
    for arm in queued:
        ostudy.enqueue_trial({ARM: arm}, user_attrs={LOOK: look})
    return queued


def judge_after(ostudy: optuna.Study, study: Study, look: int, tracking_uri: str | None) -> list[ClaimResult]:
    """The verdicts after looks 0..`look` (0-based), from the runs of those looks' finished trials."""
    run_ids = [rec["run_id"] for t in ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
               if t.user_attrs.get(LOOK) is not None and t.user_attrs[LOOK] <= look
               for rec in (t.user_attrs.get("seeds") or {}).values() if rec.get("run_id")]
    runs = tracking.runs_by_id(run_ids, tracking_uri)
    acc = accuracy_key(runs)
    keep = set(study.seeds[:study.looks[look]])
    results = []
    for claim in study.claims:
        measures = {a: {s: v for s, v in by_seed.items() if s in keep}
                    for a, by_seed in measures_by_arm(runs, claim.measure, acc).items()}
        results.append(judge(claim, measures, study.seeds, study.looks))
    return results


def needed_arms(ostudy: optuna.Study, study: Study, look: int, tracking_uri: str | None,
                echo: Callable[[str], None] = print) -> list[str]:
    """The arms look `look` (0-based) runs: every arm at the first look, then the undecided claims' arms."""
    if look == 0:
        return arms(study)
    results = judge_after(ostudy, study, look - 1, tracking_uri)
    echo(f"after look {look}: " + "; ".join(f"{r.claim.id} {r.verdict}" + (f" (look {r.look})" if r.look else "")
                                           for r in results))
    need = arms_needing_seeds(results)
    return [a for a in arms(study) if a in need]
