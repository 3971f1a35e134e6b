"""The RL loop end to end on a micro-0.5m model, checked through MlflowClient.

Run: pytest tests/test_trainer.py   (about a minute on 2 cores)
"""

import math
import os
import signal

import pytest
import torch
from mlflow import MlflowClient

from workbench.train import trainer as trainer_mod
from workbench.config import build_run_config
from workbench.train.trainer import train

DESIGN_KEYS = [f"regime/{r}/{s}" for r in ("pos_up", "pos_down", "neg_up", "neg_down")
               for s in ("token_frac", "clip_frac", "entropy", "weight_mean", "clip_mass")] + [
    "ratio/abs_dev_mean", "entropy/mean", "loss/policy", "grad/norm", "ratio/mean", "ratio/max",
    "response/length_mean", "response/length_correct", "response/length_incorrect", "response/truncated_frac",
    "response/repetition_rate", "reward/mean", "train/accuracy", "batch/zero_adv_group_frac",
    "perf/rollout_tokens_per_s", "perf/step_s", "reward/timeout_frac",
    "perf/generate_s", "perf/reward_s", "perf/old_logp_s", "perf/update_s", "perf/tracking_s",
    "perf/rollout_positions_per_s", "perf/update_tokens_per_s"]


def tiny_config(**over):
    data = {"model": {"name": "micro-0.5m"}, "sft": {"enabled": False}, "steps": 3, "threads": 1, "seed": 7,
            "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 24}, "updates_per_rollout": 4,
            "rollout_lag": 4, "lr": 1e-3, "eval": {"every": 2, "k": 2, "limit": 8}, "sample_every": 2,
            # An untrained model never answers right; the length penalty still gives groups mixed rewards.
            "overlong": {"enabled": True, "buffer": 20, "factor": 1.0}}
    data.update(over)
    return build_run_config(data)


@pytest.fixture
def store(tmp_path):
    return f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "ck")


def history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_every_metric_logged_once_per_step_with_params_and_config(store):
    uri, ck = store
    result = train(tiny_config(), tracking_uri=uri, progress=False, checkpoint_root=ck)
    assert result.status == "FINISHED" and result.steps_done == 3
    c = MlflowClient(uri)
    run = c.get_run(result.run_id)
    for key in DESIGN_KEYS:
        assert [s for s, _ in history(c, result.run_id, key)] == [1, 2, 3], key
    assert [s for s, _ in history(c, result.run_id, "eval/micro/accuracy")] == [0, 2, 3]
    assert [s for s, _ in history(c, result.run_id, "eval/micro/pass_at_2")] == [0, 2, 3]
    assert run.data.params["objective.name"] == "dispo" and run.data.params["rollout_lag"] == "4"
    assert run.data.tags["objective"] == "dispo" and run.data.tags["model"] == "micro-0.5m"
    arts = {a.path for a in c.list_artifacts(result.run_id)}
    assert {"config.yaml", "rollouts"} <= arts
    # lagged rollouts move the importance ratio away from 1
    assert all(v > 0 for _, v in history(c, result.run_id, "ratio/abs_dev_mean")[1:])


def test_same_seed_same_metrics(store, tmp_path):
    uri, ck = store
    a = train(tiny_config(steps=2), tracking_uri=uri, progress=False, checkpoint_root=ck)
    b = train(tiny_config(steps=2), tracking_uri=uri, progress=False, checkpoint_root=ck)
    c = MlflowClient(uri)
    for key in ["loss/policy", "ratio/abs_dev_mean", "entropy/mean", "response/length_mean", "eval/micro/accuracy"]:
        assert history(c, a.run_id, key) == history(c, b.run_id, key), key


def test_interrupt_checkpoints_and_resume_continues_the_step_axis(store):
    uri, ck = store

    def interrupt(step, metrics):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: the step finishes, then the run stops
        return False

    first = train(tiny_config(steps=4, eval={"every": 2, "k": 2, "limit": 8}), tracking_uri=uri, progress=False,
                  checkpoint_root=ck, on_eval=interrupt)
    assert first.status == "KILLED" and first.steps_done == 2
    c = MlflowClient(uri)
    assert c.get_run(first.run_id).info.status == "KILLED"
    again = train(tiny_config(steps=4), tracking_uri=uri, progress=False, checkpoint_root=ck, resume_run_id=first.run_id)
    assert again.run_id == first.run_id and again.status == "FINISHED" and again.steps_done == 4
    assert [s for s, _ in history(c, first.run_id, "loss/policy")] == [1, 2, 3, 4]
    assert c.get_run(first.run_id).info.status == "FINISHED"


def test_crash_inside_a_step_marks_the_run_failed_with_reason(store, monkeypatch):
    uri, ck = store

    def boom(*a, **k):
        raise RuntimeError("reward service exploded")

    monkeypatch.setattr(trainer_mod, "response_metrics", boom)
    with pytest.raises(RuntimeError, match="exploded"):
        train(tiny_config(), tracking_uri=uri, progress=False, checkpoint_root=ck)
    c = MlflowClient(uri)
    run = c.search_runs([c.get_experiment_by_name("dispo-wb").experiment_id])[0]
    assert run.info.status == "FAILED"
    assert "reward service exploded" in run.data.tags["failure_reason"]


def test_nan_loss_fails_the_run_and_keeps_the_last_good_checkpoint(store, monkeypatch):
    uri, ck = store
    real = trainer_mod.aggregate
    calls = {"n": 0}

    def poisoned(per_token, mask, mode):
        calls["n"] += 1
        loss = real(per_token, mask, mode=mode)
        return loss * math.nan if calls["n"] > 4 else loss  # step 1 (4 updates) is fine, step 2 goes NaN

    monkeypatch.setattr(trainer_mod, "aggregate", poisoned)
    result = train(tiny_config(checkpoint_every=1), tracking_uri=uri, progress=False, checkpoint_root=ck)
    assert result.status == "FAILED" and result.reason == "nan_loss"
    c = MlflowClient(uri)
    run = c.get_run(result.run_id)
    assert run.info.status == "FAILED" and run.data.tags["failure_reason"] == "nan_loss"
    state = torch.load(os.path.join(ck, result.run_id, "state.pt"), weights_only=False)
    assert state["step"] == 1
    assert all(torch.isfinite(v).all() for v in state["policy"].values())


@pytest.mark.parametrize("objective", ["dispo", "grpo", "dr_grpo"])  # token_mean, seq_mean_token_mean, sum_norm
def test_micro_batches_accumulate_to_the_same_update(tmp_path, monkeypatch, objective):
    # Plain SGD and no clipping: Adam and clipping would hide a wrongly scaled gradient.
    monkeypatch.setattr(trainer_mod.torch.optim, "AdamW", lambda params, lr, weight_decay, **_: torch.optim.SGD(params, lr=lr))
    uri = f"sqlite:///{tmp_path}/m.db"
    states = []
    for i, micro in enumerate([None, 3]):
        ck = str(tmp_path / f"ck{i}")
        r = train(tiny_config(steps=1, objective={"name": objective}, micro_batch_size=micro, updates_per_rollout=2,
                              lr=1.0, max_grad_norm=1e9),
                  tracking_uri=uri, progress=False, checkpoint_root=ck)
        states.append(torch.load(os.path.join(ck, r.run_id, "state.pt"), weights_only=False)["policy"])
    assert all(torch.allclose(states[0][k], states[1][k], atol=1e-5) for k in states[0])


def test_phase_times_add_up_to_at_most_the_step(store):
    uri, ck = store
    result = train(tiny_config(steps=2), tracking_uri=uri, progress=False, checkpoint_root=ck)
    c = MlflowClient(uri)
    for step in (1, 2):
        phases = [dict(history(c, result.run_id, f"perf/{p}_s"))[step] for p in ("generate", "reward", "old_logp", "update")]
        total = dict(history(c, result.run_id, "perf/step_s"))[step]
        assert all(p > 0 for p in phases) and sum(phases) <= total
    real = dict(history(c, result.run_id, "perf/rollout_tokens_per_s"))
    positions = dict(history(c, result.run_id, "perf/rollout_positions_per_s"))
    assert all(0 < real[s] <= positions[s] for s in (1, 2))


def test_checkpoint_holds_only_the_snapshots_rollouts_will_read(store):
    uri, ck = store
    # 4 updates per rollout at lag 8: boundaries read the states at 0, 0, 0 (step 3 reads 12 - 8 = 4).
    result = train(tiny_config(steps=3, rollout_lag=8), tracking_uri=uri, progress=False, checkpoint_root=ck)
    state = torch.load(os.path.join(ck, result.run_id, "state.pt"), weights_only=False)
    assert state["updates"] == 12
    assert [c for c, _ in state["snapshots"]] == [4, 8, 12]
    # the newest snapshot is the policy itself, stored once
    assert state["snapshots"][-1][1] is state["policy"]


@pytest.mark.parametrize("old_logp", ["auto", "recompute"])
def test_lagged_old_policy_holds_no_copy_of_its_own_and_lets_a_read_snapshot_go(store, monkeypatch, old_logp):
    """On CPU old_policy's weights are the ring's tensors; the state a boundary read is freed once the ring drops it.

    old_logp comes from the lagged state: through the decode loop that samples with it (auto), or
    through the second pass over it (recompute).
    """
    from workbench.rollout.hf import HFBackend
    from workbench.train.snapshots import SnapshotRing

    uri, ck = store
    runs, seen, used = [], [], []
    setup, read = trainer_mod.setup, SnapshotRing.rollout_state
    real_logp, real_generate = trainer_mod.response_logp_chunked, HFBackend.generate

    def held(ring) -> set[int]:
        return {t.data_ptr() for s in ring.entries.values() for t in s.values()}

    def rollout_state(self, count):
        # Between boundaries old_policy may only point at states the ring still holds: one it has
        # dropped would otherwise stay alive, a full copy of the weights, until this reload.
        pinned = {p.data_ptr() for p in runs[0].old_policy.parameters()}
        assert not seen or pinned <= held(self), "old_policy pins a state the ring has dropped"
        state = read(self, count)
        seen.append(({k: v.clone() for k, v in state.items()}, held(self)))
        return state

    def weights(model):
        return {n: (p.detach().clone(), p.data_ptr()) for n, p in model.state_dict().items()}

    def old_logp_pass(model, *a, **k):
        used.append(weights(model))
        return real_logp(model, *a, **k)

    def generate(self, prompts, n, sampling):
        if sampling.logprobs:  # a training rollout whose log-probs become old_logp
            used.append(weights(self.model))
        return real_generate(self, prompts, n, sampling)

    monkeypatch.setattr(trainer_mod, "setup", lambda parts, *a, **k: runs.append(parts) or setup(parts, *a, **k))
    monkeypatch.setattr(SnapshotRing, "rollout_state", rollout_state)
    monkeypatch.setattr(trainer_mod, "response_logp_chunked", old_logp_pass)
    monkeypatch.setattr(HFBackend, "generate", generate)
    # 4 updates per rollout at lag 4: each boundary reads the state one rollout old, which the ring then drops.
    result = train(tiny_config(steps=4, eval={"every": 100, "limit": 4},
                               rollout={"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 24,
                                        "old_logp": old_logp}),
                   tracking_uri=uri, progress=False, checkpoint_root=ck)
    assert result.status == "FINISHED" and len(seen) == len(used) == 4
    for (state, ptrs), weights in zip(seen, used):
        for name, (value, ptr) in weights.items():
            assert torch.equal(value, state[name])  # old_logp uses exactly the lagged state
            assert ptr in ptrs  # ... and holds it without a copy of its own
