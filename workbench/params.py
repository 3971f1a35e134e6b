"""Parameters without the code that uses them: objective bounds and defaults, aggregation modes,
micro model shapes, the public benchmark sets.

A bottom module (no torch, transformers or mlflow), so that a config can be validated, and a bad
one refused, before any heavy import. `objectives.py` registers its loss functions against the
parameter classes declared here; `models.py` builds micro models from `MICRO_MODELS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from workbench.names import REGIMES

# Where a run trains: the workbench's own trainer, or an engine that runs its objectives (workbench.engines).
ENGINES: tuple[str, ...] = ("local", "verl", "trl")

# DISPO's four bounds, one per regime: eps_pos_up, eps_pos_down, eps_neg_up, eps_neg_down.
DISPO_BOUNDS: tuple[str, ...] = tuple(f"eps_{regime}" for regime in REGIMES)
# Bounds below 1 (w >= 1 - eps); the others are upper bounds (w <= 1 + eps).
LOWER_BOUNDS: frozenset[str] = frozenset({"eps_pos_down", "eps_neg_down", "eps_low"})


def bound_off(name: str, offset):
    """Whether bound `name` at `offset` is switched off: a lower bound at offset >= 1 (1 - eps <= 0
    lets every ratio through), an upper bound at inf. Elementwise on numpy arrays; NaN is not off."""
    return offset >= 1 if name in LOWER_BOUNDS else offset == math.inf


AGGREGATIONS: tuple[str, ...] = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def _check_offset(owner: object, name: str) -> None:
    value = getattr(owner, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
        raise ValueError(
            f"{type(owner).__name__}.{name} must be a number >= 0 (an offset from 1; "
            f"math.inf switches an upper bound off, >= 1 a lower bound), got {value!r}"
        )
    object.__setattr__(owner, name, float(value))


@dataclass(frozen=True)
class ClipParams:
    """Clip bounds [1 - eps_low, 1 + eps_high] of the PPO family and CISPO."""

    eps_low: float = 0.2  # lower bound 1 - eps_low; eps_low >= 1 switches it off
    eps_high: float = 0.2  # upper bound 1 + eps_high; math.inf switches it off

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_offset(self, f.name)


@dataclass(frozen=True)
class DispoParams:
    """DISPO's four per-regime bounds (docs/design.md#regimes-and-bounds), each an offset from 1."""

    eps_pos_up: float = 0.2  # correct responses, r >= 1: w <= 1 + eps_pos_up (inf: off)
    eps_pos_down: float = 0.2  # correct responses, r < 1: w >= 1 - eps_pos_down (>= 1: off)
    eps_neg_up: float = 0.2  # incorrect responses, r >= 1: w <= 1 + eps_neg_up (inf: off)
    eps_neg_down: float = 0.2  # incorrect responses, r < 1: w >= 1 - eps_neg_down (>= 1: off)
    mask_mode: bool = False  # drop tokens outside their bound instead of clipping (CISPO Eq. 7 style)

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name != "mask_mode":
                _check_offset(self, f.name)
        if not isinstance(self.mask_mode, bool):
            raise ValueError(f"DispoParams.mask_mode must be true or false, got {self.mask_mode!r}")


@dataclass(frozen=True)
class ObjectiveParams:
    """An objective's declaration: its parameter class, aggregation, defaults and source paper."""

    params_cls: type
    aggregation: str
    defaults: dict[str, Any] = field(default_factory=dict)  # overrides of params_cls()'s fields
    paper: str = ""  # name and arXiv id, shown by `dispo-wb objectives`

    @property
    def default_params(self) -> Any:
        return self.params_cls(**self.defaults)


# The built-in objectives, declared here only: workbench.core.objectives registers a loss under
# each name (see its docstring for the defaults' sources).
_DECLARED: dict[str, ObjectiveParams] = {
    "grpo": ObjectiveParams(ClipParams, "seq_mean_token_mean", paper="DeepSeekMath (GRPO), arXiv 2402.03300"),
    "dr_grpo": ObjectiveParams(ClipParams, "seq_mean_token_sum_norm", paper="Dr.GRPO, arXiv 2503.20783"),
    "dapo": ObjectiveParams(ClipParams, "token_mean", {"eps_low": 0.2, "eps_high": 0.28}, paper="DAPO, arXiv 2503.14476"),
    "cispo": ObjectiveParams(ClipParams, "token_mean", {"eps_low": 1.0, "eps_high": 0.28},
                             paper="CISPO (MiniMax-M1), arXiv 2506.13585"),
    "gspo": ObjectiveParams(ClipParams, "seq_mean_token_mean", {"eps_low": 3e-4, "eps_high": 4e-4},
                            paper="GSPO, arXiv 2507.18071"),
    "dispo": ObjectiveParams(DispoParams, "token_mean", paper="DISPO, arXiv 2602.00983"),
}


def check_aggregation(mode: str) -> str:
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation mode {mode!r}; valid: {', '.join(AGGREGATIONS)}")
    return mode


def declare_objective(name: str, spec: ObjectiveParams) -> None:
    """Add an objective's parameters (objectives.register_objective does this for new objectives)."""
    if name in _DECLARED:
        raise ValueError(f"objective {name!r} is already registered")
    check_aggregation(spec.aggregation)
    spec.default_params  # noqa: B018 - the defaults must be valid before anything relies on them
    _DECLARED[name] = spec


def objective_names() -> list[str]:
    return sorted(_DECLARED)


def objective_params(name: str) -> ObjectiveParams:
    try:
        return _DECLARED[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown objective {name!r}; valid: {', '.join(objective_names())}") from None


def make_params(name: str, overrides: dict[str, Any] | None = None) -> Any:
    """The objective's params: its defaults with `overrides` (field name -> value) applied."""
    spec = objective_params(name)
    types = {f.name: f.type for f in fields(spec.params_cls)}
    for key, value in (overrides or {}).items():
        if key not in types:
            raise ValueError(f"unknown parameter {key!r} for objective {name!r}; allowed: {', '.join(types)}")
        want_bool = types[key] in (bool, "bool")
        if want_bool != isinstance(value, bool):
            kind = "true or false" if want_bool else "a number >= 0 (inf allowed)"
            raise ValueError(f"parameter {key!r} of objective {name!r} must be {kind}, got {value!r}")
    return replace(spec.default_params, **(overrides or {}))


# --- micro models ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MicroSpec:
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int


MICRO_MODELS: dict[str, MicroSpec] = {
    "micro-0.5m": MicroSpec(hidden=128, layers=2, intermediate=512, heads=4, kv_heads=4),
    "micro-3m": MicroSpec(hidden=256, layers=4, intermediate=640, heads=4, kv_heads=4),
    # 15M parameters do not fit in hidden 256 at 4 layers; width is cheaper than depth on CPU.
    "micro-15m": MicroSpec(hidden=512, layers=4, intermediate=1792, heads=8, kv_heads=8),
}


def is_micro(name: str) -> bool:
    return name in MICRO_MODELS


# --- public benchmarks (loaded by workbench.tasks.benchmarks) ------------------------------------------


@dataclass(frozen=True)
class HubSet:
    dataset_id: str
    question: str
    answer: str


HUB_SETS: dict[str, HubSet] = {
    "aime24": HubSet("HuggingFaceH4/aime_2024", "problem", "answer"),
    "aime25": HubSet("math-ai/aime25", "problem", "answer"),
    "amc23": HubSet("math-ai/amc23", "question", "answer"),
    "math500": HubSet("HuggingFaceH4/MATH-500", "problem", "answer"),
    "minerva": HubSet("math-ai/minervamath", "question", "answer"),
}
