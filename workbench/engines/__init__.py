"""Run the workbench's objectives and regime metrics inside existing RL engines.

`local` is the workbench's own single-process trainer (`workbench.train.trainer`). The other
engines train large models with their own distribution (Ray, FSDP, DeepSpeed, vLLM): the
workbench adds its loss functions and metrics to them and reads their runs back from MLflow,
never a distribution layer of its own.
"""

from workbench.params import ENGINES


def launcher(engine: str):
    """`launch(cfg, *, tracking_uri, dry_run, engine_args[, resume]) -> exit code` of an engine, imported lazily
    (each engine lives in its own optional environment)."""
    if engine == "verl":
        from workbench.engines.verl.launch import launch

        return launch
    if engine == "trl":
        from workbench.engines.trl import launch as trl_launch

        return lambda cfg, *, tracking_uri=None, dry_run=False, engine_args=(), resume=None: trl_launch(
            cfg, tracking_uri=tracking_uri, dry_run=dry_run, resume_run_id=resume)  # engine_args: verl only (the CLI refuses them for trl)
    raise ValueError(f"engine {engine!r} has no launcher; engines: {', '.join(ENGINES)}")
