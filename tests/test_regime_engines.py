"""One definition of each regime statistic across engines: the same batch, cut into uneven
minibatches, gives the same numbers (1e-6) through the local trainer's accumulator, verl's loss
functions with verl's own metric aggregation, and the TRL subclass's metric path, each checked
against the whole batch's statistics in one piece.

verl lives in its own env, TRL in the main one, so the three paths are three tests against one
reference (`reference`): run the verl one with
    DISPO_REQUIRE_VERL=1 .venv-verl/bin/python -m pytest -q -m verl tests/test_regime_engines.py
"""

from __future__ import annotations

import importlib
import math
import os
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from workbench.core.objectives import make_params, objective_terms
from workbench.core.regimes import RegimeAccumulator, logp_coef, regime_metrics

BOUNDS = {"eps_pos_up": 0.05, "eps_pos_down": 0.1, "eps_neg_up": 0.08, "eps_neg_down": 0.05}
PARAMS = make_params("dispo", BOUNDS)
# Uneven minibatches (rows of the batch): 1, 3, 2 and 6 responses, of very different lengths.
PIECES = (slice(0, 1), slice(1, 4), slice(4, 6), slice(6, 12))


def full_batch(seed: int = 5):
    """(logp, old_logp, adv (B,), mask, entropy), float64, B = 12; the first rows are short."""
    g = torch.Generator().manual_seed(seed)
    b, t = 12, 20
    logp = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3 - 0.05
    old = logp + torch.randn(b, t, generator=g, dtype=torch.float64) * 0.3
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    adv[7] = 0.0
    lengths = torch.tensor([2, 20, 3, 17, 1, 20, 4, 9, 20, 2, 15, 6])
    mask = (torch.arange(t)[None, :] < lengths[:, None]).to(torch.float64)
    entropy = torch.rand(b, t, generator=g, dtype=torch.float64) * 2
    return logp, old, adv, mask, entropy


def piece_stats(logp, old, adv, mask, entropy):
    """What every path computes per piece: the objective's terms and u = -d loss / d logp."""
    x = logp.clone().requires_grad_(True)
    per_token, terms, adv_bt = objective_terms("dispo", x, old, adv, mask, PARAMS)
    return terms, adv_bt, logp, logp_coef(per_token, x)


def reference() -> dict[str, float]:
    """The whole batch in one piece."""
    logp, old, adv, mask, entropy = full_batch()
    terms, adv_bt, lp, coef = piece_stats(logp, old, adv, mask, entropy)
    return regime_metrics(terms.ratio, terms.weight, terms.clipped, adv_bt, mask, entropy, lp, coef)


def assert_same(got: dict[str, float], want: dict[str, float], keys) -> None:
    keys = list(keys)
    assert keys
    for k in keys:
        assert got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-9, nan_ok=True), k


def test_the_reference_is_not_the_mean_of_piece_statistics():
    # Guards the tests below: on this batch averaging per-piece ratios gives other numbers.
    want = reference()
    logp, old, adv, mask, entropy = full_batch()
    per_piece = []
    for s in PIECES:
        terms, adv_bt, lp, coef = piece_stats(logp[s], old[s], adv[s], mask[s], entropy[s])
        per_piece.append(regime_metrics(terms.ratio, terms.weight, terms.clipped, adv_bt, mask[s], entropy[s], lp, coef))
    gaps = []
    for k in ("regime/pos_up/clip_frac", "regime/neg_down/token_frac", "ratio/abs_dev_mean", "regime/neg_up/entropy_push"):
        vals = [p[k] for p in per_piece if not math.isnan(p[k])]
        gaps.append(abs(sum(vals) / len(vals) - want[k]))
    assert min(gaps) > 1e-3, gaps
    assert all(not math.isnan(want[f"regime/{g}/clip_frac"]) for g in ("pos_up", "pos_down", "neg_up", "neg_down"))


def test_local_trainer_accumulator_over_uneven_minibatches():
    want = reference()
    logp, old, adv, mask, entropy = full_batch()
    acc = RegimeAccumulator()
    for s in PIECES:  # as workbench.train.trainer records each micro-batch
        terms, adv_bt, lp, coef = piece_stats(logp[s], old[s], adv[s], mask[s], entropy[s])
        acc.add(terms.ratio, terms.weight, terms.clipped, adv_bt, mask[s], entropy[s], lp, coef)
    got = acc.result()
    assert set(got) == set(want)
    assert_same(got, want, want)


class _OneProcess:
    """accelerate's gather / pad on one process: identity."""

    is_main_process = True

    def gather(self, x):
        return x

    def pad_across_processes(self, x, dim, pad_index):
        return x


def test_trl_subclass_metric_path_through_trls_own_log(monkeypatch):
    pytest.importorskip("trl") if os.environ.get("DISPO_REQUIRE_TRL") != "1" else importlib.import_module("trl")
    import transformers

    from workbench.core.objectives import get_spec
    from workbench.engines.trl.trainer import WorkbenchGRPOTrainer

    trainer = object.__new__(WorkbenchGRPOTrainer)  # the metric path only: no model, no data
    trainer.wb_spec, trainer.wb_params, trainer.wb_aggregation = get_spec("dispo"), PARAMS, "token_mean"
    trainer.accelerator = _OneProcess()
    trainer.model = SimpleNamespace(training=True)
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer.log_completions = False
    logp, old, adv, mask, entropy = full_batch()
    for s in PIECES:  # TRL's micro-batches, each through the overridden loss
        x = logp[s].clone().requires_grad_(True)
        trainer._objective_loss(x, old[s], adv[s], mask[s], entropy[s])
    logged = {}
    monkeypatch.setattr(transformers.Trainer, "log", lambda self, logs, start_time=None: logged.update(logs))
    trainer.log({})  # TRL's GRPOTrainer.log averages each metric list, then hands them on
    want = reference()
    assert_same(logged, want, [k for k in want if k.startswith(("regime/", "ratio/", "entropy/"))])


verl_only = pytest.mark.verl


@verl_only
def test_verl_losses_through_verls_own_aggregation():
    """2 mini-batches x 2 ranks x 2 micro-batches of uneven sizes: the loss returns sums per
    micro-batch, verl averages them (Metric MEAN per rank, aggregate_dp over ranks,
    reduce_metrics over mini-batches) and the key mapping divides after that."""
    if os.environ.get("DISPO_REQUIRE_VERL") == "1":
        importlib.import_module("verl")
    else:
        pytest.importorskip("verl", reason="verl is not installed here")
    from verl.trainer.ppo.core_algos import get_policy_loss_fn
    from verl.utils.metric.utils import Metric, reduce_metrics

    from workbench.engines.verl.config import WorkbenchPolicyLossConfig
    from workbench.engines.verl.keys import translate_step
    from workbench.engines.verl.parity import actor_config

    cfg = actor_config(policy_loss=WorkbenchPolicyLossConfig(loss_mode="wb_dispo", **BOUNDS))
    fn = get_policy_loss_fn("wb_dispo")
    logp, old, adv, mask, _ = full_batch()
    adv_bt = adv[:, None].expand_as(logp).clone()
    # mini-batch -> rank -> micro-batches (rows); every rank has two micro-batches, as verl requires.
    layout = [[[slice(0, 1), slice(1, 4)], [slice(4, 5), slice(5, 6)]],
              [[slice(6, 7), slice(7, 10)], [slice(10, 11), slice(11, 12)]]]
    per_mini = []
    for ranks in layout:
        per_rank = []
        for micro in ranks:
            collected: dict[str, Metric] = {}
            for s in micro:
                x = logp[s].clone().requires_grad_(True)
                _, metrics = fn(old[s], x, adv_bt[s], mask[s], "token-mean", cfg)
                for k, m in Metric.from_dict(metrics, "mean").items():  # as verl's ppo_loss wraps them
                    collected.setdefault(k, Metric("mean")).append(m)
            per_rank.append(collected)
        per_mini.append({k: Metric.aggregate_dp([r[k] for r in per_rank]) for k in per_rank[0]})
    reduced = reduce_metrics({k: [m[k] for m in per_mini] for k in per_mini[0]})
    got = translate_step(reduced)
    want = reference()
    keys = [k for k in want if k.startswith(("regime/", "ratio/")) and not k.endswith("/entropy") and k != "ratio/max"]
    assert_same(got, want, keys)
    assert {f"regime/{g}/entropy_push_clipped" for g in ("pos_up", "neg_down")} <= set(got)
