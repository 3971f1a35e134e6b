"""Study-file validation: each bad file gives its own one-line message naming the path in the file.

Run: .venv/bin/python -m pytest tests/test_study_file.py -q
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from workbench.cli import sweep as cli_sweep
from workbench.config import ConfigError
from workbench.sweep.study_file import default_storage, load_study_file, parse_direction

GOOD = {"base": {"steps": 3, "model": {"name": "micro-0.5m"}},
        "space": {"eps_neg_up": [0.01, 0.2, "inf"], "eps_pos_down": [0.2, 1.0]},
        "sampler": "grid"}


def write(tmp_path: Path, data: dict, name: str = "study") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def with_(**changes) -> dict:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in GOOD.items()}
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return data


def test_good_file_resolves_grid_overrides_and_defaults(tmp_path):
    study = load_study_file(write(tmp_path, GOOD, "clip"))
    assert study.name == "clip" and study.n_trials == 6
    assert study.grid() == {"eps_neg_up": [0.01, 0.2, math.inf], "eps_pos_down": [0.2, 1.0]}
    assert study.overrides({"eps_neg_up": 0.01, "eps_pos_down": 1.0}) == {
        "objective.params.eps_neg_up": 0.01, "objective.params.eps_pos_down": 1.0}
    assert study.run_config(study.overrides({"eps_neg_up": math.inf, "eps_pos_down": 1.0}), seed=4, threads=1
                            ).objective.params == {"eps_neg_up": math.inf, "eps_pos_down": 1.0}
    assert [d.label for d in study.directions] == ["maximize eval/micro/accuracy"]
    assert study.pruner.name == "median" and study.prunes_on_collapse
    assert default_storage(tmp_path / "clip.yaml") == tmp_path / "clip.journal"


def test_arms_expand_to_their_override_sets(tmp_path):
    study = load_study_file(write(tmp_path, with_(space={"arm": {
        "base": {}, "neg_up_tight": {"eps_neg_up": 0.01},
        "cispo": {"objective.name": "cispo", "objective.params": {"eps_high": 0.28}}}})))
    assert study.grid() == {"arm": ["base", "neg_up_tight", "cispo"]}
    config = study.run_config(study.overrides({"arm": "cispo"}), seed=0)
    assert config.objective.name == "cispo" and config.objective.params == {"eps_high": 0.28}


@pytest.mark.parametrize("data, message", [
    (with_(sampler="tpe", n_trials=4, space={"eps_neg_up": {"low": 0, "high": 1, "log": True}}),
     "space.eps_neg_up.low: must be > 0 with log: true, got 0"),
    (with_(sampler="tpe", n_trials=4, space={"eps_neg_up": {"low": 0.5, "high": 0.1}}),
     "space.eps_neg_up.high: must be > low (0.5), got 0.1"),
    (with_(space={"eps_neg_up": [0.2, -0.1]}),
     "space.eps_neg_up.1: DispoParams.eps_neg_up must be a number >= 0"),
    (with_(space={"eps_neg_up": {"low": 0.1, "high": 1}}),
     "space.eps_neg_up: sampler grid needs a list of values, got a range"),
    (with_(space={"eps_neg_upp": [0.1]}),
     "space.eps_neg_upp: unknown parameter; use eps_pos_up"),
    (with_(sampler="random", n_trials=3, space={"rollout_lag": {"low": 1, "high": 8.5}}),
     "space.rollout_lag.high: rollout_lag is an integer field, got 8.5"),
    (with_(base__objective={"params": {"eps_neg_up": -1}}),
     "base.objective: DispoParams.eps_neg_up must be a number >= 0"),
    (with_(base__steps=0), "base.steps: Input should be greater than or equal to 1"),
    (with_(base__stepz=3), "base.stepz: unknown field"),
    (with_(sampler="annealing"), "sampler: must be one of 'grid', 'random', 'tpe' or 'gp'"),
    (with_(sampler="tpe"), "n_trials: required with sampler tpe"),
    (with_(n_trials=7), "n_trials: a grid of 6 points runs at most 6 trials, got 7"),
    (with_(directions=["maximize eval/aime24/accuracy"]),
     "directions.0: benchmark 'aime24' is not evaluated by the base config (base.eval.benchmarks: micro)"),
    (with_(directions=["maximize accuracy"]), "directions.0: must be 'maximize|minimize [best] METRIC'"),
    (with_(directions=["maximize eval/micro/pass_at_8"]), "directions.0: runs log pass_at_4 (base.eval.k), not pass_at_8"),
    (with_(directions=["maximize eval/micro/accuracy", "minimize collapse"], pruner="median"),
     "pruner: only a study with one eval-metric direction can prune"),
    (with_(seeds=[0, 1, 0]), "seeds: each seed at most once, got [0, 1, 0]"),
    (with_(base__objective={"params": {"eps_neg_up": 0.3}}, space={"arm": {"cispo": {"objective.name": "cispo"}}}),
     "space.arm.cispo: unknown parameter 'eps_neg_up' for objective 'cispo'"),
    (with_(space={"arm": {"c": {"objective.name": "cispo", "objective.params": {}}}, "eps_neg_up": [0.1]}),
     "space: the grid point {'arm': 'c', 'eps_neg_up': 0.1} is invalid"),
    (with_(space={}), "space: needs at least one dimension"),
    (with_(workers=0), "workers: Input should be greater than or equal to 1"),
])
def test_bad_study_file_names_the_path_and_the_problem(tmp_path, data, message):
    with pytest.raises(ConfigError) as err:
        load_study_file(write(tmp_path, data))
    assert any(line.startswith(message) for line in err.value.lines), err.value.lines


def test_every_problem_is_reported_at_once(tmp_path):
    data = with_(seeds=[1, 1], space={"eps_neg_up": [-1], "nope": [1]})
    with pytest.raises(ConfigError) as err:
        load_study_file(write(tmp_path, data))
    assert [line.split(":")[0] for line in err.value.lines] == ["space.eps_neg_up.0", "space.nope", "seeds"]


def test_a_file_stem_that_cannot_name_a_study_asks_for_name(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_study_file(write(tmp_path, GOOD, "clip grid"))
    assert err.value.lines == ["name: the study is named after the file ('clip grid'), which needs letters, digits, "
                               "'_', '.' or '-' only; set `name:`"]
    assert load_study_file(write(tmp_path, {**GOOD, "name": "clip_grid"}, "clip grid")).name == "clip_grid"


def test_directions_parse():
    assert parse_direction("maximize best eval/micro/pass_at_4").key == "best/eval/micro/pass_at_4"
    assert parse_direction("maximize entropy retention").key == "entropy/retention"
    assert parse_direction("minimize collapse").key == "collapse/rate"
    with pytest.raises(ValueError, match="'best' applies to eval metrics only"):
        parse_direction("minimize best collapse")


def test_cli_bad_study_file_exits_2_one_line_per_error_and_touches_no_storage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = typer.Typer()
    app.command()(lambda: None)
    app.add_typer(cli_sweep.app, name="sweep")
    path = write(tmp_path, with_(seeds=[1, 1], space={"eps_neg_up": [-1]}))
    result = CliRunner().invoke(app, ["sweep", str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(f"error: {path}: ") for line in lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]  # no journal, no MLflow store
