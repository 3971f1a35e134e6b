"""Run config: strict, one line per problem naming the field. Run: pytest tests/test_config.py"""

import math

import pytest

from workbench.config import ConfigError, build_run_config, dump_yaml, flatten, load_run_config


def test_defaults_build_and_round_trip_through_yaml(tmp_path):
    cfg = build_run_config({"objective": {"name": "dispo", "params": {"eps_neg_up": "inf"}}})
    assert cfg.objective.params["eps_neg_up"] == math.inf
    path = tmp_path / "run.yaml"
    path.write_text(dump_yaml(cfg))
    again = load_run_config(path)
    assert again == cfg


@pytest.mark.parametrize("data, expected", [
    ({"stepz": 3}, "stepz: unknown field"),
    ({"steps": "many"}, "steps: Input should be a valid integer"),
    ({"rollout": {"backend": "tgi"}}, "rollout.backend: must be one of 'hf' or 'vllm'"),
    ({"objective": {"name": "ppo2"}}, "objective: unknown objective 'ppo2'"),
    ({"objective": {"name": "dispo", "params": {"eps_neg_up": -0.1}}}, "eps_neg_up"),
    ({"objective": {"name": "dispo", "params": {"eps_low": 0.1}}}, "eps_low"),
    ({"task": {"min_terms": 5, "max_terms": 3}}, "task: min_terms (5) must be <= max_terms (3)"),
    ({"updates_per_rollout": 6, "epochs": 4}, "must be a multiple of epochs"),
])
def test_bad_fields_name_the_field(data, expected):
    with pytest.raises(ConfigError) as e:
        build_run_config(data)
    assert any(expected in line for line in e.value.lines), e.value.lines


def test_several_errors_give_one_line_each():
    with pytest.raises(ConfigError) as e:
        build_run_config({"steps": 0, "lr": -1, "seed": "x"})
    assert len(e.value.lines) == 3
    assert {line.split(":")[0] for line in e.value.lines} == {"steps", "lr", "seed"}


def test_overrides_reach_nested_fields():
    cfg = build_run_config({}, {"objective.params.eps_neg_up": 0.01, "rollout.group_size": 4, "seed": None})
    assert cfg.objective.params == {"eps_neg_up": 0.01}
    assert cfg.rollout.group_size == 4 and cfg.seed == 0


def test_yaml_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\n")
    with pytest.raises(ConfigError) as e:
        load_run_config(bad)
    assert len(e.value.lines) == 1 and "not valid YAML" in e.value.lines[0]
    with pytest.raises(ConfigError, match="no such file"):
        load_run_config(tmp_path / "missing.yaml")


def test_flatten_gives_dotted_keys():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}
