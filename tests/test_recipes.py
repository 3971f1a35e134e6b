"""Recipes: `--recipe NAME` sets every part of a paper's method; an objective run without the
rest of its recipe says which parts differ, at start and in a run tag; engines map the parts
or refuse them in one line.

Run: pytest tests/test_recipes.py
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from workbench.cli.app import app
from workbench.config import ConfigError, build_run_config
from workbench.recipes import PARTS, RECIPES, get_recipe
from workbench.names import TAG_RECIPE, TAG_RECIPE_DIFF
from workbench.params import objective_names
from workbench.train.launch import recipe_note, recipe_tags

runner = CliRunner()

# What each paper states (see workbench/recipes.py): advantage, aggregation, bounds, dynamic sampling, overlong.
PAPERS = {
    "grpo": ("grpo", "seq_mean_token_mean", {"eps_low": 0.2, "eps_high": 0.2}, False, False, "2402.03300"),
    "dr_grpo": ("dr_grpo", "seq_mean_token_sum_norm", {"eps_low": 0.2, "eps_high": 0.2}, False, False, "2503.20783"),
    "dapo": ("grpo", "token_mean", {"eps_low": 0.2, "eps_high": 0.28}, True, True, "2503.14476"),
    "cispo": ("grpo", "token_mean", {"eps_low": 1.0, "eps_high": 0.28}, True, True, "2506.13585"),
    "gspo": ("grpo", "seq_mean_token_mean", {"eps_low": 3e-4, "eps_high": 4e-4}, False, False, "2507.18071"),
    "dispo": ("grpo", "token_mean", {"eps_pos_up": 0.2, "eps_pos_down": 0.2, "eps_neg_up": 0.2, "eps_neg_down": 0.2},
              False, False, "2602.00983"),
}


def test_every_objective_has_a_recipe_and_the_recipes_are_the_papers():
    assert sorted(RECIPES) == sorted(PAPERS) and set(objective_names()) >= set(RECIPES)
    for name, (adv, agg, bounds, ds, overlong, arxiv) in PAPERS.items():
        cfg = build_run_config({"recipe": name})
        assert (cfg.objective.name, cfg.advantage, cfg.objective.aggregation) == (name, adv, agg)
        assert {k: getattr(cfg.objective.build_params(), k) for k in bounds} == bounds
        assert (cfg.dynamic_sampling, cfg.overlong.enabled) == (ds, overlong)
        assert arxiv in get_recipe(name).paper
        assert cfg.recipe_differences() == (name, []) and recipe_note(cfg) is None


@pytest.mark.parametrize("objective, parts", [
    ("dr_grpo", ["advantage=grpo (recipe: dr_grpo)"]),
    ("dapo", ["dynamic_sampling=false (recipe: true)", "overlong.enabled=false (recipe: true)"]),
    ("cispo", ["dynamic_sampling=false (recipe: true)", "overlong.enabled=false (recipe: true)"]),
    ("grpo", []), ("gspo", []), ("dispo", []),
])
def test_an_objective_without_the_rest_of_its_recipe_is_named_with_the_parts_that_differ(objective, parts):
    cfg = build_run_config({"objective": {"name": objective}})
    assert cfg.recipe_differences() == (objective, parts)
    assert recipe_tags(cfg) == {TAG_RECIPE: objective, TAG_RECIPE_DIFF: "; ".join(parts)}
    note = recipe_note(cfg)
    if parts:
        assert note.count("\n") == 0 and all(p in note for p in parts) and f"--recipe {objective}" in note
        assert get_recipe(objective).paper in note
    else:
        assert note is None


def test_a_field_given_beside_the_recipe_wins_and_is_reported():
    cfg = build_run_config({"recipe": "dapo", "dynamic_sampling": False, "objective": {"params": {"eps_high": 0.4}}})
    assert cfg.dynamic_sampling is False and cfg.overlong.enabled is True
    assert cfg.objective.build_params().eps_high == 0.4 and cfg.objective.build_params().eps_low == 0.2
    assert cfg.recipe_differences()[1] == ["dynamic_sampling=false (recipe: true)",
                                           "objective.params.eps_high=0.4 (recipe: 0.28)"]
    # A bound swept without --recipe is the objective's own parameter, not a departure from the paper.
    assert build_run_config({"objective": {"name": "dapo", "params": {"eps_high": 0.4}},
                             "dynamic_sampling": True, "overlong": {"enabled": True}}).recipe_differences() == ("dapo", [])
    # Another objective under a recipe: its own defaults, and the objective is the part that differs.
    other = build_run_config({"recipe": "dr_grpo", "objective": {"name": "cispo"}})
    assert other.objective.build_params().eps_low == 1.0 and other.advantage == "dr_grpo"
    assert other.recipe_differences()[1] == ["objective.name=cispo (recipe: dr_grpo)"]


def test_a_resumed_config_round_trips_its_recipe():
    import yaml

    from workbench.config import dump_yaml

    cfg = build_run_config({"recipe": "dapo", "overlong": {"enabled": False}})
    again = build_run_config(yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg and again.recipe_differences() == cfg.recipe_differences()


def test_an_unknown_recipe_is_one_line_naming_the_valid_ones(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as e:
        build_run_config({"recipe": "ppo"})
    assert e.value.lines == ["recipe: unknown recipe 'ppo'; valid: cispo, dapo, dispo, dr_grpo, grpo, gspo"]
    monkeypatch.chdir(tmp_path)
    out = runner.invoke(app, ["train", "--recipe", "ppo", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert out.exit_code == 2 and out.output.strip() == f"error: {e.value.lines[0]}"
    assert list(tmp_path.iterdir()) == []


def test_parts_are_config_fields():
    cfg = build_run_config({})
    assert set(PARTS) <= set(cfg.recipe_parts())


def test_the_cli_recipe_flag_sets_the_recipe_and_the_note_goes_to_the_start(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/m.db"
    out = runner.invoke(app, ["train", "--engine", "verl", "--dry-run", "--rollout-lag", "0", "--recipe", "dapo",
                              "--tracking-uri", uri])
    assert out.exit_code == 0, out.output
    assert "recipe note" not in out.output
    cmd = out.output.strip().splitlines()[-1]
    assert "algorithm.filter_groups.enable=true" in cmd and "reward.reward_manager.name=dapo" in cmd
    assert "actor_rollout_ref.actor.clip_ratio_high=0.28" in cmd and "loss_agg_mode=token-mean" in cmd
    out = runner.invoke(app, ["train", "--engine", "verl", "--dry-run", "--rollout-lag", "0", "--objective", "dapo",
                              "--tracking-uri", uri])
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    assert lines[0].startswith("recipe note (DAPO, arXiv 2503.14476): objective dapo runs without the rest of its recipe")
    assert "filter_groups" not in lines[-1]


def test_objectives_lists_every_recipe_with_its_paper():
    out = runner.invoke(app, ["objectives"], terminal_width=400)
    assert out.exit_code == 0
    for name, row in PAPERS.items():
        assert row[-1] in out.output
    assert "recipes" in out.output and "seq_mean_token_sum_norm" in out.output


def test_trl_maps_or_refuses_each_part():
    pytest.importorskip("trl")
    from workbench.engines.trl.settings import grpo_kwargs, refusals

    base = {"engine": "trl", "rollout_lag": 0, "sft": {"enabled": False}, "model": {"name": "micro-0.5m"}}
    dapo = build_run_config({**base, "recipe": "dapo"})
    lines = refusals(dapo)
    assert len(lines) == 1 and "dynamic_sampling" in lines[0] and "\n" not in lines[0]
    dr = build_run_config({**base, "recipe": "dr_grpo"})
    assert refusals(dr) == []
    assert grpo_kwargs(dr, world_size=1, output_dir="o", use_cpu=True)["scale_rewards"] == "none"
