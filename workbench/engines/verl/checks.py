"""verl's own checks of the overrides `dispo-wb train --engine verl` produces, on a machine without a GPU.

verl cannot train on CPU, but two things it does before it needs a device can run anywhere:
composing its Hydra config (`verl/trainer/config/ppo_trainer.yaml` plus the overrides; a
key that does not exist is an error there) and `verl.utils.config.validate_config`, which
`verl.trainer.main_ppo` calls first (batch sizes against the GPU count, micro-batch sizes,
the actor's dataclass and its own `validate`). `check` runs both, then what the workers do
next with the actor config: build verl's dataclasses (`omega_conf_to_dataclass`), look the
loss mode up in verl's policy-loss registry and read our loss's parameters from that config.

verl 0.9.1's `RewardManagerConfig.__post_init__` calls a `super().__post_init__` that its base
class does not have, so the reward section cannot become a dataclass (verl's driver never
converts it); the one check it would make, that the reward manager is registered, is made
here directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

CONFIG_NAME = "ppo_trainer"


def config_dir() -> Path:
    import verl

    return Path(verl.__file__).parent / "trainer" / "config"


def compose(overrides: Iterable[str]):
    """verl's trainer config (an OmegaConf DictConfig) with `overrides`, as `main_ppo`'s Hydra builds it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return hydra_compose(config_name=CONFIG_NAME, overrides=list(overrides))


def check(config) -> dict[str, Any]:
    """Every validation verl makes before it needs a GPU; returns the dataclasses it built.

    Raises what verl raises (AssertionError, ValueError, omegaconf errors) for a bad config.
    """
    import warnings

    import verl  # noqa: F401  (its plugin entry points register the wb_* losses)
    from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER
    from verl.trainer.ppo.core_algos import get_policy_loss_fn
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    from workbench.engines.verl.losses import PREFIX, objective_params

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "critic disabled as adv_estimator != gae": intended
        validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    actor = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    loss_mode = actor.policy_loss.loss_mode
    get_policy_loss_fn(loss_mode)
    params = objective_params(loss_mode[len(PREFIX):], actor) if loss_mode.startswith(PREFIX) else None
    manager = config.reward.reward_manager
    if manager.source == "register" and manager.name not in REWARD_MANAGER:
        raise ValueError(f"reward manager {manager.name!r} is not registered in verl; registered: "
                         f"{', '.join(sorted(REWARD_MANAGER))}")
    return {"actor": actor, "params": params, "algorithm": omega_conf_to_dataclass(config.algorithm),
            "rollout": omega_conf_to_dataclass(config.actor_rollout_ref.rollout)}


def check_overrides(overrides: Iterable[str]) -> list[str]:
    """One line per problem verl finds in `overrides` (empty: verl accepts them)."""
    try:
        check(compose(overrides))
    except Exception as e:  # Hydra, OmegaConf, verl's asserts: each says what is wrong in its own words
        text = " ".join(str(e).split()) or type(e).__name__
        return [f"verl refuses the config: {type(e).__name__}: {text}"]
    return []
