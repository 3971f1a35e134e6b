"""Fabricated MLflow runs and Optuna studies with the metric keys and tags of contracts.md.

The report reads only the store, so its tests do not need a trainer: these helpers log
plausible histories straight through `MlflowClient` (normal, collapsed by repetition,
collapsed by length, one without regime metrics, and small multi-seed studies whose
Optuna storage is a journal file). benchmarks/report.py uses them at full size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from workbench.metrics.collapse import detect_collapse
from workbench.config import CollapseConfig
from workbench.names import REGIMES
from workbench.params import DISPO_BOUNDS as BOUNDS
from workbench.sweep.study_file import parse_direction
MAX_LEN = 48


@dataclass
class FakeRun:
    """What to fabricate; `kind` is "normal", "repetition" or "length" (a collapse at `onset`)."""

    name: str
    kind: str = "normal"
    onset: int | None = None
    steps: int = 40
    seed: int = 0
    bounds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(BOUNDS, 0.2))
    objective: str = "dispo"
    regime_metrics: bool = True  # False: a run logged by another tool (reward, accuracy, length only)
    eval_every: int = 10
    step_s: float = 2.0


def series(run: FakeRun) -> dict[str, np.ndarray]:
    """Per-step values (index i = step i + 1) of every train metric; deterministic in the seed."""
    rng = np.random.default_rng(run.seed * 7919 + sum(map(ord, run.name)))
    t = np.arange(1, run.steps + 1, dtype=float)
    noise = lambda scale: rng.normal(0, scale, run.steps)  # noqa: E731
    b = run.bounds
    # Loose positive-up bounds raise entropy (exploration), loose positive-down ones lower it.
    drift = 0.01 * (b["eps_pos_up"] - b["eps_pos_down"]) / 0.2
    entropy = np.clip(1.2 + drift * t + noise(0.03), 0.05, None)
    # Accuracy peaks at eps_pos_up 0.3 and eps_neg_down 0.2 (a made-up optimum for the clip-space views).
    quality = 0.1 * abs(np.log10(b["eps_pos_up"] / 0.3)) + 0.05 * abs(np.log10(min(b["eps_neg_down"], 1.0) / 0.2))
    reward = np.clip(0.3 + (0.3 - quality) * (1 - np.exp(-t / 15)) + noise(0.03) - 0.02 * run.seed, 0, 1)
    length = 20 + noise(1.0)
    rep = np.clip(0.05 + noise(0.01), 0, 1)
    trunc = np.clip(0.02 + noise(0.005), 0, 1)
    if run.kind != "normal":
        after = t >= run.onset
        reward[after] = 0.02
        if run.kind == "repetition":
            rep[after], length[after], trunc[after], entropy[after] = 0.9, MAX_LEN, 0.95, 0.1
        else:
            length[after], entropy[after] = 2.0, 0.3
    out = {
        "reward/mean": reward, "train/accuracy": reward, "response/length_mean": length,
        "response/length_correct": length - 2, "response/length_incorrect": length + 2,
    }
    if not run.regime_metrics:
        return out
    out |= {
        "response/truncated_frac": trunc, "response/repetition_rate": rep, "entropy/mean": entropy,
        "loss/policy": noise(0.1), "grad/norm": np.abs(1 + noise(0.2)), "ratio/mean": 1 + noise(0.01),
        "ratio/max": 1.5 + np.abs(noise(0.2)), "ratio/abs_dev_mean": np.abs(0.05 + noise(0.01)),
        "batch/zero_adv_group_frac": np.clip(0.3 + noise(0.05), 0, 1), "reward/timeout_frac": np.zeros(run.steps),
        "perf/step_s": run.step_s + noise(0.05), "perf/rollout_tokens_per_s": 900 + noise(30),
    }
    shares = (0.3, 0.2, 0.25, 0.25)
    for regime, share, eps in zip(REGIMES, shares, (b[k] for k in BOUNDS)):
        tight = 0.2 / max(min(eps, 5.0), 1e-3)
        out[f"regime/{regime}/token_frac"] = np.clip(share + noise(0.01), 0, 1)
        out[f"regime/{regime}/clip_frac"] = np.clip(0.02 * tight + noise(0.002), 0, 1)
        out[f"regime/{regime}/entropy"] = entropy * {"pos_up": 1.15, "pos_down": 0.9, "neg_up": 1.05, "neg_down": 0.85}[regime]
        out[f"regime/{regime}/weight_mean"] = 1 + noise(0.01)
        out[f"regime/{regime}/clip_mass"] = np.abs(0.01 * tight + noise(0.001))
    return out


def eval_series(run: FakeRun, values: dict[str, np.ndarray]) -> dict[int, dict[str, float]]:
    steps = sorted({0, *range(run.eval_every, run.steps + 1, run.eval_every), run.steps})
    reward = values["reward/mean"]
    out = {}
    for s in steps:
        acc = float(reward[s - 1] if s else 0.3) * 0.9
        out[s] = {"eval/micro/accuracy": acc, "eval/micro/pass_at_4": min(1.0, acc * 1.6)}
    return out


def log_run(client: MlflowClient, experiment_id: str, run: FakeRun, *, t0_ms: int | None = None,
            parent_run_id: str | None = None, tags: dict[str, str] | None = None) -> str:
    """Log `run` as an MLflow run shaped as the trainer logs it; returns its run id."""
    t0 = t0_ms if t0_ms is not None else int(time.time() * 1000) - int(run.steps * run.step_s * 1000) - 60_000
    values = series(run)
    all_tags = {"dispo.kind": "train", "objective": run.objective, "task": "chain_sum", "model": "micro-3m"} | (tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    if run.regime_metrics:
        steps = list(range(1, run.steps + 1))
        verdict = detect_collapse(steps, values, CollapseConfig())
        if verdict.kind:
            all_tags |= {"collapse": verdict.kind, "collapse_step": str(verdict.onset_step)}
    else:
        all_tags = {"source": "other-tool"}  # another tool sets none of the workbench tags
    created = client.create_run(experiment_id, run_name=run.name, start_time=t0, tags=all_tags)
    run_id = created.info.run_id
    params = {"seed": run.seed, "lr": 2e-4, "steps": run.steps, "objective.name": run.objective,
              "model.name": "micro-3m", "collapse.patience": 3}
    params |= {f"objective.params.{k}": v for k, v in run.bounds.items()} if run.objective == "dispo" else {}
    if not run.regime_metrics:
        params = {"learning_rate": 2e-4, "random_seed": run.seed}
    metrics = []
    for key, vals in values.items():
        for i, v in enumerate(vals):
            metrics.append(Metric(key, float(v), t0 + int((i + 1) * run.step_s * 1000), i + 1))
    for s, ev in eval_series(run, values).items():
        metrics += [Metric(k, v, t0 + int(s * run.step_s * 1000) + 500, s) for k, v in ev.items()]
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()], synchronous=True)
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000], synchronous=True)
    client.set_terminated(run_id, "FINISHED", end_time=t0 + int((run.steps * run.step_s + 1) * 1000))
    return run_id


def experiment(client: MlflowClient, name: str = "dispo-wb") -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)


@dataclass
class FakeStudy:
    name: str
    parent_run_id: str
    storage_url: str
    run_ids: list[str]  # training runs, one per (trial, seed)
    trial_runs: dict[int, list[str]]  # trial number -> its training runs
    collapsed_trials: list[int]


def log_study(client: MlflowClient, experiment_id: str, journal: Path, *, name: str = "clip-mini",
              grid: dict[str, list[float]] | None = None, seeds: tuple[int, ...] = (0, 1), steps: int = 30,
              directions: tuple[str, ...] = ("maximize eval/micro/accuracy",),
              collapse_when: dict[str, float] | None = None, step_s: float = 2.0) -> FakeStudy:
    """A finished grid study laid out as sweep.py lays it out.

    Optuna trials live in a journal file; MLflow holds a study parent run, one trial run per
    trial (sampled params, the trial's values at step 0) and one training run per seed nested
    under its trial run. Trials whose bounds are all <= `collapse_when` (default
    eps_neg_up <= 0.01, a too tight `neg_up` bound) collapse into repetition at step
    steps/2 and are PRUNED, unless "collapse" is one of the directions.
    """
    grid = grid or {"eps_neg_up": [0.01, 0.2], "eps_neg_down": [0.05, 0.2]}
    collapse_when = collapse_when if collapse_when is not None else {"eps_neg_up": 0.01}
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.create_study(study_name=name, storage=storage,
                                directions=[d.split()[0] for d in directions])
    metric_keys = [parse_direction(d).key for d in directions]
    study.set_user_attr("directions", list(directions))
    study.set_user_attr("direction_keys", metric_keys)
    parent = client.create_run(experiment_id, run_name=name, tags={
        "dispo.kind": "study", "dispo.study": name, "optuna.storage": str(journal), "optuna.sampler": "grid"})
    keys = list(grid)
    points = np.array(np.meshgrid(*grid.values(), indexing="ij")).reshape(len(keys), -1).T
    prunes = not any("collapse" in d for d in directions)
    run_ids, trial_runs, collapsed_trials = [], {}, []
    t0 = int(time.time() * 1000) - 10_000_000
    for number, point in enumerate(points):
        params = dict(zip(keys, map(float, point)))
        bounds = dict.fromkeys(BOUNDS, 0.2) | params
        collapses = all(bounds[k] <= v for k, v in collapse_when.items())
        trial_run = client.create_run(experiment_id, run_name=f"{name}-t{number:04d}", start_time=t0, tags={
            "mlflow.parentRunId": parent.info.run_id, "dispo.kind": "trial", "dispo.study": name,
            "dispo.trial": str(number)}).info.run_id
        client.log_batch(trial_run, params=[Param(k, str(v)) for k, v in params.items()], synchronous=True)
        ids, accs = [], []
        for seed in seeds:
            fake = FakeRun(f"dispo-micro-3m-s{seed}", kind="repetition" if collapses else "normal",
                           onset=steps // 2, steps=steps, seed=seed, bounds=bounds, step_s=step_s)
            ids.append(log_run(client, experiment_id, fake, parent_run_id=trial_run, t0_ms=t0 + number * 1000,
                               tags={"dispo.study": name, "dispo.trial": str(number), "dispo.seed": str(seed)}))
            accs.append(eval_series(fake, series(fake))[steps]["eval/micro/accuracy"])
            if collapses and prunes:
                break  # a collapse prunes the trial; its other seeds never run
        acc = float(np.mean(accs))
        values = [float(collapses) if "collapse" in d else acc for d in directions]
        attrs = {"mlflow_run_id": trial_run} | ({"collapse": "repetition (seed 0)"} if collapses else {})
        dists = {k: optuna.distributions.CategoricalDistribution(sorted(grid[k])) for k in keys}
        pruned = collapses and prunes
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists, values=None if pruned else values, user_attrs=attrs,
            state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE))
        state = "PRUNED" if pruned else "COMPLETE"
        client.log_batch(trial_run, metrics=[] if pruned else [
            Metric(k, v, t0, 0) for k, v in zip(metric_keys, values)], tags=[
            RunTag("dispo.state", state), *([RunTag("collapse", "repetition")] if collapses else [])], synchronous=True)
        client.set_terminated(trial_run, "FINISHED")
        run_ids += ids
        trial_runs[number] = ids
        if collapses:
            collapsed_trials.append(number)
    client.set_terminated(parent.info.run_id, "FINISHED")
    return FakeStudy(name, parent.info.run_id, str(journal), run_ids, trial_runs, collapsed_trials)


@dataclass
class Store:
    uri: str
    experiment_id: str
    runs: dict[str, str]  # run name -> run id
    study: FakeStudy  # single objective, collapsed trials pruned
    multi: FakeStudy  # two objectives (accuracy, collapse)
    empty_study_parent: str


def build_store(root: Path) -> Store:
    """The runs every report test reads: one of each kind plus two small studies and an empty one."""
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = experiment(client)
    runs = {
        "normal-run": log_run(client, exp, FakeRun("normal-run", steps=40)),
        "rep-run": log_run(client, exp, FakeRun("rep-run", kind="repetition", onset=20, steps=40)),
        "len-run": log_run(client, exp, FakeRun("len-run", kind="length", onset=25, steps=40)),
        "other-tool": log_run(client, exp, FakeRun("other-tool", regime_metrics=False, steps=40)),
    }
    study = log_study(client, exp, root / "clip-mini.journal", name="clip-mini", seeds=(0, 1), steps=30, grid={
        "eps_pos_up": [0.1, 0.3, 1.0], "eps_neg_down": [0.05, 0.2, 1.0], "eps_neg_up": [0.01, 0.2]})
    multi = log_study(client, exp, root / "multi.journal", name="multi", seeds=(0,), steps=20,
                      directions=("maximize eval/micro/accuracy", "minimize collapse"),
                      grid={"eps_pos_up": [0.1, 0.3, 1.0], "eps_neg_up": [0.01, 0.2, 1.0]})
    empty = client.create_run(exp, run_name="empty-study", tags={
        "dispo.kind": "study", "dispo.study": "empty-study", "optuna.storage": str(root / "empty.journal")})
    return Store(uri, exp, runs, study, multi, empty.info.run_id)
