"""Engine check: a few steps of `WorkbenchGRPOTrainer` in 2 processes on CPU, with evidence.

    python -m workbench.engines.trl.check [--nproc 2] [--json out.json]

Creates an MLflow run in a temporary SQLite store as `launch` does, starts the processes with
torchrun (gloo on CPU; `accelerate launch --cpu` would start only one), lets every rank record
the tensors of each micro-batch it hands to the objective, then prints: the world size, whether
old log-probs were present, how far r moved from 1, the largest difference between the loss
TRL back-propagated and `workbench.core.objectives` on the same tensors, whether the logged regime
metrics equal the objective's metrics over both ranks' tokens together, and the regime metric
keys in the MLflow run. The reward is "even completion length" so that an untrained micro
model gets mixed groups and non-zero advantages; the math reward is not under test here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from workbench.names import FAILED, FINISHED, REGIME_PREFIX

CHECK_CONFIG = {
    "engine": "trl", "experiment": "trl-check", "steps": 2, "updates_per_rollout": 2, "rollout_lag": 0, "lr": 0.02, "threads": 1,
    "model": {"name": "micro-0.5m", "device": "cpu"}, "sft": {"enabled": False},
    "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 12},
    "task": {"eval_size": 8}, "eval": {"k": 2, "every": 1},
    "objective": {"name": "dispo", "params": {"eps_pos_up": 0.02, "eps_pos_down": 0.05, "eps_neg_up": 0.01, "eps_neg_down": 0.5}},
}


class EvenLength:
    """1 for a completion with an even number of tokens, else 0: mixed groups without a trained model."""

    __name__ = "even_length"

    def __call__(self, prompts, completions, completion_ids, **_):
        return [float(len(ids) % 2 == 0) for ids in completion_ids]


def _recording_trainer():
    from workbench.engines.trl.trainer import WorkbenchGRPOTrainer

    class Recording(WorkbenchGRPOTrainer):
        """Keeps every micro-batch's objective inputs, its loss and the all-rank metrics."""

        records: list = []

        def _objective_loss(self, logp, old_logp, adv, mask, entropy):
            loss = super()._objective_loss(logp, old_logp, adv, mask, entropy)
            mode = "train" if self.model.training else "eval"
            self.records.append({
                "logp": logp.detach().cpu(), "old_logp": old_logp.detach().cpu(), "adv": adv.detach().cpu(),
                "mask": mask.detach().cpu(), "entropy": entropy.detach().cpu(), "loss": loss.item(),
                "metrics": {k: v for k, v in self.wb_last_metrics.items() if k.startswith((REGIME_PREFIX, "ratio/"))},
            })
            return loss

    return Recording


def worker(config_path: str, out: str) -> None:
    from workbench.config import load_run_config
    from workbench.engines.trl.worker import run

    cfg = load_run_config(config_path)
    trainer = run(cfg, run_id=os.environ["MLFLOW_RUN_ID"], tracking_uri=os.environ["MLFLOW_TRACKING_URI"],
                  output_dir=out, trainer_cls=_recording_trainer(), reward=EvenLength())
    torch.save({"world_size": trainer.accelerator.num_processes, "records": trainer.records},
               Path(out) / f"rank{trainer.accelerator.process_index}.pt")


def _pad_cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    width = max(t.shape[1] for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in tensors])


def _max_gap(got: dict[str, float], want: dict[str, float]) -> float:
    """Largest |got - want| over got's keys; NaN on both sides agrees, NaN on one side counts as inf."""
    gap = 0.0
    for k in got.keys() & want.keys():  # got also has the entropy push, which needs the gradient
        v, w = got[k], want[k]
        if math.isnan(v) and math.isnan(w):
            continue
        gap = max(gap, math.inf if math.isnan(v) or math.isnan(w) else abs(v - w))
    return gap


def analyse(out: Path, nproc: int, cfg, run_id: str, uri: str) -> dict:
    """The check's findings from the ranks' records and the MLflow run."""
    from workbench import tracking
    from workbench.core.objectives import aggregate, get_spec

    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(nproc)]
    spec, params = get_spec(cfg.objective.name), cfg.objective.build_params()
    mode = cfg.objective.aggregation or spec.aggregation
    loss_diff, metric_diff, rank0_gap, abs_dev = 0.0, 0.0, 0.0, 0.0
    for calls in zip(*(r["records"] for r in ranks)):
        for rec in calls:
            per_token, _ = spec.fn(rec["logp"], rec["old_logp"], rec["adv"], rec["mask"], params, entropy=rec["entropy"])
            loss_diff = max(loss_diff, abs(aggregate(per_token, rec["mask"], mode).item() - rec["loss"]))
            r = torch.exp(rec["logp"] - rec["old_logp"])[rec["mask"].bool()]
            abs_dev = max(abs_dev, (r - 1).abs().mean().item())
        union = [_pad_cat([rec[k] for rec in calls]) if k != "adv" else torch.cat([rec[k] for rec in calls])
                 for k in ("logp", "old_logp", "adv", "mask", "entropy")]
        _, want = spec.fn(*union[:4], params, entropy=union[4])
        first = calls[0]
        _, rank0 = spec.fn(first["logp"], first["old_logp"], first["adv"], first["mask"], params, entropy=first["entropy"])
        for rec in calls:
            metric_diff = max(metric_diff, _max_gap(rec["metrics"], want))
        rank0_gap = max(rank0_gap, _max_gap(first["metrics"], rank0))
    run = tracking.resolve_run(run_id, uri)  # as `dispo-wb report` reads it
    keys = sorted(run.metric_keys)
    return {
        "world_size": [r["world_size"] for r in ranks],
        "logged_world_size": run.tags.get("trl.world_size"),
        "micro_batches_per_rank": [len(r["records"]) for r in ranks],
        "old_logps_present": all(len(r["records"]) > 0 for r in ranks),
        "max_mean_abs_ratio_dev": abs_dev,
        "max_loss_diff": loss_diff,
        "max_all_rank_metric_diff": metric_diff,
        "max_gap_to_rank0_only": rank0_gap,  # > 0: rank 0's own tokens alone would have given other values
        "regime_metric_keys": [k for k in keys if k.startswith(REGIME_PREFIX)],
        "metric_keys": keys,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m workbench.engines.trl.check", description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--json", help="also write the findings here")
    p.add_argument("--worker", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker(*a.worker)
        return 0
    from workbench.config import build_run_config, dump_yaml
    from workbench.engines.trl import open_run

    cfg = build_run_config(CHECK_CONFIG)
    with tempfile.TemporaryDirectory(prefix="trl-check-") as tmp:
        out, uri = Path(tmp), f"sqlite:///{tmp}/mlflow.db"
        tracker = open_run(cfg, uri)
        (out / "config.yaml").write_text(dump_yaml(cfg))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.nproc}",
               "-m", "workbench.engines.trl.check", "--worker", str(out / "config.yaml"), str(out)]
        print(shlex.join(cmd), flush=True)
        env = {**os.environ, "MLFLOW_RUN_ID": tracker.run_id, "MLFLOW_TRACKING_URI": uri}
        rc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode
        tracker.finish(FINISHED if rc == 0 else FAILED)
        if rc != 0:
            print(f"error: the {a.nproc} processes exited with {rc}", file=sys.stderr)
            return 1
        found = analyse(out, a.nproc, cfg, tracker.run_id, uri)
    for key in ("world_size", "logged_world_size", "micro_batches_per_rank", "old_logps_present",
                "max_mean_abs_ratio_dev", "max_loss_diff", "max_all_rank_metric_diff", "max_gap_to_rank0_only"):
        print(f"{key:28s} {found[key]}")
    print("regime metric keys in the MLflow run:")
    for k in found["regime_metric_keys"]:
        print(f"  {k}")
    if a.json:
        Path(a.json).write_text(json.dumps(found, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
