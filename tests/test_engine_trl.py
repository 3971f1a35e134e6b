"""TRL engine: config mapping, refusals, key mapping, reward, and a 2-process run on CPU.

Run: .venv/bin/python -m pytest tests/test_engine_trl.py -q
The 2-process test starts `torchrun --nproc_per_node 2` (gloo, use_cpu) through
`python -m workbench.engines.trl.check`; it takes tens of seconds on an idle 2-core machine.
"""

from __future__ import annotations

import math
import os
import re
import sys

import pytest

try:
    import trl  # noqa: F401
except ImportError:
    if os.environ.get("DISPO_REQUIRE_TRL") == "1":
        raise  # `make test`'s main run (its env has the trl extra): these tests must not vanish there
    pytest.skip("the trl extra is not installed (pip install '.[trl]')", allow_module_level=True)

from workbench.config import build_run_config
from workbench.engines.trl import launch
from workbench.engines.trl.bridge import map_logs
from workbench.engines.trl.data import MathReward
from workbench.engines.trl.settings import computes_old_logps, grpo_kwargs, layout
from workbench.engines.trl.trainer import MissingOldLogps, WorkbenchGRPOTrainer

KEY = re.compile(r"^[a-z0-9_/.]+$")
RUNNABLE = {"engine": "trl", "rollout_lag": 0, "sft": {"enabled": False}, "model": {"name": "micro-0.5m", "device": "cpu"}}


def cfg_of(**fields):
    return build_run_config({**RUNNABLE, **fields})


def test_layout_gives_each_rollout_batch_updates_per_rollout_optimizer_steps():
    # 16 prompts x 8 = 128 responses; 16 updates in 2 epochs = 8 minibatches of 16, 8 per process on 2.
    cfg = cfg_of(updates_per_rollout=16, epochs=2)
    assert layout(cfg, 2) == {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
                              "steps_per_generation": 8, "num_iterations": 2}
    assert layout(cfg_of(updates_per_rollout=16, epochs=2, micro_batch_size=4), 2) == {
        "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "steps_per_generation": 16, "num_iterations": 2}
    kw = grpo_kwargs(cfg_of(steps=5, updates_per_rollout=4), world_size=1, output_dir="o", use_cpu=True)
    assert (kw["max_steps"], kw["logging_steps"], kw["num_generations"], kw["beta"], kw["report_to"]) == (20, 4, 8, 0.0, "none")
    # TRL's own rule: old log-probs exist exactly when a generation batch feeds several optimizer steps.
    assert computes_old_logps(1, 8, 2) and computes_old_logps(2, 4, 1)
    assert not computes_old_logps(1, 1, 1) and not computes_old_logps(2, 2, 1)


def _refused(tmp_path, capsys, cfg, **kw):
    store = tmp_path / "m.db"
    rc = launch(cfg, tracking_uri=f"sqlite:///{store}", output_root=str(tmp_path / "out"), **kw)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert not store.exists() and not (tmp_path / "out").exists()  # nothing written
    return err[0]


def test_on_policy_config_is_refused_in_one_line(tmp_path, capsys):
    line = _refused(tmp_path, capsys, cfg_of(updates_per_rollout=1))
    assert "updates_per_rollout=1" in line and "#3120" in line and "updates_per_rollout >= 2" in line


def test_rollout_lag_is_refused(tmp_path, capsys):
    line = _refused(tmp_path, capsys, build_run_config({"engine": "trl"}))  # the default config lags rollouts by 64 steps
    assert "rollout_lag=64" in line and "rollout_lag=0" in line


def test_untested_or_missing_trl_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(trl, "__version__", "1.17.0")
    assert "TRL 1.17.0 is not a tested release" in _refused(tmp_path, capsys, cfg_of())
    monkeypatch.setitem(sys.modules, "trl", None)  # import trl raises ImportError
    assert "pip install '.[trl]'" in _refused(tmp_path, capsys, cfg_of())


def test_dry_run_prints_the_torchrun_command_and_writes_nothing(tmp_path, capsys):
    rc = launch(cfg_of(), tracking_uri=f"sqlite:///{tmp_path}/m.db", dry_run=True, nproc_per_node=2,
                output_root=str(tmp_path / "out"))
    out = capsys.readouterr().out
    assert rc == 0
    assert "torch.distributed.run --standalone --nproc_per_node=2 -m workbench.engines.trl.worker --config" in out
    assert f"MLFLOW_TRACKING_URI=sqlite:///{tmp_path}/m.db" in out
    assert list(tmp_path.iterdir()) == []


def test_trl_logs_map_onto_our_keys():
    logs = {"reward": 0.5, "completions/mean_length": 7.0, "frac_reward_zero_std": 0.25, "entropy": 1.5,
            "grad_norm": 2.0, "clip_ratio/low_mean": 0.1, "regime/neg_up/clip_frac": None, "rewards/x/std": None,
            "ratio/mean": 1.01, "train/accuracy": 0.5, "entropy/mean": 1.25}
    got = map_logs(logs)
    assert got["reward/mean"] == 0.5 and got["response/length_mean"] == 7.0 and got["batch/zero_adv_group_frac"] == 0.25
    assert got["entropy/mean"] == 1.25 and got["trl/entropy"] == 1.5 and got["grad/norm"] == 2.0 and got["trl/clip_ratio/low_mean"] == 0.1
    assert math.isnan(got["regime/neg_up/clip_frac"]) and "trl/rewards/x/std" not in got
    assert all(KEY.match(k) for k in got)


def test_math_reward_scores_with_workbench_rewards_and_reports_per_response():
    logged = []
    reward = MathReward(cfg_of())
    try:
        got = reward(prompts=["3+7=", "3+7="], completions=["3+7=10;\\boxed{10}", "3+7=11;\\boxed{11}"],
                     completion_ids=[[1] * 5, [1, 2, 3, 4, 5, 6]], answer=["10", "10"],
                     log_metric=lambda k, v: logged.append((k, v)))
    finally:
        reward.close()
    assert got == [1.0, 0.0]
    assert ("train/accuracy", 1.0) in logged and ("train/accuracy", 0.0) in logged
    assert ("response/length_correct", 5.0) in logged and ("response/length_incorrect", 6.0) in logged


def test_a_batch_without_old_logps_is_an_error():
    with pytest.raises(MissingOldLogps, match="r would be 1"):
        WorkbenchGRPOTrainer._policy_terms(None, None, {"advantages": None})


@pytest.mark.slow
def test_two_processes_train_with_our_objective_and_log_all_rank_metrics(tmp_path):
    import json

    from workbench.engines.trl import check

    assert check.main(["--nproc", "2", "--json", str(tmp_path / "found.json")]) == 0
    found = json.loads((tmp_path / "found.json").read_text())
    assert found["world_size"] == [2, 2] and found["logged_world_size"] == "2"
    assert found["old_logps_present"] and min(found["micro_batches_per_rank"]) >= 4
    assert found["max_mean_abs_ratio_dev"] > 1e-3  # r moved away from 1, so the bounds can act
    assert found["max_loss_diff"] < 1e-6  # TRL back-propagated workbench.core.objectives' loss
    assert found["max_all_rank_metric_diff"] < 1e-9  # logged metrics = objective over both ranks' tokens
    assert found["max_gap_to_rank0_only"] > 0  # ... which rank 0's tokens alone would not give
    keys = set(found["metric_keys"])
    regimes = {f"regime/{r}/{s}" for r in ("pos_up", "pos_down", "neg_up", "neg_down")
               for s in ("token_frac", "clip_frac", "weight_mean", "clip_mass", "entropy")}
    assert regimes <= keys
    assert {"ratio/abs_dev_mean", "loss/policy", "reward/mean", "response/length_mean", "entropy/mean",
            "batch/zero_adv_group_frac", "perf/step_s", "eval/micro/accuracy", "eval/micro/pass_at_2"} <= keys
    assert all(KEY.match(k) for k in keys)


def test_overlong_penalty_is_the_local_one_as_a_trl_reward():
    import torch

    from workbench.core.advantages import overlong_penalty
    from workbench.engines.trl.data import OverlongPenalty

    cfg = cfg_of(overlong={"enabled": True, "buffer": 4, "factor": 1.0}, rollout={"max_new_tokens": 10})
    ids = [[1] * n for n in (3, 6, 8, 10)]
    got = OverlongPenalty(cfg)(prompts=[""] * 4, completions=[""] * 4, completion_ids=ids)
    assert got == overlong_penalty(torch.tensor([3, 6, 8, 10]), 10, 4, 1.0).tolist() == [0.0, 0.0, -0.5, -1.0]


# --- resume and stop ---------------------------------------------------------------------------


def test_resume_without_a_trl_checkpoint_is_one_line_and_writes_nothing(tmp_path, capsys):
    err = _refused(tmp_path, capsys, cfg_of(), resume_run_id="abc123")
    assert "--resume: TRL run abc123 has no checkpoint" in err


def test_trl_saves_its_own_checkpoints_every_checkpoint_every_steps():
    kw = grpo_kwargs(cfg_of(updates_per_rollout=4, checkpoint_every=5), world_size=1, output_dir="o", use_cpu=True)
    assert (kw["save_strategy"], kw["save_steps"]) == ("steps", 20)


def _collapse_feed(cfg, lengths, run_id=None, uri=None):
    """Feed a CollapseStop one TRL log per step (lengths as TRL's completions/mean_length); returns (stopped at, callback)."""
    from types import SimpleNamespace

    from transformers import TrainerControl

    from workbench.engines.trl.stop import CollapseStop

    cb = CollapseStop(cfg, run_id, uri)
    for i, length in enumerate(lengths, start=1):
        control = TrainerControl()
        state = SimpleNamespace(global_step=i * cfg.updates_per_rollout, is_world_process_zero=True)
        cb.on_log(None, state, control, logs={"completions/mean_length": length, "completions/clipped_ratio": 0.0})
        if control.should_training_stop:
            return i, cb
    return None, cb


def test_a_collapse_stops_the_trl_run_and_tags_it_like_a_local_one(tmp_path):
    from workbench import tracking

    uri = f"sqlite:///{tmp_path}/m.db"
    lengths = [40, 41, 39, 40, 40, 9, 8, 8, 7, 7]
    cfg = cfg_of(collapse={"patience": 3, "stop": True})
    run = tracking.RunTracker(experiment="e", run_name="r", tracking_uri=uri)
    stopped, cb = _collapse_feed(cfg, lengths, run.run_id, uri)
    assert stopped == 8 and cb.collapse == ("length", 6)  # 9 < 0.35 x 40 from step 6, three steps running
    tags = tracking.run_info(run.run_id, uri)["tags"]
    assert (tags["collapse"], tags["collapse_step"], tags["stopped_early"]) == ("length", "6", "true")
    # Without collapse.stop the verdict is recorded and the run goes on.
    stopped, cb = _collapse_feed(cfg_of(collapse={"patience": 3}), lengths)
    assert stopped is None and cb.collapse == ("length", 6)


@pytest.mark.slow
def test_a_trl_run_resumes_from_its_own_checkpoint(tmp_path, monkeypatch):
    from transformers import TrainerCallback

    from workbench import tracking
    from workbench.engines.trl import check, worker

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/m.db"
    cfg = build_run_config({**check.CHECK_CONFIG, "steps": 2, "checkpoint_every": 1, "eval": {"every": 100, "k": 1}})
    run = tracking.RunTracker(experiment="e", run_name="r", tracking_uri=uri)
    steps_done = []

    class Count(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            steps_done.append(state.global_step)

    class Counting(worker.WorkbenchGRPOTrainer):
        def __init__(self, *a, callbacks=(), **kw):
            super().__init__(*a, callbacks=[*callbacks, Count()], **kw)

    out = str(tmp_path / "out")
    first = worker.run(cfg, run_id=run.run_id, tracking_uri=uri, output_dir=out, trainer_cls=Counting,
                       reward=check.EvenLength())
    assert first.state.global_step == 4 and launch_last(out).endswith("checkpoint-4")
    steps_done.clear()
    more = cfg.model_copy(update={"steps": 3})
    second = worker.run(more, run_id=run.run_id, tracking_uri=uri, output_dir=out, trainer_cls=Counting,
                        reward=check.EvenLength(), resume=True)
    assert second.state.global_step == 6 and steps_done == [5, 6]  # only the third rollout batch's two updates
    logged = tracking.metric_histories(run.run_id, ["loss/policy"], uri)["loss/policy"]
    assert [s for s, _ in logged] == [1, 2, 3]


def launch_last(out):
    from workbench.engines.trl import last_checkpoint

    return last_checkpoint(out)
