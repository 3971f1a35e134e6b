"""Run the workbench's objectives and regime metrics inside existing RL engines.

`local` is the workbench's own single-process trainer (`workbench.trainer`). The other
engines train large models with their own distribution (Ray, FSDP, DeepSpeed, vLLM): the
workbench adds its loss functions and metrics to them and reads their runs back from MLflow,
never a distribution layer of its own.
"""

ENGINES: tuple[str, ...] = ("local", "verl", "trl")
