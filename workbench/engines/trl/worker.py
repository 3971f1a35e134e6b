"""One process of a TRL run: `python -m torch.distributed.run ... -m workbench.engines.trl.worker`.

Started by `workbench.engines.trl.launch` (or by hand on each node, or under `accelerate
launch`), it trains `--config` with `WorkbenchGRPOTrainer` and logs into the existing MLflow
run `--run-id`; the world size and ranks come from the launcher's environment.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from workbench.config import RunConfig, load_run_config
from workbench.engines.trl.bridge import MlflowBridge
from workbench.engines.trl.data import MathReward, OverlongPenalty, build_dataset
from workbench.engines.trl.evaluation import HeldOutEval
from workbench.engines.trl.settings import grpo_kwargs
from workbench.engines.trl.stop import CollapseStop
from workbench.engines.trl.trainer import WorkbenchGRPOTrainer
from workbench.models.policy import is_micro
from workbench.train.sft import warm_start


def run(cfg: RunConfig, *, run_id: str, tracking_uri: str | None, output_dir: str,
        trainer_cls: type = WorkbenchGRPOTrainer, reward=None, resume: bool = False):
    """Train `cfg` in this process of the launcher's world; returns the trainer.

    `reward` replaces the math reward (the engine check uses one that needs no trained model).
    """
    from trl import GRPOConfig

    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if torch.cuda.is_available() and cfg.model.device != "cpu":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # so "cuda" below is this rank's device
    model, tokenizer, _ = warm_start(cfg, log=print if rank == 0 else (lambda _: None))
    use_cpu = next(model.parameters()).device.type == "cpu"
    kwargs = grpo_kwargs(cfg, world_size=world_size, output_dir=output_dir, use_cpu=use_cpu)
    server = os.environ.get("DISPO_WB_VLLM_SERVER")  # base URL of `trl vllm-serve`; colocated vLLM otherwise
    if kwargs["use_vllm"] and server:
        kwargs.update(vllm_mode="server", vllm_server_base_url=server)
    args = GRPOConfig(**kwargs)
    chat = not is_micro(cfg.model.name) and bool(getattr(tokenizer, "chat_template", None))
    reward = reward or MathReward(cfg)
    trainer = trainer_cls(
        model=model, reward_funcs=[reward, *([OverlongPenalty(cfg)] if cfg.overlong.enabled else [])], args=args, train_dataset=build_dataset(cfg, chat=chat),
        processing_class=tokenizer,
        callbacks=[MlflowBridge(run_id, tracking_uri, cfg.updates_per_rollout), HeldOutEval(cfg, tokenizer, run_id, tracking_uri),
                   CollapseStop(cfg, run_id, tracking_uri)],
        objective=cfg.objective.name, params=cfg.objective.build_params(), aggregation=cfg.objective.aggregation,
    )
    try:
        trainer.train(resume_from_checkpoint=True if resume else None)  # True: the last checkpoint in output_dir
    finally:
        if hasattr(reward, "close"):
            reward.close()
    return trainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="workbench.engines.trl.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="resolved run config (YAML)")
    parser.add_argument("--run-id", default=os.environ.get("MLFLOW_RUN_ID"), help="MLflow run to log into")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    parser.add_argument("--output-dir", required=True, help="TRL's output directory")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    a = parser.parse_args(argv)
    if not a.run_id:
        print("error: --run-id (or MLFLOW_RUN_ID) is required: the run is created by dispo-wb train --engine trl",
              file=sys.stderr)
        return 2
    run(load_run_config(a.config), run_id=a.run_id, tracking_uri=a.tracking_uri, output_dir=a.output_dir, resume=a.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
