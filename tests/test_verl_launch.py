"""`dispo-wb train --engine verl` without verl: the overrides a run config becomes, the metric
key mapping, the read-back of an engine run from MLflow, and bad engine input.

These run in the main environment (no verl needed); tests/test_verl_engine.py runs verl's own
code in verl's environment. Run: pytest tests/test_verl_launch.py
"""

import math
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from workbench.cli.app import app
from workbench.config import RunConfig, build_run_config
from workbench.engines import ENGINES
from workbench.engines.verl import launch
from workbench.engines.verl.keys import translate_history, translate_step
from workbench.errors import UserError
from workbench.sweep.study_file import parse_study

GOLDEN = Path(__file__).parent / "golden"
runner = CliRunner()

DISPO = {"objective": {"name": "dispo", "params": {"eps_pos_up": 0.1, "eps_pos_down": 1.0, "eps_neg_up": 0.05,
                                                    "eps_neg_down": math.inf, "mask_mode": True}},
         "rollout": {"prompts_per_step": 32, "group_size": 16, "max_new_tokens": 3072},
         "updates_per_rollout": 16, "epochs": 2, "lr": 1e-6, "steps": 100, "model": {"name": "Qwen/Qwen2.5-Math-1.5B"},
         "rollout_lag": 0,
         "experiment": "scale", "run_name": "dispo-1p5b"}


def _overrides(data: dict) -> list[str]:
    return launch.verl_overrides(build_run_config(data), model_path="/models/m", train_file="/data/train.parquet",
                                 val_file="/data/val.parquet", prompt_length=1024, reward_file="/wb/reward.py")


@pytest.mark.parametrize("name, data", [
    ("verl_overrides_dispo.txt", DISPO),
    ("verl_overrides_dapo.txt", {**DISPO, "objective": {"name": "dapo", "params": {"eps_high": 0.3}}, "advantage": "dr_grpo"}),
])
def test_overrides_match_the_golden_file(name, data):
    # The golden files are the whole command line, one override per line; read them to review a change.
    assert _overrides(data) == (GOLDEN / name).read_text().splitlines()


def test_overrides_carry_each_setting_where_verl_reads_it():
    got = dict(o.lstrip("+").split("=", 1) for o in _overrides(DISPO))
    a = "actor_rollout_ref.actor."
    # 16 updates per rollout = 2 epochs x 8 mini-batches of 32/8 = 4 prompts (64 responses)
    assert got[a + "ppo_epochs"] == "2" and got[a + "ppo_mini_batch_size"] == "4"
    assert got[a + "policy_loss.loss_mode"] == "wb_dispo"
    assert got[a + "policy_loss._target_"] == "workbench.engines.verl.config.WorkbenchPolicyLossConfig"
    assert (got[a + "policy_loss.eps_pos_up"], got[a + "policy_loss.eps_neg_down"]) == ("0.1", "inf")
    assert got[a + "policy_loss.mask_mode"] == "true"
    assert got[a + "loss_agg_mode"] == "token-mean" and got["actor_rollout_ref.rollout.n"] == "16"
    assert got["trainer.logger"] == "[console,mlflow]" and got["trainer.total_training_steps"] == "100"
    assert a + "clip_ratio_low" not in got  # dispo's bounds are not smuggled through verl's clip fields


def test_recipe_parts_outside_the_loss_become_verls_group_filter_and_dapo_reward_manager():
    got = dict(o.lstrip("+").split("=", 1) for o in _overrides({**DISPO, "recipe": "dapo", "objective": {},
                                                                "overlong": {"buffer": 512, "factor": 0.5}}))
    assert got["algorithm.filter_groups.enable"] == "true" and got["algorithm.filter_groups.metric"] == "reward"
    assert got["reward.reward_manager.name"] == "dapo"
    kw = "reward.reward_kwargs."
    assert (got[kw + "max_resp_len"], got[kw + "overlong_buffer_cfg.len"], got[kw + "overlong_buffer_cfg.penalty_factor"]) \
        == ("3072", "512", "0.5")
    assert not any("filter_groups" in o or "reward_kwargs" in o for o in _overrides(DISPO))


def test_prompts_must_split_into_the_minibatches():
    with pytest.raises(UserError, match="multiple of updates_per_rollout/epochs"):
        _overrides({**DISPO, "rollout": {"prompts_per_step": 12, "group_size": 8}})


def test_engine_names_are_the_registry_of_engines():
    assert RunConfig.model_fields["engine"].annotation.__args__ == ENGINES


def test_study_engine_at_the_top_is_every_trial_s_engine(tmp_path):
    study = parse_study({"engine": "verl", "sampler": "grid", "base": {"steps": 2},
                         "space": {"eps_neg_up": [0.1, 0.2]}}, tmp_path / "s.yaml")
    assert study.base.engine == "verl"
    assert study.run_config(study.overrides({"eps_neg_up": 0.1}), seed=3).engine == "verl"


def test_verl_keys_become_ours_with_regime_sums_divided_after_reduction():
    verl = {"actor/pg_loss": 0.5, "actor/grad_norm": 2.0, "response_length/mean": 30.0,
            "response_length/clip_ratio": 0.25, "critic/score/mean": 0.4, "timing_s/step": 12.0,
            "val-core/micro/reward/mean_at_4": 0.3, "val-core/micro/reward/best_at_4/mean": 0.6,
            "actor/wb/nonzero_tokens": 40.0, "actor/wb/tokens": 50.0, "actor/wb/ratio_sum": 51.0,
            "actor/wb/abs_dev_sum": 2.5}
    for i, regime in enumerate(("pos_up", "pos_down", "neg_up", "neg_down")):  # kept + clipped parts of each regime
        verl |= {f"actor/wb/{regime}/kept/tokens": 10.0 - i, f"actor/wb/{regime}/clipped/tokens": float(i),
                 f"actor/wb/{regime}/kept/clipped": 0.0, f"actor/wb/{regime}/clipped/clipped": float(i),
                 f"actor/wb/{regime}/kept/weight_sum": 6.0, f"actor/wb/{regime}/clipped/weight_sum": 4.0,
                 f"actor/wb/{regime}/kept/moved_sum": 0.0, f"actor/wb/{regime}/clipped/moved_sum": 0.5,
                 f"actor/wb/{regime}/kept/ratio_sum": 7.0, f"actor/wb/{regime}/clipped/ratio_sum": 3.0}
    ours = translate_step(verl)
    assert ours["loss/policy"] == 0.5 and ours["grad/norm"] == 2.0 and ours["perf/step_s"] == 12.0
    assert ours["response/length_mean"] == 30.0 and ours["response/truncated_frac"] == 0.25
    assert ours["reward/mean"] == ours["train/accuracy"] == 0.4
    assert ours["eval/micro/accuracy"] == 0.3 and ours["eval/micro/pass_at_4"] == 0.6
    assert ours["regime/neg_down/clip_frac"] == 0.3 and ours["regime/pos_up/token_frac"] == 0.25
    assert ours["regime/pos_up/clip_mass"] == 0.05 and ours["ratio/abs_dev_mean"] == 0.05
    series = translate_history({"response_length/mean": [(1, 30.0), (2, 20.0)], "actor/entropy": [(2, 1.5)]})
    assert series == {"response/length_mean": [(1, 30.0), (2, 20.0)], "entropy/mean": [(2, 1.5)]}


FAKE_VERL = textwrap.dedent('''
    """Stands in for verl's trainer: logs verl's keys into MLFLOW_RUN_ID as verl's MLflow logger does."""
    import os, sys
    import mlflow
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    with mlflow.start_run(run_id=os.environ["MLFLOW_RUN_ID"]):
        for step, length in enumerate([40, 41, 39, 40, 40, 9, 8, 8, 7], start=1):
            metrics = {"response_length/mean": length, "actor/entropy": 1.0 / step}
            if step % 3 == 0:
                metrics["val-core/micro/reward/mean_at_4"] = step / 10
            mlflow.log_metrics(metrics, step=step)
    sys.exit(int(os.environ.get("FAKE_VERL_EXIT", "0")))
''')


@pytest.mark.parametrize("exit_code, status", [(0, "FINISHED"), (3, "FAILED")])
def test_an_engine_run_is_read_back_from_its_mlflow_run(tmp_path, monkeypatch, exit_code, status):
    script = tmp_path / "fake_verl.py"
    script.write_text(FAKE_VERL)
    monkeypatch.setenv("FAKE_VERL_EXIT", str(exit_code))
    monkeypatch.setattr(launch, "check_available", lambda: None)
    monkeypatch.setattr(launch, "check_registered", lambda objective: None)
    monkeypatch.setattr(launch, "check_config", lambda cfg, engine_args=(): None)
    monkeypatch.setattr(launch, "prepare", lambda cfg: ([], tmp_path))
    monkeypatch.setattr(launch, "verl_command", lambda overrides, engine_args=(): [sys.executable, str(script)])
    uri = f"sqlite:///{tmp_path}/m.db"
    seen = []
    cfg = build_run_config({"engine": "verl", "rollout_lag": 0, "collapse": {"patience": 3}})
    result = launch.train(cfg, tracking_uri=uri, on_eval=lambda step, m: seen.append((step, m)) or False,
                          echo=lambda line: None)
    assert result.status == status
    assert result.final_eval == {"eval/micro/accuracy": 0.9} and result.best_eval == {"eval/micro/accuracy": 0.9}
    assert seen == [(3, {"eval/micro/accuracy": 0.3}), (6, {"eval/micro/accuracy": 0.6}), (9, {"eval/micro/accuracy": 0.9})]
    assert (result.collapse, result.collapse_step) == ("length", 6)  # 9 < 0.35 x 40 from step 6, three steps running
    from workbench import tracking

    info = tracking.run_info(result.run_id, uri)
    assert info["tags"]["engine"] == "verl" and info["tags"]["collapse"] == "length"
    assert info["params"]["engine"] == "verl" and info["status"] == status
    assert tracking.metric_histories(result.run_id, ["response/length_mean"], uri)["response/length_mean"][-1] == (9, 7.0)


@pytest.mark.parametrize("args, message", [
    (["--engine", "nope"], "engine: must be one of 'local', 'verl' or 'trl'"),
    (["--engine", "verl", "--rollout-lag", "0"], "verl is not installed in this environment"),
    (["--engine", "verl", "--objective", "ppo2"], "unknown objective 'ppo2'"),
    (["--engine", "verl", "--dry-run", "--rollout-lag", "8"], "engine verl: rollout_lag=8 has no verl counterpart"),
    (["--dry-run"], "--dry-run and --engine-arg are for --engine verl or trl"),
    (["--engine", "trl", "--engine-arg", "x=1"], "--engine-arg is for --engine verl, not trl"),
])
def test_bad_engine_input_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "verl" else _find_spec(name, *a))
    out = runner.invoke(app, ["train", "--tracking-uri", f"sqlite:///{tmp_path}/m.db", *args])
    assert out.exit_code == 2, out.output
    assert message in out.output
    assert len([line for line in out.output.splitlines() if line.startswith("error:")]) == 1
    assert not (tmp_path / "m.db").exists() and not (tmp_path / ".cache").exists()


def test_dry_run_prints_the_verl_command_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = runner.invoke(app, ["train", "--engine", "verl", "--dry-run", "--rollout-lag", "0",
                              "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--engine-arg", "trainer.n_gpus_per_node=8"])
    assert out.exit_code == 0, out.output
    line = out.output.strip()
    assert "-m verl.trainer.main_ppo" in line and "actor_rollout_ref.actor.policy_loss.loss_mode=wb_dispo" in line
    assert line.endswith("trainer.n_gpus_per_node=8")
    assert not (tmp_path / "m.db").exists() and not (tmp_path / ".cache").exists()


from importlib.util import find_spec as _find_spec  # noqa: E402  (the real one, for the patched lookup)


def test_a_verl_study_trains_each_seed_as_a_verl_job_read_back_like_the_trainer():
    from tests import fake_trainer
    from workbench.sweep import engine_train_fn

    assert engine_train_fn("local", fake_trainer.train) is fake_trainer.train
    assert engine_train_fn("verl", fake_trainer.train) is launch.train
    with pytest.raises(UserError, match="sweeps do not run on engine trl yet"):
        engine_train_fn("trl", fake_trainer.train)


FAKE_VERL_ROLLOUTS = textwrap.dedent('''
    """Stands in for verl: logs verl's keys (with the wb_* losses' regime sums) and dumps each step's rollouts
    into trainer.rollout_data_dir as verl's trainer does (<step>.jsonl: output, gts, score, step)."""
    import json, os, sys
    import mlflow
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    rollouts = sys.argv[1]
    os.makedirs(rollouts, exist_ok=True)
    with mlflow.start_run(run_id=os.environ["MLFLOW_RUN_ID"]):
        for step in range(1, 9):
            loops = step >= 4  # from step 4 the policy repeats itself
            rows = [{"output": "1111111111111111" if loops else "12+3=15 \\\\boxed{15}", "gts": "15", "score": 0.0 if loops else 1.0, "step": step},
                    {"output": "7777777777" if loops else "7+8=14", "gts": "15", "score": 0.0, "step": step}]
            with open(os.path.join(rollouts, f"{step}.jsonl"), "w") as f:
                f.writelines(json.dumps(r) + "\\n" for r in rows)
            metrics = {"response_length/mean": 12.0, "actor/entropy": 1.0, "critic/score/mean": 0.5,
                       "actor/wb/tokens": 20.0, "actor/wb/nonzero_tokens": 20.0, "actor/wb/ratio_sum": 20.0, "actor/wb/abs_dev_sum": 1.0}
            for regime in ("pos_up", "pos_down", "neg_up", "neg_down"):
                metrics |= {f"actor/wb/{regime}/kept/tokens": 4.0, f"actor/wb/{regime}/clipped/tokens": 1.0,
                            f"actor/wb/{regime}/kept/clipped": 0.0, f"actor/wb/{regime}/clipped/clipped": 1.0,
                            f"actor/wb/{regime}/kept/weight_sum": 4.0, f"actor/wb/{regime}/clipped/weight_sum": 1.0,
                            f"actor/wb/{regime}/kept/moved_sum": 0.0, f"actor/wb/{regime}/clipped/moved_sum": 0.5,
                            f"actor/wb/{regime}/kept/ratio_sum": 4.0, f"actor/wb/{regime}/clipped/ratio_sum": 1.0}
            mlflow.log_metrics(metrics, step=step)
''')


def test_a_verl_run_carries_the_missions_response_metrics_and_regimes_under_local_names(tmp_path, monkeypatch):
    from workbench import tracking
    from workbench.models.policy import build_char_tokenizer

    script = tmp_path / "fake_verl.py"
    script.write_text(FAKE_VERL_ROLLOUTS)
    build_char_tokenizer().save_pretrained(tmp_path / "model")
    monkeypatch.setattr(launch, "check_available", lambda: None)
    monkeypatch.setattr(launch, "check_registered", lambda objective: None)
    monkeypatch.setattr(launch, "check_config", lambda cfg, engine_args=(): None)
    monkeypatch.setattr(launch, "prepare", lambda cfg: ([f"actor_rollout_ref.model.path={tmp_path / 'model'}"], tmp_path))
    monkeypatch.setattr(launch, "verl_command",
                        lambda overrides, engine_args=(): [sys.executable, str(script), str(tmp_path / "rollouts")])
    uri = f"sqlite:///{tmp_path}/m.db"
    cfg = build_run_config({"engine": "verl", "rollout_lag": 0, "collapse": {"patience": 3}})
    result = launch.train(cfg, tracking_uri=uri, echo=lambda line: None)
    assert result.status == "FINISHED"
    keys = ["response/repetition_rate", "response/length_correct", "response/length_incorrect",
            "regime/neg_up/clip_frac", "regime/pos_down/token_frac"]
    got = tracking.metric_histories(result.run_id, keys, uri)
    assert [s for s, _ in got["response/repetition_rate"]] == list(range(1, 9))  # every step, each once
    rep = dict(got["response/repetition_rate"])
    assert rep[3] < 0.2 and rep[4] > 0.8  # the policy loops from step 4
    assert dict(got["response/length_correct"])[1] == len("12+3=15 \\boxed{15}") - len("\\boxed{") + 1
    assert dict(got["response/length_incorrect"])[1] == 6.0 and 4 not in dict(got["response/length_correct"])
    assert dict(got["regime/neg_up/clip_frac"])[5] == 0.2 and dict(got["regime/pos_down/token_frac"])[5] == 0.25
    assert (result.collapse, result.collapse_step) == ("repetition", 4)
    tags = tracking.run_info(result.run_id, uri)["tags"]
    assert (tags["collapse"], tags["collapse_step"]) == ("repetition", "4")
