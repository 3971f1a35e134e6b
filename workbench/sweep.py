"""Optuna studies over the clip space: a trial trains once per seed, each run in its own process.

How a sweep (`run_study`) is laid out:
- The coordinator (the `dispo-wb sweep` process) opens the storage, repairs what a killed
  sweep left behind (`recover`), opens the study's MLflow parent run and starts `workers`
  worker processes. Each worker takes one unit of the trial budget at a time and runs one
  trial with `study.optimize(n_trials=1)`, so no sweep runs more than `n_trials` trials.
- Each seed of a trial trains in a fresh child process (`run_training`): a crash, an OOM
  or a NaN fails that trial only. Intermediate eval accuracy travels back over a pipe for
  pruning, so the pruner decides in the worker, where the Optuna trial lives.
- Every child process dies with its parent (Linux PR_SET_PDEATHSIG): after `kill -9` of a
  sweep no orphan keeps writing, and the next run can treat every RUNNING trial as dead.

Choices, and why:
- Default storage is an Optuna journal file next to the study file: appends under a file
  lock, safe for several local processes where SQLite raises "database is locked". While a
  sweep runs it holds an flock on that file, which is how a re-run knows that RUNNING trials
  are left over from a killed sweep. A database URL (`postgresql://...`) is shared by many
  machines instead; there stale trials are found by Optuna's heartbeat.
- Resume: trials left RUNNING become FAIL and every failed trial not yet retried is queued
  again with the same parameters (and grid cell); `n_trials` counts COMPLETE + PRUNED.
- Seeds: one MLflow child run per trial (its params, Optuna state and values, the mean over
  seeds) with one training run per seed nested beneath it. The value belongs to no single
  seed, and the trial run is what MLflow's compare view lines up across the space.
- A collapse-flagged run prunes its trial (the remaining seeds are skipped) unless
  `collapse` is one of the study's directions; then it is a measured outcome.
- Pruning with several seeds: seed i reports at step `i * (steps + 1) + step`, so the pruner
  compares seed i of one trial with seed i of the others.
"""

from __future__ import annotations

import fcntl
import math
import multiprocessing as mp
import os
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any, Callable, Iterator, NamedTuple

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from workbench import shared_storage, tracking
from workbench.claims import claims_tag
from workbench.config import dump_yaml
from workbench.credentials import redact as _redact_text, take_password
from workbench.errors import UserError
from workbench.names import TAG_ARM
from workbench.study import ARM, Direction, Study, default_storage, load_study_file
from workbench.trial_process import TrialCrashed, describe_exit, die_with_parent, run_training

TRAIN_FN = "workbench.trainer.train"
# Trials of a study with `engine: verl` run as one engine job per seed; the outcome is read back
# from the job's MLflow run (workbench.engines.verl.launch.train returns the same RunResult).
ENGINE_TRAIN_FNS = {"verl": "workbench.engines.verl.launch.train"}
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


def engine_train_fn(engine: str, local_fn: str | Callable) -> str | Callable:
    """What trains a trial seed on `engine`: `local_fn` for the local trainer, else the engine's job."""
    if engine == "local":
        return local_fn
    if engine not in ENGINE_TRAIN_FNS:
        raise UserError(f"sweeps do not run on engine {engine} yet; engines for sweeps: local, {', '.join(ENGINE_TRAIN_FNS)}")
    return ENGINE_TRAIN_FNS[engine]
_HEARTBEAT_S, _GRACE_S = 30, 120


@dataclass
class SweepResult:
    study_name: str
    storage: str
    parent_run_id: str
    counts: dict[str, int]  # trials per Optuna state after the sweep
    recovered: list[int]  # trial numbers left RUNNING or FAIL before, now queued again
    wall_s: float
    complete: bool  # COMPLETE + PRUNED reached n_trials


# --- sampling and values ------------------------------------------------------------------------


def sample_params(trial: Trial, space: dict[str, Any]) -> dict[str, Any]:
    """One value per dimension of `space` (name -> study.Dimension), suggested through `trial`."""
    params: dict[str, Any] = {}
    for name, dim in space.items():
        if dim.choices is not None:
            params[name] = trial.suggest_categorical(name, dim.choices)
        elif dim.integer:
            params[name] = trial.suggest_int(name, dim.low, dim.high, step=dim.step or 1, log=dim.log)
        else:
            params[name] = trial.suggest_float(name, dim.low, dim.high, step=dim.step, log=dim.log)
    return params


def seed_value(direction: Direction, result: dict[str, Any]) -> float:
    """What one training run (a RunResult as a dict) contributes to a direction."""
    if direction.metric == "collapse":
        return float(result.get("collapse") is not None)
    if direction.metric == "entropy_retention":
        first, last = result.get("entropy_first", math.nan), result.get("entropy_last", math.nan)
        return last / first if first and not math.isnan(first) else math.nan
    evals = result.get("best_eval" if direction.at == "best" else "final_eval") or {}
    if direction.metric not in evals:
        raise TrialCrashed(f"the run logged no {direction.metric} (it has {', '.join(evals) or 'no eval metrics'})")
    return float(evals[direction.metric])


# --- storage ------------------------------------------------------------------------------------------


def storage_url(study: Study, override: str | None = None) -> str:
    """--storage, else the file's `storage:`, else the journal file next to the study file.

    A journal path is made absolute: it is recorded on the MLflow study run, read from anywhere.
    """
    url = override or study.storage or str(default_storage(study.path))
    return take_password(url) if "://" in url else str(Path(url).resolve())


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """A URL with `://` is an RDB (postgresql, mysql, sqlite); anything else is a journal file path."""
    if "://" in url:
        # DISPO_HEARTBEAT_S / DISPO_GRACE_S: shorter for tests and benchmarks that kill workers on purpose.
        beat, grace = (int(os.environ.get(k, d)) for k, d in (("DISPO_HEARTBEAT_S", _HEARTBEAT_S),
                                                                ("DISPO_GRACE_S", _GRACE_S)))
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna; they are what we need
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            rdb = shared_storage.open_rdb(lambda: optuna.storages.RDBStorage(
                url, heartbeat_interval=beat, grace_period=grace, heartbeat_stale_trial_callback=_requeue_stale), url)
        return shared_storage.resilient(rdb, url) if shared_storage.is_shared(url) else rdb
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    Path(url).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(url))


def redact(url: str) -> str:
    return _redact_text(url)


@contextmanager
def exclusive(url: str) -> Iterator[bool]:
    """Hold an flock on a local storage file for the sweep's lifetime; True when held.

    Released by the kernel when the sweep dies, however it dies. A shared database has no
    such file: False, and stale trials are left to the heartbeat.
    """
    if "://" in url and not url.startswith("sqlite:///"):
        yield False
        return
    path = Path(url.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another sweep is running on {path}; wait for it to end or stop it first") from None
        yield True
    finally:
        os.close(fd)


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a failed trial again with its parameters; a grid trial keeps its grid cell."""
    system_attrs = {k: v for k, v in trial.system_attrs.items() if k in ("grid_id", "search_space")}
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, system_attrs={**system_attrs, "fixed_params": dict(trial.params)},
        user_attrs={"retry_of": trial.number}))


_STALE_RUNS: list[str] = []  # MLflow runs of trials the heartbeat failed in this process, to be marked KILLED


def _requeue_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    """Heartbeat callback: a trial whose worker died (SIGKILL, lost host) is queued again."""
    requeue(study, trial)
    if "mlflow_run_id" in trial.user_attrs:
        _STALE_RUNS.append(trial.user_attrs["mlflow_run_id"])


def recover(study: optuna.Study, all_running_stale: bool, parent_run_id: str | None = None,
            tracking_uri: str | None = None) -> list[int]:
    """Fail trials a dead sweep left RUNNING, then queue every failed trial not yet retried.

    With `all_running_stale` (this sweep holds the storage lock) every run still RUNNING under
    the study's MLflow run is a leftover too, including one whose id never reached the trial.
    """
    reason = "sweep stopped during this trial; queued again"
    if all_running_stale and parent_run_id:
        tracking.kill_running_trials(parent_run_id, reason, tracking_uri)
    if all_running_stale:
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            try:
                study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass
    else:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # heartbeat; its callback requeues
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    failed = [t for t in trials if t.state == TrialState.FAIL and t.number not in retried]
    stale_runs = [t.user_attrs["mlflow_run_id"] for t in failed if "mlflow_run_id" in t.user_attrs]
    if stale_runs:
        tracking.kill_runs(stale_runs, reason, tracking_uri)
    for t in failed:
        requeue(study, t)
    return [t.number for t in failed]


def make_sampler(study: Study, salt: int = 0) -> optuna.samplers.BaseSampler:
    # Workers start together: one seed for all would have them draw the same first points.
    seed = study.sampler_seed * 100_003 + salt
    if study.sampler == "grid":
        return optuna.samplers.GridSampler(study.grid(), seed=seed)
    if study.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if study.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)


def make_pruner(study: Study) -> optuna.pruners.BasePruner:
    p = study.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.name == "percentile":
        return optuna.pruners.PercentilePruner(p.percentile, n_startup_trials=p.n_startup_trials,
                                               n_warmup_steps=p.n_warmup_steps)
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def open_study(study: Study, url: str) -> optuna.Study:
    """Create or load the Optuna study; a stored study started from a different file is refused."""
    storage = open_storage(url)
    try:
        ostudy = optuna.create_study(study_name=study.name, storage=storage, sampler=make_sampler(study),
                                     pruner=make_pruner(study), directions=[d.direction for d in study.directions],
                                     load_if_exists=True)
    except ValueError as e:
        raise UserError(f"study {study.name!r} in {redact(url)} does not match the study file: {e}") from None
    fingerprint = ostudy.user_attrs.get("fingerprint")
    if fingerprint is None:
        ostudy.set_user_attr("fingerprint", study.fingerprint())
        ostudy.set_user_attr("directions", [d.label for d in study.directions])
        ostudy.set_user_attr("direction_keys", [d.key for d in study.directions])
        ostudy.set_user_attr("seeds", study.seeds)
    elif fingerprint != study.fingerprint():
        raise UserError(f"study {study.name!r} in {redact(url)} was started with another base, space, seeds, "
                        f"sampler or directions; give the file a new `name:` or use another --storage")
    return ostudy


def load_study(target: str | Path, storage: str | None = None) -> tuple[optuna.Study, str]:
    """An existing study by study file or by name (+ storage), read-only use: status and reports."""
    p = Path(target)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        study = load_study_file(p)
        name, url = study.name, storage_url(study, storage)
    else:
        name = str(target)
        url = storage or str(default_storage(Path("studies") / f"{name}.yaml"))
    if "://" not in url and not Path(url).is_file():
        raise UserError(f"no storage for study {name!r} at {url}; run `dispo-wb sweep STUDY.yaml` first "
                        f"or give --storage")
    url = take_password(url)
    storage_obj = (optuna.storages.RDBStorage(url) if "://" in url else open_storage(url))
    try:
        return optuna.load_study(study_name=name, storage=storage_obj), url
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage_obj)]
        raise UserError(f"no study named {name!r} in {redact(url)}; stored: {', '.join(names) or 'none'}") from None


class TrialRow(NamedTuple):
    number: int
    state: str
    params: dict[str, Any]
    values: list[float] | None
    collapse: str | None
    run_id: str | None  # the trial's MLflow run
    duration_s: float | None
    note: str  # retry of which trial, why it failed or was pruned


class StudyStatus(NamedTuple):
    name: str
    storage: str
    directions: list[str]
    n_trials: int | None
    counts: dict[str, int]
    rows: list[TrialRow]
    best: list[int]  # best trial (one direction) or Pareto front (several)
    parent_run_id: str | None


def study_status(target: str | Path, storage: str | None = None) -> StudyStatus:
    """What the storage alone says about a study: one row per trial, and the best trial(s)."""
    ostudy, url = load_study(target, storage)
    rows = []
    for t in ostudy.get_trials(deepcopy=False):
        a = t.user_attrs
        note = (f"retry of {a['retry_of']}" if "retry_of" in a else "") or a.get("failure", "")
        rows.append(TrialRow(t.number, t.state.name, dict(t.params), list(t.values) if t.values else None,
                             a.get("collapse"), a.get("mlflow_run_id"),
                             t.duration.total_seconds() if t.duration else None, note))
    try:
        best = [t.number for t in ostudy.best_trials] if len(ostudy.directions) > 1 else [ostudy.best_trial.number]
    except ValueError:  # no COMPLETE trial yet
        best = []
    attrs = ostudy.user_attrs
    labels = attrs.get("directions") or [d.name.lower() for d in ostudy.directions]
    return StudyStatus(ostudy.study_name, redact(url), labels, attrs.get("n_trials"), _counts(ostudy), rows, best,
                       attrs.get("mlflow_parent_run_id"))


# --- running ------------------------------------------------------------------------------------------


def run_study(study: Study, *, workers: int | None = None, storage: str | None = None,
              tracking_uri: str | None = None, train_fn: str | Callable = TRAIN_FN,
              echo: Callable[[str], None] = print) -> SweepResult:
    """Run (or continue) a study until COMPLETE + PRUNED trials reach n_trials."""
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
            tags={"optuna.storage": redact(url), "optuna.sampler": study.sampler,
                  "dispo.directions": "; ".join(d.label for d in study.directions),
                  "dispo.seeds": ",".join(map(str, study.seeds)), **claims_tag(study.claims)},
            texts={"base_config.yaml": dump_yaml(study.base)}, files=[study.path], params=space_params(study))
        recovered = recover(ostudy, all_running_stale=local, parent_run_id=parent, tracking_uri=tracking_uri)
        if recovered:
            echo(f"queued again with the same parameters: trials {', '.join(map(str, recovered))}")
        ostudy.set_user_attr("mlflow_parent_run_id", parent)
        ostudy.set_user_attr("n_trials", study.n_trials)
        lock.release()
        remaining = study.n_trials - len(ostudy.get_trials(deepcopy=False, states=DONE))
        echo(f"study {study.name}: {remaining} of {study.n_trials} trials to run, {n_workers} worker(s), "
             f"storage {redact(url)}, MLflow run {parent}")
        spec = _WorkerSpec(study=study, storage=url, tracking_uri=tracking_uri, parent_run_id=parent,
                           train_fn=train_fn, threads=max(1, (os.cpu_count() or 1) // n_workers))
        status, problems = "KILLED", []
        try:
            if remaining > 0:
                problems = _run_workers(spec, min(n_workers, remaining), remaining)
            status = "FINISHED"
        finally:
            lost = isinstance(sys.exc_info()[1], shared_storage.StorageUnavailable)  # do not wait a second time
            counts = {} if lost else _counts(ostudy)
            complete = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) >= study.n_trials
            if status == "FINISHED" and (problems or not complete):
                status = "FAILED"
            best_metrics, best_tags = best_of(ostudy, study)
            tracking.close_study_run(parent, status=status, tracking_uri=tracking_uri,
                                     metrics={**{f"trials/{k.lower()}": v for k, v in counts.items()}, **best_metrics},
                                     tags={"dispo.complete": str(complete).lower(), **best_tags})
    for p in problems:
        echo(p)
    return SweepResult(study.name, redact(url), parent, counts, recovered, time.perf_counter() - t0, complete)


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
            return {}, {"dispo.pareto_trials": ",".join(str(t.number) for t in ostudy.best_trials)}
        best = ostudy.best_trial
    except ValueError:  # no COMPLETE trial
        return {}, {}
    params = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
    return ({"best/value": float(best.value), "best/trial": float(best.number)},
            {"dispo.best_trial": str(best.number), "dispo.best_params": params,
             "dispo.best_value": f"{study.directions[0].label} = {best.value:.4g}"})


def _counts(ostudy: optuna.Study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in ostudy.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


@dataclass(frozen=True)
class _WorkerSpec:
    study: Study
    storage: str
    tracking_uri: str | None
    parent_run_id: str
    train_fn: str | Callable
    threads: int


def _run_workers(spec: _WorkerSpec, n: int, budget: int) -> list[str]:
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
    def __init__(self, n: int):
        self.value = n

    def get_lock(self):
        return _nullcontext()


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _worker_main(spec: _WorkerSpec, index: int, tokens, parent_pid: int) -> None:
    die_with_parent(parent_pid)
    _worker_loop(spec, index, tokens)


def _worker_loop(spec: _WorkerSpec, index: int, tokens) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ostudy = open_study(spec.study, spec.storage)
    if spec.study.sampler != "grid":  # the grid must be ordered alike in every worker: its cells are indices
        ostudy.sampler = make_sampler(spec.study, salt=index * 7919 + len(ostudy.trials))
    objective = TrialObjective(spec, index)
    if shared_storage.is_shared(spec.storage):
        _shared_worker_loop(spec, ostudy, objective, tokens)
        return
    while _take(tokens) and len(ostudy.get_trials(deepcopy=False, states=DONE)) < spec.study.n_trials:
        ostudy.optimize(objective, n_trials=1, catch=(TrialCrashed,), callbacks=[_print_trial],
                        gc_after_trial=False)


def _shared_worker_loop(spec: _WorkerSpec, ostudy: optuna.Study, objective: "TrialObjective", tokens) -> None:
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

    poll_s = min(5.0, float(os.environ.get("DISPO_HEARTBEAT_S", _HEARTBEAT_S)))
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


def _claim(ostudy: optuna.Study, spec: _WorkerSpec) -> str:
    """'run' (a trial is waiting or a slot is free), 'wait' (running trials hold every slot) or 'done'."""
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(ostudy)  # `_requeue_stale` queues them again
    if _STALE_RUNS:
        tracking.kill_runs(_STALE_RUNS, "worker lost (no heartbeat); trial queued again", spec.tracking_uri)
        _STALE_RUNS.clear()
    states = [t.state for t in ostudy.get_trials(deepcopy=False)]
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


class TrialObjective:
    """`objective(trial)`: sample, train every seed in a child process, return the mean values."""

    def __init__(self, spec: _WorkerSpec, worker: int):
        self.spec, self.study, self.worker = spec, spec.study, worker
        d = self.study.directions
        self.prune_metric = d[0].metric if len(d) == 1 and d[0].metric.startswith("eval/") else None

    def __call__(self, trial: Trial) -> float | list[float]:
        params = sample_params(trial, self.study.space)
        overrides = self.study.overrides(params)
        trial.set_user_attr("overrides", overrides)
        trial.set_user_attr("worker", self.worker)
        run_id = tracking.open_trial_run(parent_run_id=self.spec.parent_run_id, study_name=self.study.name,
                                         trial_number=trial.number, tracking_uri=self.spec.tracking_uri,
                                         params={**params, "seeds": ",".join(map(str, self.study.seeds))},
                                         tags={"optuna.sampler": self.study.sampler, **_retry_tags(trial)})
        trial.set_user_attr("mlflow_run_id", run_id)
        try:
            values = self._train_seeds(trial, overrides, run_id)
        except optuna.TrialPruned as e:
            tracking.close_trial_run(run_id, state="PRUNED", tags=self._tags(trial, str(e)),
                                     tracking_uri=self.spec.tracking_uri)
            raise
        except BaseException as e:
            interrupted = isinstance(e, KeyboardInterrupt)
            why = "interrupted; queued again when the sweep is re-run" if interrupted else f"{type(e).__name__}: {e}"
            trial.set_user_attr("failure", why[-500:])
            tracking.close_trial_run(run_id, state="FAIL", tags={"failure_reason": why[-5000:]},
                                     tracking_uri=self.spec.tracking_uri, killed=interrupted)
            raise
        tracking.close_trial_run(run_id, state="COMPLETE", tags=self._tags(trial, None),
                                 metrics={d.key: v for d, v in zip(self.study.directions, values)},
                                 tracking_uri=self.spec.tracking_uri)
        return values[0] if len(values) == 1 else values

    def _train_seeds(self, trial: Trial, overrides: dict[str, Any], run_id: str) -> list[float]:
        per_seed: dict[str, dict[str, Any]] = {}
        results: list[dict[str, Any]] = []
        for i, seed in enumerate(self.study.seeds):
            # Seed runs are named after their trial (a base `run_name` wins: it is the user's, or a test's knobs).
            named = {} if self.study.base.run_name else {"run_name": f"{self.study.name}-t{trial.number:04d}-s{seed}"}
            config = self.study.run_config({**overrides, **named}, seed, self.spec.threads)
            reporter = _PruneReporter(trial, self.prune_metric, i * (config.steps + 1)) if self.prune_metric else None
            result = run_training(engine_train_fn(config.engine, self.spec.train_fn), config, on_eval=reporter, tracking_uri=self.spec.tracking_uri,
                                  parent_run_id=run_id, progress=False,
                                  extra_tags={"dispo.study": self.study.name, "dispo.trial": str(trial.number),
                                              "dispo.seed": str(seed), **self._arm_tag(trial)})
            per_seed[str(seed)] = {"run_id": result.get("run_id"), "status": result.get("status"),
                                   "collapse": result.get("collapse"), "collapse_step": result.get("collapse_step"),
                                   "final_eval": result.get("final_eval"), "wall_s": result.get("wall_s")}
            trial.set_user_attr("seeds", per_seed)
            results.append(result)
            if result.get("status") in ("FAILED", "KILLED"):
                raise TrialCrashed(f"seed {seed}: run {result.get('run_id')} ended {result['status']}: "
                                   f"{result.get('reason')}")
            if result.get("collapse") and self.study.prunes_on_collapse:
                what = f"{result['collapse']} collapse at step {result.get('collapse_step')} (seed {seed})"
                trial.set_user_attr("collapse", what)
                raise optuna.TrialPruned(what)
            if result.get("collapse"):
                trial.set_user_attr("collapse", f"{result['collapse']} (seed {seed})")
            if reporter is not None and reporter.pruned_at is not None:
                raise optuna.TrialPruned(f"pruned at step {reporter.pruned_at} of seed {seed}")
        values = [fmean(seed_value(d, r) for r in results) for d in self.study.directions]
        if any(math.isnan(v) for v in values):  # Optuna would fail the trial after we closed its run
            raise TrialCrashed(f"a value is NaN: {dict(zip((d.label for d in self.study.directions), values))}")
        return values

    @staticmethod
    def _arm_tag(trial: Trial) -> dict[str, str]:
        """Seed runs of an arm study say their arm, so a claims report needs only the runs."""
        return {TAG_ARM: str(trial.params[ARM])} if ARM in trial.params else {}

    def _tags(self, trial: Trial, reason: str | None) -> dict[str, str]:
        collapse = trial.user_attrs.get("collapse")
        tags = {"collapse": collapse.split()[0] if collapse else "none"}  # every trial run carries the flag
        if reason:
            tags["prune_reason"] = reason
        return tags


def _retry_tags(trial: Trial) -> dict[str, str]:
    """A re-queued trial's run names the trial it retries (and that trial's run, when it had one)."""
    retry_of = trial.user_attrs.get("retry_of")
    if retry_of is None:
        return {}
    tags = {"dispo.retry_of": str(retry_of)}
    for t in trial.study.get_trials(deepcopy=False):
        if t.number == retry_of and "mlflow_run_id" in t.user_attrs:
            tags["dispo.retry_of_run"] = t.user_attrs["mlflow_run_id"]
    return tags


class _PruneReporter:
    """The trainer's on_eval: report the study's metric to Optuna, say whether to stop."""

    def __init__(self, trial: Trial, metric: str, offset: int):
        self.trial, self.metric, self.offset = trial, metric, offset
        self.pruned_at: int | None = None

    def __call__(self, step: int, metrics: dict[str, float]) -> bool:
        if self.metric not in metrics:
            return False
        self.trial.report(float(metrics[self.metric]), self.offset + step)
        if self.trial.should_prune():
            self.pruned_at = step
            return True
        return False
