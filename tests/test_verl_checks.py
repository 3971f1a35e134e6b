"""verl's own checks of `dispo-wb train --engine verl`'s overrides, on CPU (verl's environment).

verl's Hydra trainer config is composed with the overrides the launcher writes for one GPU, one
node of 8 and four nodes of 8; `workbench.engines.verl.checks.check` then runs every validation
verl makes before it needs a GPU (`validate_config`: batch sizes against the GPU count,
micro-batch sizes, the actor dataclass; the loss-mode lookup; our loss's parameters read back
from verl's actor config). A wrong key, an inconsistent batch and an unknown loss are each seen
to fail there.

Run: DISPO_REQUIRE_VERL=1 .venv-verl/bin/python -m pytest -m verl tests/test_verl_checks.py
(the first composition imports verl and Hydra: ~40 s on a loaded 2-core machine).
"""

import importlib
import math
import os

import pytest

pytestmark = pytest.mark.verl

if os.environ.get("DISPO_REQUIRE_VERL") == "1":
    importlib.import_module("verl")
else:
    pytest.importorskip("verl", reason="verl is not installed here: make install-verl")

from workbench.config import build_run_config  # noqa: E402
from workbench.core.objectives import DispoParams  # noqa: E402
from workbench.engines.verl import checks  # noqa: E402
from workbench.engines.verl.launch import verl_overrides  # noqa: E402

BASE = {"engine": "verl", "rollout_lag": 0, "model": {"name": "Qwen/Qwen2.5-Math-1.5B"},
        "rollout": {"prompts_per_step": 32, "group_size": 8, "max_new_tokens": 1024}, "updates_per_rollout": 8}
DISPO = {"objective": {"name": "dispo", "params": {"eps_pos_up": 0.1, "eps_pos_down": 1.0, "eps_neg_up": 0.05,
                                                   "eps_neg_down": math.inf, "mask_mode": True}}}
LAYOUTS = {"1 GPU": ["trainer.n_gpus_per_node=1", "trainer.nnodes=1"],
           "one node of 8": ["trainer.n_gpus_per_node=8", "trainer.nnodes=1"],
           "four nodes of 8": ["trainer.n_gpus_per_node=8", "trainer.nnodes=4"]}


def overrides(data: dict, engine_args: list[str]) -> list[str]:
    cfg = build_run_config({**BASE, **data})
    return verl_overrides(cfg, model_path="/models/m", train_file="/data/train.parquet", val_file="/data/val.parquet",
                          prompt_length=1024) + engine_args


@pytest.mark.parametrize("layout", LAYOUTS)
def test_verl_accepts_the_dispo_run_on_each_layout_and_reads_our_four_bounds(layout):
    built = checks.check(checks.compose(overrides(DISPO, LAYOUTS[layout])))
    assert built["params"] == DispoParams(eps_pos_up=0.1, eps_pos_down=1.0, eps_neg_up=0.05, eps_neg_down=math.inf,
                                          mask_mode=True)
    actor = built["actor"]
    assert actor.policy_loss.loss_mode == "wb_dispo" and actor.loss_agg_mode == "token-mean"
    assert (actor.ppo_mini_batch_size, actor.ppo_epochs) == (32 // 8, 1)


@pytest.mark.parametrize("recipe", ["grpo", "dr_grpo", "dapo", "cispo", "gspo"])
def test_verl_accepts_every_recipe_with_its_group_filter_and_reward_manager(recipe):
    config = checks.compose(overrides({"recipe": recipe}, LAYOUTS["one node of 8"]))
    built = checks.check(config)
    want = build_run_config({**BASE, "recipe": recipe})
    assert built["algorithm"].norm_adv_by_std_in_grpo == (want.advantage == "grpo")
    assert built["algorithm"].filter_groups.enable == want.dynamic_sampling
    assert (config.reward.reward_manager.name == "dapo") == want.overlong.enabled
    params = want.objective.build_params()
    assert (built["actor"].clip_ratio_low, built["actor"].clip_ratio_high) == (params.eps_low, params.eps_high)
    assert built["params"] == params


def test_a_wrong_key_is_refused_by_verls_composition():
    lines = checks.check_overrides(overrides({}, ["actor_rollout_ref.actor.clip_ratio_hi=0.3"]))
    assert len(lines) == 1 and "clip_ratio_hi" in lines[0] and "ConfigCompositionException" in lines[0]


def test_an_inconsistent_batch_is_refused_by_verls_validation():
    # 32 prompts x 8 responses = 256 sequences cannot be spread over 3 GPUs.
    lines = checks.check_overrides(overrides({}, ["trainer.n_gpus_per_node=3"]))
    assert len(lines) == 1 and "must be divisible by minimal possible batch size (3)" in lines[0]


def test_micro_batch_sizes_are_checked_by_verl():
    # Our overrides set the per-GPU log-prob micro-batch; the deprecated global one beside it is refused.
    lines = checks.check_overrides(overrides({}, ["actor_rollout_ref.rollout.log_prob_micro_batch_size=4"]))
    assert len(lines) == 1 and "You have set both" in lines[0]
    lines = checks.check_overrides(overrides({}, ["actor_rollout_ref.actor.ppo_micro_batch_size=3"]))
    assert len(lines) == 1 and "FSDPActorConfig" in lines[0] and "deprecated" in lines[0]


def test_a_loss_mode_missing_from_verls_registry_is_refused():
    lines = checks.check_overrides(overrides({}, ["actor_rollout_ref.actor.policy_loss.loss_mode=wb_nope"]))
    assert len(lines) == 1 and "Unsupported loss mode: wb_nope" in lines[0]


def test_the_launch_stops_on_verls_refusal_in_one_line_before_writing(tmp_path, monkeypatch):
    from workbench.engines.verl import launch
    from workbench.errors import UserError

    monkeypatch.chdir(tmp_path)
    cfg = build_run_config({**BASE, "sft": {"enabled": False}})
    with pytest.raises(UserError) as e:
        launch.train(cfg, tracking_uri=f"sqlite:///{tmp_path}/m.db", engine_args=["trainer.n_gpus_per_node=3"],
                     echo=lambda line: None)
    assert str(e.value).startswith("engine verl: verl refuses the config") and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []
