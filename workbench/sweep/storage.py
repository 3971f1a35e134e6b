"""Where a study's trials live: storage URLs, opening the Optuna study, the sweep's lock, recovery.

Default storage is an Optuna journal file next to the study file: appends under a file lock,
safe for several local processes where SQLite raises "database is locked". While a sweep runs
it holds an flock on that file, which is how a re-run knows that RUNNING trials are left over
from a killed sweep. A database URL (`postgresql://...`) is shared by many machines instead;
there stale trials are found by Optuna's heartbeat.

Resume: trials left RUNNING become FAIL and every failed trial not yet retried is queued again
with the same parameters (and grid cell).
"""

from __future__ import annotations

import fcntl
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from workbench import tracking
from workbench.sweep import shared_db as shared_storage
from workbench.services.credentials import redact, take_password
from workbench.errors import UserError
from workbench.sweep.study_file import Study, default_storage, load_study_file

HEARTBEAT_S, GRACE_S = 30, 120


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
        beat, grace = (int(os.environ.get(k, d)) for k, d in (("DISPO_HEARTBEAT_S", HEARTBEAT_S),
                                                                ("DISPO_GRACE_S", GRACE_S)))
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna; they are what we need
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            rdb = shared_storage.open_rdb(lambda: optuna.storages.RDBStorage(
                url, heartbeat_interval=beat, grace_period=grace, heartbeat_stale_trial_callback=_requeue_stale,
                engine_kwargs=_pool(url)), url)
        return shared_storage.resilient(rdb, url) if shared_storage.is_shared(url) else rdb
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    Path(url).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(url))


def _pool(url: str) -> dict[str, int]:
    """A small pool on a shared server: what `services up` sizes max_connections for (services.stack)."""
    if not url.startswith(("postgresql", "postgres", "mysql")):
        return {}
    from workbench.services.stack import OPTUNA_OVERFLOW, OPTUNA_POOL

    return {"pool_size": OPTUNA_POOL, "max_overflow": OPTUNA_OVERFLOW}


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


# --- opening a study -----------------------------------------------------------------------------------


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


# --- recovery of interrupted trials ----------------------------------------------------------------------


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a failed trial again with its parameters; a grid trial keeps its grid cell."""
    system_attrs = {k: v for k, v in trial.system_attrs.items() if k in ("grid_id", "search_space")}
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, system_attrs={**system_attrs, "fixed_params": dict(trial.params)},
        user_attrs={"retry_of": trial.number, **{k: v for k, v in trial.user_attrs.items() if k == "look"}}))


_STALE_RUNS: list[str] = []  # MLflow runs of trials the heartbeat failed in this process, to be marked KILLED


def _requeue_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    """Heartbeat callback: a trial whose worker died (SIGKILL, lost host) is queued again."""
    requeue(study, trial)
    if "mlflow_run_id" in trial.user_attrs:
        _STALE_RUNS.append(trial.user_attrs["mlflow_run_id"])


def fail_stale_trials(ostudy: optuna.Study, tracking_uri: str | None) -> None:
    """Heartbeat check: trials of dead workers FAIL and are queued again, their MLflow runs KILLED."""
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(ostudy)  # `_requeue_stale` queues them again
    for trial_id in _never_beaten(ostudy):
        try:
            ostudy._storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:  # another host got there first
            continue
        _requeue_stale(ostudy, ostudy._storage.get_trial(trial_id))
    if _STALE_RUNS:
        tracking.kill_runs(_STALE_RUNS, "worker lost (no heartbeat); trial queued again", tracking_uri)
        _STALE_RUNS.clear()


def _never_beaten(ostudy: optuna.Study) -> list[int]:
    """RUNNING trials with no heartbeat at all, started longer than the grace period ago.

    Optuna's stale check passes over a trial that never sent a heartbeat, so a worker killed
    between `ask` and its heartbeat thread's first beat would hold its trial RUNNING forever.
    """
    import datetime

    import sqlalchemy as sa

    rdb = ostudy._storage
    for wrapper in ("_backend", "_inner", "_backend"):  # Optuna's cache, our outage retry, a cache beneath it
        rdb = getattr(rdb, wrapper, rdb)
    if not isinstance(rdb, optuna.storages.RDBStorage) or rdb.get_heartbeat_interval() is None:
        return []
    grace = rdb.grace_period or 2 * rdb.get_heartbeat_interval()
    # Optuna writes datetime_start from the asking host's local clock, naive: compare on this host's.
    cutoff = datetime.datetime.now() - datetime.timedelta(seconds=grace)
    query = sa.text("select t.trial_id from trials t left join trial_heartbeats h on h.trial_id = t.trial_id "
                    "where t.study_id = :study and t.state = 'RUNNING' and h.trial_id is null "
                    "and t.datetime_start < :cutoff")

    def stale() -> list[int]:
        with rdb.engine.connect() as conn:
            return [row[0] for row in conn.execute(query, {"study": ostudy._study_id, "cutoff": cutoff})]

    # Beside Optuna's calls, so beside their outage wrapper: a database restart must not end the worker.
    return shared_storage.with_backoff(stale, "finding trials without a heartbeat", rdb.url)


def fail_running(study: optuna.Study) -> None:
    """Every RUNNING trial FAILs: called only where no worker of the study can be alive."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        try:
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass


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
        fail_running(study)
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
