"""The `dispo-wb sweep` process: open the storage and the study's MLflow run, repair, run workers, close.

The coordinator opens the storage, repairs what a killed sweep left behind (`recover`), opens
the study's MLflow parent run, starts `workers` worker processes and, when they are done,
closes the parent run with the trial counts and the best trial(s); on a database other hosts
share, only when the study is complete or no other host still runs a trial (`others_running`).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import optuna
from optuna.trial import TrialState

from workbench import tracking
from workbench.sweep import looks
from workbench.sweep import shared_db as shared_storage
from workbench.sweep.claims import claims_tag
from workbench.config import dump_yaml
from workbench.names import (BEST_TRIAL, BEST_VALUE, FAILED, FINISHED, KILLED, TAG_BEST_PARAMS, TAG_BEST_TRIAL,
                             TAG_BEST_VALUE, TAG_COMPLETE, TAG_DIRECTIONS, TAG_OPTUNA_SAMPLER, TAG_OPTUNA_STORAGE, TAG_PARETO_TRIALS, TAG_SEEDS)
from workbench.train.results import TrainFn
from workbench.sweep.study_file import Study
from workbench.sweep.status import DONE, counts as state_counts
from workbench.services.credentials import redact
from workbench.sweep.storage import (HEARTBEAT_S, exclusive, fail_running, fail_stale_trials, open_study, recover,
                                    requeue, storage_url)
from workbench.sweep.workers import WorkerSpec, run_workers
from workbench.sweep.trial import train_locally


@dataclass
class SweepResult:
    study_name: str
    storage: str
    parent_run_id: str
    counts: dict[str, int]  # trials per Optuna state after the sweep
    recovered: list[int]  # trial numbers left RUNNING or FAIL before, now queued again
    wall_s: float
    complete: bool  # COMPLETE + PRUNED reached n_trials


def run_study(study: Study, *, workers: int | None = None, storage: str | None = None,
              tracking_uri: str | None = None, train_fn: TrainFn = train_locally,
              echo: Callable[[str], None] = print) -> SweepResult:
    """Run (or continue) a study until COMPLETE + PRUNED trials reach n_trials.

    `train_fn` trains one seed of a trial on the local engine (module level: it is passed to
    worker and training processes by reference); studies on another engine use its job.
    """
    t0 = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(study, storage)
    n_workers = workers or study.workers
    tracking.connect(tracking_uri)  # MLflow's import takes seconds: not while holding the lock below
    with exclusive(url) as local, shared_storage.StudyLock(url, study.name) as lock:
        # The lock (a shared database only) makes hosts starting together find one parent run
        # and re-queue each failed trial once.
        ostudy = open_study(study, url)
        parent = tracking.open_study_run(
            study_name=study.name, experiment=study.base.experiment, tracking_uri=tracking_uri,
            tags={TAG_OPTUNA_STORAGE: redact(url), TAG_OPTUNA_SAMPLER: study.sampler,
                  TAG_DIRECTIONS: "; ".join(d.label for d in study.directions),
                  TAG_SEEDS: ",".join(map(str, study.seeds)), **claims_tag(study.claims, study.looks)},
            texts={"base_config.yaml": dump_yaml(study.base)}, files=[study.path], params=space_params(study))
        recovered = recover(ostudy, all_running_stale=local, parent_run_id=parent, tracking_uri=tracking_uri)
        if recovered:
            echo(f"queued again with the same parameters: trials {', '.join(map(str, recovered))}")
        ostudy.set_user_attr("mlflow_parent_run_id", parent)
        ostudy.set_user_attr("n_trials", study.n_trials)
        lock.release()
        remaining = study.n_trials - len(ostudy.get_trials(deepcopy=False, states=DONE))
        what = (f"looks of {', '.join(map(str, study.looks))} paired seeds, at most {study.n_trials} trials"
                if looks.is_sequential(study) else f"{remaining} of {study.n_trials} trials to run")
        echo(f"study {study.name}: {what}, {n_workers} worker(s), storage {redact(url)}, MLflow run {parent}")
        spec = WorkerSpec(study=study, storage=url, tracking_uri=tracking_uri, parent_run_id=parent,
                          train_fn=train_fn, threads=max(1, (os.cpu_count() or 1) // n_workers))
        status, problems, complete = KILLED, [], False
        try:
            if looks.is_sequential(study):
                problems, complete = run_looks(ostudy, study, spec, n_workers, local, lock, echo)
            elif remaining > 0:
                problems = run_workers(spec, min(n_workers, remaining), remaining)
            status = FINISHED
        finally:
            lost = isinstance(sys.exc_info()[1], shared_storage.StorageUnavailable)  # do not wait a second time
            counts = {} if lost else state_counts(ostudy)
            if not looks.is_sequential(study):
                complete = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) >= study.n_trials
            if status == FINISHED and (problems or not complete):
                status = FAILED
            if not complete and others_running(ostudy, local, lost, tracking_uri):
                echo(f"other hosts still run trials of {study.name}: its MLflow run stays RUNNING, "
                     f"and the last host to stop ends it")
            else:
                best_metrics, best_tags = best_of(ostudy, study)
                tracking.close_study_run(parent, status=status, tracking_uri=tracking_uri,
                                         metrics={**{f"trials/{k.lower()}": v for k, v in counts.items()},
                                                  **best_metrics},
                                         tags={TAG_COMPLETE: str(complete).lower(), **best_tags})
    for p in problems:
        echo(p)
    return SweepResult(study.name, redact(url), parent, counts, recovered, time.perf_counter() - t0, complete)


def others_running(ostudy: optuna.Study, local: bool, lost: bool, tracking_uri: str | None) -> bool:
    """Whether another host's workers still hold trials of the study (this host's have all ended).

    The rule for the study's shared MLflow run: it ends FINISHED when the study is complete,
    whichever host gets there; a host that stops before (Ctrl-C, a failure) ends it only when no
    other host still runs a trial, else leaves it RUNNING for the last host to end. A dead
    host's trials count until their heartbeat fails them.
    """
    if local or lost:
        return False
    try:
        fail_stale_trials(ostudy, tracking_uri)
        return bool(ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    except Exception:  # noqa: BLE001 - the storage went away while stopping: close the run as before
        return False


def run_looks(ostudy: optuna.Study, study: Study, spec: WorkerSpec, n_workers: int, local: bool,
              lock: shared_storage.StudyLock, echo: Callable[[str], None]) -> tuple[list[str], bool]:
    """Run a sequential claims study look by look (`workbench.sweep.looks`); (problems, complete).

    Each look's trials are queued under the study lock (hosts sharing the storage queue each
    (arm, look) once), run by this host's workers and, on a shared database, by any other
    host's; the next look starts when every trial of this one has ended. A failed trial is
    queued again up to `looks.RETRIES` times; after that the study stops, not complete.
    """
    problems: list[str] = []
    poll_s = min(5.0, float(os.environ.get("DISPO_HEARTBEAT_S", HEARTBEAT_S)))
    for k, n in enumerate(study.looks):
        with lock:
            needed = looks.needed_arms(ostudy, study, k, spec.tracking_uri, echo)
            if not needed:
                echo(f"look {k + 1} of {len(study.looks)} not needed: every claim is decided")
                return problems, True
            looks.enqueue_look(ostudy, study, k, needed)
        seeds = looks.look_seeds(study, k)
        echo(f"look {k + 1} of {len(study.looks)} ({n} paired seeds): seeds {seeds[0]}..{seeds[-1]} for "
             f"{', '.join(needed)}")
        while True:
            state = looks.look_state(ostudy, k)
            if all(a in state.done for a in needed):
                break
            if state.waiting:
                problems += run_workers(spec, min(n_workers, state.waiting), state.waiting)
            elif state.running and not local:  # another host's workers hold them, or a dead one's until
                time.sleep(poll_s)               # its heartbeat fails them and they are queued again
                fail_stale_trials(ostudy, spec.tracking_uri)
            else:  # this host's workers have ended: what is still RUNNING was a dead worker's
                fail_running(ostudy)
                given_up = [a for a, f in looks.look_state(ostudy, k).failed.items() if f > looks.RETRIES]
                if given_up:
                    echo(f"look {k + 1}: the trials of {', '.join(given_up)} failed {looks.RETRIES + 1} times; "
                         f"the study stops here (re-run the sweep to try again)")
                    return problems, False
                with lock:
                    retried = {t.user_attrs.get("retry_of") for t in ostudy.get_trials(deepcopy=False)}
                    for t in ostudy.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
                        if t.user_attrs.get(looks.LOOK) == k and t.number not in retried:
                            requeue(ostudy, t)
    return problems, True


def space_params(study: Study) -> dict[str, str]:
    """The searched space as the parent run's params: `space.<name>` -> its values or range."""
    out = {"n_trials": str(study.n_trials), "sampler": study.sampler, "seeds": ",".join(map(str, study.seeds)),
           "directions": "; ".join(d.label for d in study.directions)}
    for name, dim in study.space.items():
        if dim.choices is not None:
            what = ", ".join(map(str, dim.choices))
        else:
            what = f"{dim.low:g}..{dim.high:g}" + (" log" if dim.log else "") + (f" step {dim.step:g}" if dim.step else "")
        out[f"space.{name}"] = f"{dim.path or 'arm'}: {what}"
    return out


def best_of(ostudy: optuna.Study, study: Study) -> tuple[dict[str, float], dict[str, str]]:
    """The best trial's number and value(s) (one direction), or the Pareto front's trial numbers."""
    try:
        if len(ostudy.directions) > 1:
            return {}, {TAG_PARETO_TRIALS: ",".join(str(t.number) for t in ostudy.best_trials)}
        best = ostudy.best_trial
    except ValueError:  # no COMPLETE trial
        return {}, {}
    params = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
    return ({BEST_VALUE: float(best.value), BEST_TRIAL: float(best.number)},
            {TAG_BEST_TRIAL: str(best.number), TAG_BEST_PARAMS: params,
             TAG_BEST_VALUE: f"{study.directions[0].label} = {best.value:.4g}"})
