"""Parameter importances count pruned (collapsed) trials and say how stable their ranking is.

A synthetic in-memory Optuna study shaped like studies/clip_grid.yaml: a 4 x 4 grid over two
bounds where every eps_neg_down 0.05 point collapses and is pruned at a low accuracy, and
among the points that complete only eps_neg_up moves accuracy.

Run: .venv/bin/python -m pytest tests/test_importance.py -q
"""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from workbench.report import clip_space

DOWN = [0.05, 0.2, 0.5, 1.0]
UP = [0.01, 0.1, 0.2, 0.5]


def grid_study() -> optuna.Study:
    rng = np.random.default_rng(0)
    study = optuna.create_study(direction="maximize", storage=optuna.storages.InMemoryStorage())
    dists = {"eps_neg_down": optuna.distributions.CategoricalDistribution(DOWN),
             "eps_neg_up": optuna.distributions.CategoricalDistribution(UP)}
    for down in DOWN:
        for i, up in enumerate(UP):
            params = {"eps_neg_down": down, "eps_neg_up": up}
            if down == 0.05:  # collapses: pruned, its last reported accuracy low
                study.add_trial(optuna.trial.create_trial(
                    params=params, distributions=dists, state=optuna.trial.TrialState.PRUNED,
                    intermediate_values={5: 0.25, 10: 0.05 + 0.02 * rng.random()},
                    user_attrs={"collapse": "length collapse at step 9 (seed 0)"}))
            else:
                study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                          value=0.30 + 0.03 * i + 0.005 * rng.random()))
    # a trial pruned before it reported anything has no value to count
    study.add_trial(optuna.trial.create_trial(params={"eps_neg_down": 0.05, "eps_neg_up": 0.5}, distributions=dists,
                                              state=optuna.trial.TrialState.PRUNED))
    return study


def test_pruned_trials_count_at_their_last_value_and_change_the_ranking():
    study = grid_study()
    rows, left_out = clip_space.importance_rows(study)
    assert len(rows) == 16 and left_out == 1 and sum(r.pruned for r in rows) == 4
    assert all(0.05 <= r.value <= 0.07 for r in rows if r.pruned)
    complete_only = clip_space.fanova_importances([r for r in rows if not r.pruned])
    assert complete_only["eps_neg_up"] > 0.9  # without the collapsed points eps_neg_down looks irrelevant
    info = clip_space.importance_info(study, resamples=12)
    assert info.n_trials == 16 and info.n_pruned == 4 and info.n_left_out == 1 and info.reason is None
    assert info.importances["eps_neg_down"] > 0.5 > info.importances["eps_neg_up"]
    assert sum(info.importances.values()) == pytest.approx(1.0)
    # collapse as its own target: only eps_neg_down decides it
    assert info.collapse["eps_neg_down"] > 0.95
    # the ranking's stability: intervals around the estimates, eps_neg_down first in most resamples
    lo, hi = info.intervals["eps_neg_down"]
    # resampling 16 trials moves the estimate a lot (5-95% about 0.56-0.99 at 12 resamples); the forest alone does not
    assert 0 <= lo <= hi <= 1 and hi - lo > 0.2 and lo > info.intervals["eps_neg_up"][0]
    assert info.first_share["eps_neg_down"] >= 0.7
    assert sum(info.first_share.values()) == pytest.approx(1.0)
    fig = clip_space.plot_importance(info)
    assert [t.name for t in fig.data] == [info.target, "collapsed (0/1)"]
    assert "4 of them pruned" in fig.layout.title.text and "1 pruned before reporting left out" in fig.layout.title.text


def test_bootstrap_is_deterministic_and_tells_a_flat_ranking_from_a_clear_one():
    study = grid_study()
    rows, _ = clip_space.importance_rows(study)
    assert clip_space.bootstrap_importances(rows, 3) == clip_space.bootstrap_importances(rows, 3)
    # values that no parameter explains: no parameter ranks first in nearly every resample
    rng = np.random.default_rng(3)
    noise = [r._replace(value=float(rng.normal())) for r in rows]
    _, first = clip_space.bootstrap_importances(noise, 12)
    assert max(first.values()) < 0.9


def test_large_studies_get_fewer_bootstrap_resamples_and_say_how_many():
    assert [clip_space.resamples_for(n) for n in (16, 200, 201, 400, 1000, 100_000)] == [30, 30, 29, 15, 8, 8]
    assert clip_space.resamples_for(1000, 0) == 0 and clip_space.resamples_for(16, 12) == 12
    info = clip_space.importance_info(grid_study(), resamples=12)
    assert info.resamples == 12
    assert "over 12 bootstrap resamples" in clip_space.plot_importance(info).layout.title.text
