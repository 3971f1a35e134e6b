"""`dispo-wb objectives`, `train` and `eval`: thin commands over workbench.train.launch and the trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from workbench.cli.common import Command, DryRun, Quiet, Settings, TrackingUri, fail, fail_user
from workbench.errors import UserError, disk_full, first_line, full_reason
from workbench.names import FAILED, KILLED

app = typer.Typer()


@app.command(cls=Command)
def objectives() -> None:
    """List the registered objectives with their parameters and defaults, and the recipes (--recipe)."""
    from rich.console import Console
    from rich.table import Table

    from workbench.core.objectives import render_objectives_table
    from workbench.recipes import describe_recipes

    console = Console()
    console.print(render_objectives_table())
    rows = describe_recipes()
    table = Table(title="recipes (--recipe NAME: every part as its paper states)")
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*row.values())
    console.print(table)


@app.command(cls=Command)
def train(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", exists=True, dir_okay=False, help="run config YAML")] = None,
    recipe: Annotated[Optional[str], typer.Option(help="a paper's whole method: grpo, dr_grpo, dapo, cispo, gspo, dispo "
                                                       "(dispo-wb objectives lists its parts)")] = None,
    objective: Annotated[Optional[str], typer.Option(help="registered objective, e.g. dispo, cispo, dapo")] = None,
    eps_pos_up: Annotated[Optional[float], typer.Option(help="DISPO: correct responses, r > 1 (inf: off)")] = None,
    eps_pos_down: Annotated[Optional[float], typer.Option(help="DISPO: correct responses, r < 1 (>= 1: off)")] = None,
    eps_neg_up: Annotated[Optional[float], typer.Option(help="DISPO: incorrect responses, r > 1 (inf: off)")] = None,
    eps_neg_down: Annotated[Optional[float], typer.Option(help="DISPO: incorrect responses, r < 1 (>= 1: off)")] = None,
    eps_low: Annotated[Optional[float], typer.Option(help="PPO family / CISPO lower clip offset")] = None,
    eps_high: Annotated[Optional[float], typer.Option(help="PPO family / CISPO upper clip offset")] = None,
    model: Annotated[Optional[str], typer.Option(help="micro-0.5m | micro-3m | micro-15m | HF id or path")] = None,
    steps: Annotated[Optional[int], typer.Option(help="training steps (rollout batches)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="random seed")] = None,
    lr: Annotated[Optional[float], typer.Option(help="learning rate")] = None,
    updates_per_rollout: Annotated[Optional[int], typer.Option(help="optimizer steps per rollout batch")] = None,
    rollout_lag: Annotated[Optional[int], typer.Option(help="rollouts from a snapshot this many optimizer steps old")] = None,
    experiment: Annotated[Optional[str], typer.Option(help="MLflow experiment")] = None,
    run_name: Annotated[Optional[str], typer.Option(help="MLflow run name")] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads")] = None,
    tracking_uri: TrackingUri = None,
    resume: Annotated[Optional[str], typer.Option(help="continue an interrupted run from its checkpoint")] = None,
    set_: Settings = None,
    quiet: Quiet = False,
    engine: Annotated[Optional[str], typer.Option(help="local (default) | verl | trl: where the run trains")] = None,
    dry_run: DryRun = False,
    engine_arg: Annotated[Optional[list[str]], typer.Option(
        "--engine-arg", metavar="ARG", help="passed to the engine as is, repeatable (verl: trainer.nnodes=2)")] = None,
) -> None:
    """Run one RL training run and log it to MLflow.

    --dry-run is for engine runs (--engine verl|trl): it prints the engine's command and exits.
    """
    from workbench.tracking.location import check_writable_store
    from workbench.train.launch import parse_set_flags, recipe_note, resume_config, run_config_from_cli

    flags = {"recipe": recipe, "objective.name": objective, "objective.params.eps_pos_up": eps_pos_up,
             "objective.params.eps_pos_down": eps_pos_down, "objective.params.eps_neg_up": eps_neg_up,
             "objective.params.eps_neg_down": eps_neg_down, "objective.params.eps_low": eps_low,
             "objective.params.eps_high": eps_high, "model.name": model, "steps": steps, "seed": seed, "lr": lr,
             "updates_per_rollout": updates_per_rollout, "rollout_lag": rollout_lag, "experiment": experiment,
             "run_name": run_name, "threads": threads, "engine": engine}
    try:
        if set_ and resume:
            raise UserError("--set cannot change a resumed run's config; only --steps can")
        settings = parse_set_flags(set_ or [])
        check_writable_store(tracking_uri)
        if resume:
            cfg = resume_config(resume, tracking_uri, {k: v for k, v in flags.items() if k == "steps"})
        else:
            cfg = run_config_from_cli(config, flags, settings)
    except UserError as e:
        fail_user(e)
    note = recipe_note(cfg)
    if note:
        typer.echo(note, err=True)
    if cfg.engine != "local" or dry_run or engine_arg:
        raise typer.Exit(_train_on_engine(cfg, tracking_uri, dry_run, engine_arg or [], resume))
    from workbench.train.trainer import train as run_training  # torch loads only for a config that is valid

    try:
        result = run_training(cfg, tracking_uri=tracking_uri, resume_run_id=resume, progress=not quiet)
    except UserError as e:
        fail_user(e)
    except Exception as e:
        if not disk_full(e):
            raise
        fail(f"disk full: {full_reason(e)}", code=1)
    if result.status == FAILED:  # one line: which run, how far it got, why
        fail(f"run {result.run_id} failed after {result.steps_done} steps: {result.reason}", code=1)
    ev = ", ".join(f"{k} {v:.3f}" for k, v in result.final_eval.items())
    typer.echo(f"run {result.run_id}: {result.status} after {result.steps_done} steps in {result.wall_s:.0f}s; {ev}")
    if result.collapse:
        typer.echo(f"collapse: {result.collapse} from step {result.collapse_step}")
    if result.status == KILLED:
        typer.echo(f"resume with: dispo-wb train --resume {result.run_id}")
        raise typer.Exit(130)


def _train_on_engine(cfg, tracking_uri: str | None, dry_run: bool, engine_args: list[str], resume: str | None) -> int:
    """`--engine verl|trl`: the engine's launcher runs the run (workbench.engines)."""
    from workbench.engines import launcher

    if cfg.engine == "local":
        fail("--dry-run and --engine-arg are for --engine verl or trl; the local trainer takes neither")
    if resume and cfg.engine != "trl":
        fail(f"--resume is for local and trl runs; engine {cfg.engine} keeps no checkpoints the workbench can resume")
    if engine_args and cfg.engine != "verl":
        fail(f"--engine-arg is for --engine verl, not {cfg.engine}")
    try:
        launch = launcher(cfg.engine)
    except ImportError as e:
        fail(f"engine {cfg.engine} is not available in this install: {e}")
    try:
        return launch(cfg, tracking_uri=tracking_uri, dry_run=dry_run, engine_args=engine_args,
                      **({"resume": resume} if resume else {}))
    except UserError as e:
        fail_user(e)


@app.command("eval", cls=Command)
def evaluate(
    checkpoint: Annotated[str, typer.Option(help="a run's checkpoint folder, .cache/checkpoints/<run_id> as train writes it "
                                                 "(scored on the task the run trained on); a saved model folder "
                                                 "(save_pretrained); or a micro model name")],
    benchmark: Annotated[list[str], typer.Option(help="benchmark name, repeatable (micro, aime24, file:PATH?...)")] = ["micro"],
    k: Annotated[int, typer.Option(min=1, help="samples per problem (avg@k, pass@k)")] = 4,
    temperature: Annotated[float, typer.Option(min=0.0, help="sampling temperature; 0 = greedy")] = 1.0,
    limit: Annotated[Optional[int], typer.Option(min=1, help="first N problems only")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="response length limit")] = 48,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    set_: Settings = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Evaluate a saved model on benchmarks: avg@k and pass@k.

    --set takes task.KEY=VALUE over the checkpoint's task; --tracking-uri is read when the
    checkpoint's folder holds no config.yaml (older checkpoints).
    """
    from workbench.train.launch import evaluate_checkpoint, parse_set_flags

    try:
        results = evaluate_checkpoint(checkpoint, benchmark, k=k, temperature=temperature, limit=limit,
                                      max_new_tokens=max_new_tokens, seed=seed, settings=parse_set_flags(set_ or []),
                                      tracking_uri=tracking_uri, echo=typer.echo)
    except UserError as e:
        fail_user(e)
    for key, value in results.items():
        typer.echo(f"{key}\t{value:.4f}")
