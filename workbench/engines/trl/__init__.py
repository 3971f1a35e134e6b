"""Train in TRL's `GRPOTrainer` with the workbench's objectives, metrics and MLflow store.

`launch(cfg)` checks the config, creates the MLflow run (our params and tags, `engine=trl`),
writes the resolved config next to TRL's output, prints the `torchrun` command and runs it:
every process trains `WorkbenchGRPOTrainer` (trainer.py) and rank 0 logs into that run under
our keys (bridge.py). When the processes end it sets the run's status and its collapse tags
from the stored series, as the local trainer does.

The subclass overrides TRL's private `_compute_loss`, so TRL is pinned to the release tested
here (`TESTED_TRL`); another release stops with one line.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from workbench.config import RunConfig, dump_yaml, flatten
from workbench.names import FAILED, FINISHED, KILLED, KIND_TRAIN, TAG_COLLAPSE, TAG_COLLAPSE_STEP, TAG_KIND
from workbench.errors import UserError, first_line

TESTED_TRL = ("1.16.",)  # release prefixes whose `GRPOTrainer._compute_loss` this adapter was tested against
EXTRA = "pip install '.[trl]'"


def check_trl() -> str:
    """TRL's version; UserError when it is missing or not a tested release."""
    try:
        import trl
    except ImportError:
        raise UserError(f"engine trl: TRL is not installed; install the extra: {EXTRA}") from None
    if not trl.__version__.startswith(TESTED_TRL):
        raise UserError(f"engine trl: TRL {trl.__version__} is not a tested release ({', '.join(v + 'x' for v in TESTED_TRL)}); "
                        f"the adapter overrides a private method; install the extra: {EXTRA}")
    return trl.__version__


def default_nproc() -> int:
    """Processes per node: DISPO_WB_NPROC, else one per visible CUDA device, else 1."""
    if os.environ.get("DISPO_WB_NPROC"):
        return int(os.environ["DISPO_WB_NPROC"])
    import torch

    return torch.cuda.device_count() or 1


def command(config_path: str, output_dir: str, nproc_per_node: int, launcher_args: list[str] | None = None,
            resume: bool = False) -> list[str]:
    """The torchrun command line of a run; `launcher_args` replace `--standalone` (e.g. --nnodes/--rdzv-endpoint)."""
    rdzv = list(launcher_args) if launcher_args else ["--standalone"]
    return [sys.executable, "-m", "torch.distributed.run", *rdzv, f"--nproc_per_node={nproc_per_node}",
            "-m", "workbench.engines.trl.worker", "--config", config_path, "--output-dir", output_dir,
            *(["--resume"] if resume else [])]


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest `checkpoint-<step>` folder TRL saved in `output_dir`, or None."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None


def run_params(cfg: RunConfig) -> dict:
    """MLflow params as the local trainer logs them: the flat config and the objective's resolved parameters."""
    from workbench.core.objectives import get_spec

    params = flatten(cfg.model_dump(mode="python"))
    params.pop("objective.params", None)
    params.update({f"objective.params.{k}": v for k, v in dataclasses.asdict(cfg.objective.build_params()).items()})
    params["objective.aggregation"] = cfg.objective.aggregation or get_spec(cfg.objective.name).aggregation
    return params


def open_run(cfg: RunConfig, uri: str | None):
    """Our MLflow run for an engine run of `cfg`: the local trainer's params and tags, plus `engine=trl`."""
    from workbench import tracking
    from workbench.train.launch import recipe_tags

    tags = {"engine": "trl", "trl.version": check_trl(), "objective": cfg.objective.name, "task": cfg.task.name,
            "model": cfg.model.name, "git_commit": tracking.git_commit(), TAG_KIND: KIND_TRAIN, **recipe_tags(cfg)}
    return tracking.RunTracker(experiment=cfg.experiment, run_name=cfg.resolved_run_name(), tracking_uri=uri,
                               params=run_params(cfg), tags=tags, artifacts={"config.yaml": dump_yaml(cfg)})


def launch(cfg: RunConfig, *, tracking_uri: str | None = None, dry_run: bool = False,
           nproc_per_node: int | None = None, output_root: str = ".cache/trl", resume_run_id: str | None = None) -> int:
    """Run `cfg` under TRL in `nproc_per_node` processes; returns the exit code (2: bad input, one line on stderr).

    With dry_run the torchrun command is printed and nothing is written. Extra torchrun
    arguments for several nodes come from DISPO_WB_TORCHRUN_ARGS (they replace --standalone).
    `resume_run_id` continues that run from TRL's last checkpoint in `output_root/<run id>`,
    logging into the same MLflow run (`dispo-wb train --resume RUN_ID`).
    """
    try:
        return _launch(cfg, tracking_uri, dry_run, nproc_per_node, output_root, resume_run_id)
    except UserError as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return 2


def _launch(cfg: RunConfig, tracking_uri: str | None, dry_run: bool, nproc_per_node: int | None, output_root: str,
            resume_run_id: str | None = None) -> int:
    from workbench.engines.trl.settings import layout, refusals

    engine = getattr(cfg, "engine", "trl")
    if engine != "trl":
        raise UserError(f"engine {engine!r} is not the trl engine")
    check_trl()
    problems = refusals(cfg)
    if problems:
        raise UserError(problems[0])
    nproc = nproc_per_node or default_nproc()
    launcher_args = shlex.split(os.environ.get("DISPO_WB_TORCHRUN_ARGS", ""))
    layout(cfg, nproc)  # per node; the worker checks the whole world again
    from workbench import tracking

    uri = tracking.resolve_tracking_uri(tracking_uri)
    if resume_run_id and last_checkpoint(Path(output_root) / resume_run_id) is None:
        raise UserError(f"--resume: TRL run {resume_run_id} has no checkpoint in {Path(output_root) / resume_run_id} "
                        f"(TRL saves one every checkpoint_every={cfg.checkpoint_every} steps)")
    if dry_run:
        out = f"{output_root}/RUN_ID"
        cmd = command(f"{out}/config.yaml", out, nproc, launcher_args)
        print(f"MLFLOW_TRACKING_URI={shlex.quote(uri)} MLFLOW_RUN_ID=RUN_ID {shlex.join(cmd)}")
        return 0
    from workbench.models.policy import is_micro

    if cfg.sft.enabled and is_micro(cfg.model.name):
        from workbench.train.sft import warm_start

        try:
            warm_start(cfg)  # build the cached warm start once, before the processes load it
        except ValueError as e:
            raise UserError(str(e)) from None
    if resume_run_id:
        tracker = tracking.RunTracker(experiment=cfg.experiment, run_name=cfg.resolved_run_name(), tracking_uri=uri,
                                      resume_run_id=resume_run_id)
    else:
        tracker = open_run(cfg, uri)
    out = Path(output_root) / tracker.run_id
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_yaml(cfg))
    cmd = command(str(out / "config.yaml"), str(out), nproc, launcher_args, resume=bool(resume_run_id))
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": tracker.run_id}
    print(f"MLFLOW_TRACKING_URI={shlex.quote(uri)} MLFLOW_RUN_ID={tracker.run_id} {shlex.join(cmd)}", flush=True)
    t0 = time.time()
    try:
        rc = subprocess.run(cmd, env=env).returncode
    except KeyboardInterrupt:
        tracker.finish(KILLED, "interrupted")
        return 130
    tracker.set_tags({"trl.exit_code": rc, "trl.wall_s": round(time.time() - t0, 1)})
    _tag_collapse(tracker, cfg, uri)
    if rc != 0:
        tracker.finish(FAILED, f"torchrun exited with {rc}")
        return 1
    tracker.finish(FINISHED)
    return 0


def _tag_collapse(tracker, cfg: RunConfig, uri: str) -> None:
    """The local trainer's collapse verdict, from the series rank 0 stored."""
    from workbench import tracking
    from workbench.metrics.collapse import SIGNALS, detect_collapse

    series = tracking.metric_histories(tracker.run_id, list(SIGNALS.values()), uri)
    steps = sorted({s for v in series.values() for s, _ in v})
    if not steps:
        return
    by_key = {k: dict(v) for k, v in series.items()}
    nan = float("nan")
    verdict = detect_collapse(steps, {k: [by_key.get(k, {}).get(s, nan) for s in steps] for k in SIGNALS.values()},
                              cfg.collapse)
    if verdict.kind:
        tracker.set_tags({TAG_COLLAPSE: verdict.kind, TAG_COLLAPSE_STEP: verdict.onset_step})


__all__ = ["launch", "check_trl", "command", "TESTED_TRL"]
