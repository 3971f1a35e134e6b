"""The workbench losses inside verl's own code (verl's environment: make install-verl).

Parity in float64, loss and gradient, through verl's registry against verl's built-in losses on
the same tensors; the entry point in a fresh process; our config class built by verl's config
machinery from the launcher's overrides; token-weighted regime statistics through verl's own
metric reduction. Marked `verl`: `make test` runs them in .venv-verl with DISPO_REQUIRE_VERL=1,
where a missing verl is a failure, not a skip (the main suite, which has no verl, skips them).

Run: .venv-verl/bin/python -m pytest -m verl tests/test_verl_engine.py
"""

import importlib
import math
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.verl

if os.environ.get("DISPO_REQUIRE_VERL") == "1":
    verl = importlib.import_module("verl")  # `make test`'s verl run: an ImportError here fails it
else:
    verl = pytest.importorskip("verl", reason="verl is not installed here: make install-verl")

from verl.trainer.ppo.core_algos import get_policy_loss_fn  # noqa: E402
from verl.utils.metric.utils import Metric, reduce_metrics  # noqa: E402
from verl.workers.config.actor import ActorConfig, PolicyLossConfig  # noqa: E402

from workbench.engines.verl.config import WorkbenchPolicyLossConfig  # noqa: E402
from workbench.engines.verl.parity import PARITY_CASES, actor_config, batch, max_diffs, run_loss  # noqa: E402
from workbench.core.objectives import aggregate, get_objective, make_params  # noqa: E402
from workbench.core.regimes import regime_metrics  # noqa: E402


@pytest.mark.parametrize("case", PARITY_CASES, ids=[c.label for c in PARITY_CASES])
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_and_gradient_equal_verl_builtin_or_our_reference(case, seed):
    loss_diff, grad_diff = max_diffs(case, seed)
    assert loss_diff <= 1e-12 and grad_diff <= 1e-12, (case.label, loss_diff, grad_diff)


def test_the_parity_check_sees_a_wrong_bound():
    # The same comparison with dispo's eps_neg_up moved off its cispo analogue must fail.
    case = next(c for c in PARITY_CASES if c.label == "dispo=cispo (four equal bounds)")
    broken = case._replace(ours_config=actor_config(policy_loss=WorkbenchPolicyLossConfig(
        loss_mode="wb_dispo", eps_pos_up=0.28, eps_pos_down=0.3, eps_neg_up=0.1, eps_neg_down=0.3)))
    assert max(max_diffs(broken, 0)) > 1e-3


def test_entry_point_registers_the_losses_on_import_verl_alone():
    code = ("import verl\nfrom verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY as R\n"
            "print(' '.join(sorted(k for k in R if k.startswith('wb_'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split() == ["wb_cispo", "wb_dapo", "wb_dispo", "wb_dr_grpo", "wb_grpo", "wb_gspo"]


def test_target_override_builds_our_config_with_the_four_bounds():
    from hydra import compose, initialize_config_module
    from verl.utils.config import omega_conf_to_dataclass

    from workbench.config import build_run_config
    from workbench.engines.verl.launch import verl_overrides

    cfg = build_run_config({"objective": {"name": "dispo", "params": {"eps_pos_up": 0.1, "eps_pos_down": 0.3,
                                                                      "eps_neg_up": 0.05, "eps_neg_down": math.inf,
                                                                      "mask_mode": True}}, "rollout_lag": 0})
    overrides = verl_overrides(cfg, model_path="/m", train_file="/t.parquet", val_file="/v.parquet", prompt_length=16)
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        conf = compose(config_name="ppo_trainer", overrides=overrides)
    actor = omega_conf_to_dataclass(conf.actor_rollout_ref.actor)
    pl = actor.policy_loss
    assert type(pl) is WorkbenchPolicyLossConfig and pl.loss_mode == "wb_dispo"
    assert (pl.eps_pos_up, pl.eps_pos_down, pl.eps_neg_up, pl.eps_neg_down, pl.mask_mode) == (0.1, 0.3, 0.05, math.inf, True)
    assert get_policy_loss_fn(pl.loss_mode).__name__ == "wb_dispo"


def test_regime_statistics_come_out_token_weighted_through_verl_reduction():
    """How: the loss returns sums and counts per micro-batch; verl averages each over
    micro-batches (Metric MEAN, `Metric.aggregate_dp` over ranks) and mini-batches
    (`reduce_metrics`); the key mapping divides the averaged sums, and a ratio of two means over
    the same pieces is the ratio of the totals. Here two ranks x two micro-batches of very
    different lengths give the full batch's `regime_metrics` exactly, where averaging the
    per-piece ratios (what returning ratios would give) does not."""
    from workbench.engines.verl.keys import translate_step

    logp, old, adv, mask = batch(seed=3, b=8, t=24)
    mask[:4, 3:] = 0  # first half: 3 tokens per response; second half: up to 24
    params = make_params("dispo", {"eps_pos_up": 0.05, "eps_neg_up": 0.05, "eps_pos_down": 0.05, "eps_neg_down": 0.05})
    cfg = actor_config(policy_loss=WorkbenchPolicyLossConfig(loss_mode="wb_dispo", eps_pos_up=0.05, eps_pos_down=0.05,
                                                             eps_neg_up=0.05, eps_neg_down=0.05))
    fn = get_policy_loss_fn("wb_dispo")
    pieces = [slice(0, 2), slice(4, 6), slice(2, 4), slice(6, 8)]  # rank 0: micro 0, 1; rank 1: micro 0, 1
    per_piece = [Metric.from_dict(fn(old[s], logp[s], adv[s], mask[s], "token-mean", cfg)[1], "mean") for s in pieces]
    keys = per_piece[0]
    ranks = [{k: Metric("mean") for k in keys} for _ in range(2)]
    for r in range(2):
        for i in range(2):
            for k in keys:
                ranks[r][k].append(per_piece[r * 2 + i][k])  # a rank's micro-batches, as verl's actor collects them
    reduced = reduce_metrics({k: [Metric.aggregate_dp([ranks[0][k], ranks[1][k]])] for k in keys})
    got = translate_step(reduced)
    _, want = get_objective("dispo")(logp, old, adv, mask, params)
    naive = [get_objective("dispo")(logp[s], old[s], adv[s], mask[s], params)[1] for s in pieces]
    key = "regime/neg_up/token_frac"
    for k in got:
        if k.startswith("regime/") or k.startswith("ratio/"):
            assert got[k] == pytest.approx(want[k], rel=1e-6, nan_ok=True), k  # regime_metrics sums float32 values
    defined = [n[key] for n in naive if not math.isnan(n[key])]
    assert abs(sum(defined) / len(defined) - want[key]) > 1e-2  # averaging per-piece ratios would be wrong here


def test_dispo_without_our_config_class_says_how_to_select_it():
    fn = get_policy_loss_fn("wb_dispo")
    logp, old, adv, mask = batch(seed=0)
    with pytest.raises(ValueError, match="policy_loss._target_=workbench.engines.verl.config.WorkbenchPolicyLossConfig"):
        fn(old, logp, adv, mask, "token-mean", actor_config(policy_loss=PolicyLossConfig(loss_mode="wb_dispo")))


def test_actor_config_is_verls_own():
    assert isinstance(actor_config(), ActorConfig)
    assert run_loss  # the parity module calls losses only through verl's registry


def test_a_loss_missing_from_verls_registry_stops_the_launch_in_one_line(tmp_path):
    # verl swallows a failing plugin import (DEBUG log); VERL_USE_EXTERNAL_PLUGINS=none stands for that failure.
    env = {**os.environ, "VERL_USE_EXTERNAL_PLUGINS": "none"}
    out = subprocess.run([sys.executable, "-m", "workbench.cli", "train", "--engine", "verl", "--steps", "1", "--rollout-lag", "0",
                          "--tracking-uri", f"sqlite:///{tmp_path}/m.db"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "loss 'wb_dispo' is not in verl's registry" in errors[0]
    assert not (tmp_path / "m.db").exists() and not (tmp_path / ".cache").exists()
