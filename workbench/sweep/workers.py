"""The worker pool: processes that each take one unit of the trial budget at a time.

Each worker runs one trial with `study.optimize(n_trials=1)`, so no sweep runs more than
`n_trials` trials; each seed of that trial trains in a child of the worker
(`workbench.sweep.trial`). Every worker dies with the coordinator (Linux PR_SET_PDEATHSIG),
so after `kill -9` of a sweep no orphan keeps writing and the next run can treat every
RUNNING trial as dead. On a database other hosts share, a worker decides and asks for a trial
under the study lock, so no two hosts take the last slot.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from workbench.errors import UserError
from workbench.sweep import shared_db as shared_storage
from workbench.train.results import TrainFn
from workbench.sweep.study_file import Study
from workbench.sweep.looks import is_sequential
from workbench.sweep.objective import TrialObjective
from workbench.sweep.status import DONE
from workbench.sweep.storage import HEARTBEAT_S, fail_stale_trials, make_sampler, open_study
from workbench.sweep.trial import TrialCrashed, describe_exit, die_with_parent


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker of one sweep shares (pickled to spawned workers: `train_fn` by reference)."""

    study: Study
    storage: str
    tracking_uri: str | None
    parent_run_id: str
    train_fn: TrainFn
    threads: int


def run_workers(spec: WorkerSpec, n: int, budget: int) -> list[str]:
    """Run `budget` trials on `n` workers; returns one line per worker that died of a bug."""
    if n == 1:
        _worker_loop(spec, 0, _LocalBudget(budget))
        return []
    ctx = mp.get_context("spawn")
    tokens = ctx.Value("i", budget)
    procs = [ctx.Process(target=_worker_main, args=(spec, i, tokens, os.getpid()), name=f"sweep-worker-{i}")
             for i in range(n)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:  # they got the Ctrl-C too; give trainers time to mark their runs KILLED
            p.join(timeout=30)
        raise
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    return [f"worker {i} ended with {describe_exit(p.exitcode)}" for i, p in enumerate(procs) if p.exitcode]


class _LocalBudget:
    """The trial budget of a single worker in the coordinator's process (no shared memory needed)."""

    def __init__(self, n: int):
        self.value = n

    def get_lock(self):
        return nullcontext()


def _worker_main(spec: WorkerSpec, index: int, tokens, parent_pid: int) -> None:
    die_with_parent(parent_pid)
    try:
        _worker_loop(spec, index, tokens)
    except UserError as e:  # e.g. a service out of reach for longer than DISPO_OUTAGE_S: one line, no traceback
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


class _NoTracebackForUserErrors(logging.Filter):
    """Optuna logs a failed trial with its traceback; for a UserError (a service out of reach, bad input) the
    error's own line says it all, so the traceback is dropped (a bug keeps its traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], UserError):
            record.exc_info = None
        return True


def _worker_loop(spec: WorkerSpec, index: int, tokens) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for handler in logging.getLogger("optuna").handlers:
        if not any(isinstance(f, _NoTracebackForUserErrors) for f in handler.filters):
            handler.addFilter(_NoTracebackForUserErrors())
    ostudy = open_study(spec.study, spec.storage)
    if spec.study.sampler != "grid":  # the grid must be ordered alike in every worker: its cells are indices
        ostudy.sampler = make_sampler(spec.study, salt=index * 7919 + len(ostudy.trials))
    objective = TrialObjective(spec, index)
    if shared_storage.is_shared(spec.storage):
        _shared_worker_loop(spec, ostudy, objective, tokens)
        return
    while _take(tokens) and _claim(ostudy, spec, stale=False) == "run":
        ostudy.optimize(objective, n_trials=1, catch=(TrialCrashed,), callbacks=[_print_trial],
                        gc_after_trial=False)


def _shared_worker_loop(spec: WorkerSpec, ostudy: optuna.Study, objective: TrialObjective, tokens) -> None:
    """A worker on a database other hosts share: decide and ask for a trial under the study lock.

    The lock is held from the decision until Optuna has created (or popped) the trial, then
    released by the objective, so no two hosts take the last slot. While every open slot is
    held by a RUNNING trial the worker waits: one of them may belong to a dead worker, whose
    trial the heartbeat fails and re-queues for whoever is still alive.
    """
    lock = shared_storage.StudyLock(spec.storage, spec.study.name)

    def locked_objective(trial: Trial):
        lock.release()
        return objective(trial)

    poll_s = min(5.0, float(os.environ.get("DISPO_HEARTBEAT_S", HEARTBEAT_S)))
    try:
        while True:
            lock.acquire()
            decision = _claim(ostudy, spec)
            if decision == "wait":
                lock.release()
                time.sleep(poll_s)
                continue
            if decision == "done" or not _take(tokens):
                return
            ostudy.optimize(locked_objective, n_trials=1, catch=(TrialCrashed,), callbacks=[_print_trial],
                            gc_after_trial=False)
            lock.release()
    finally:
        lock.release()


def _claim(ostudy: optuna.Study, spec: WorkerSpec, stale: bool = True) -> str:
    """'run' (a trial is waiting or a slot is free), 'wait' (running trials hold every slot) or 'done'.

    A sequential claims study runs only the trials its coordinator queued for the current look
    (`workbench.sweep.looks`): with none waiting, this worker is done.
    """
    if stale:
        fail_stale_trials(ostudy, spec.tracking_uri)
    states = [t.state for t in ostudy.get_trials(deepcopy=False)]
    if is_sequential(spec.study):
        return "run" if TrialState.WAITING in states else "done"
    done, running = sum(s in DONE for s in states), states.count(TrialState.RUNNING)
    if done >= spec.study.n_trials:
        return "done"
    if TrialState.WAITING in states or done + running < spec.study.n_trials:
        return "run"
    return "wait"


def _take(tokens) -> bool:
    with tokens.get_lock():
        if tokens.value <= 0:
            return False
        tokens.value -= 1
        return True


def _print_trial(ostudy: optuna.Study, t: FrozenTrial) -> None:
    values = ", ".join(f"{v:.4g}" for v in t.values) if t.values else ""
    params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
    took = f"{t.duration.total_seconds():.1f}s" if t.duration else ""
    extra = t.user_attrs.get("collapse") or t.user_attrs.get("failure") or ""
    print(f"trial {t.number:>4} {t.state.name:<8} {values:<16} {params} {took} {extra}".rstrip(), flush=True)
