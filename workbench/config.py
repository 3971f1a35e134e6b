"""Run configuration: strict pydantic models loaded from YAML.

One `RunConfig` describes one training run completely; `dispo-wb train --config FILE`
reads it, command-line flags override single fields, and the resolved config is logged
to MLflow so a run can be reproduced from its artifact alone. Unknown keys are errors:
a typo in a clip bound must not silently fall back to a default, and neither inf nor NaN
is a number here except where a field says so (the objective's bounds).

Torch-free by design: validating a config imports only the bottom modules (`params`,
`names`), so a bad input is refused in well under a second.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from workbench import params as declared
from workbench.errors import UserError
from workbench.params import HUB_SETS, MICRO_MODELS

# Where runs are logged when neither --tracking-uri nor MLFLOW_TRACKING_URI says.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

# Seeds reach random, numpy and torch; numpy's generators take at most 32 bits.
MAX_SEED = 2**32 - 1


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)


class ModelConfig(Strict):
    name: str = Field("micro-3m", description="built-in micro model (micro-0.5m, micro-3m, micro-15m), HF hub id or local path")
    trust_remote_code: bool = Field(False, description="let transformers run code shipped with a hub model")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="cuda when available, else cpu")
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="auto: bfloat16 on cuda, float32 on cpu")
    gradient_checkpointing: bool = Field(False, description="trade compute for activation memory")
    autocast: bool = Field(True, description="bf16 autocast of forward passes on CUDA (weights keep their dtype)")


    @field_validator("name")
    @classmethod
    def _known_micro(cls, v: str) -> str:
        if v.startswith("micro-") and v not in MICRO_MODELS:
            raise ValueError(f"unknown micro model {v!r}; built-in: {', '.join(MICRO_MODELS)} (or a HF id or local path)")
        if v.startswith((".", "/", "~")) and not Path(v).expanduser().is_dir():
            raise ValueError(f"local model path {v!r} is not a directory")
        return v


class TaskConfig(Strict):
    name: Literal["chain_sum", "dataset"] = Field("chain_sum", description="chain_sum: built-in synthetic sums; dataset: problems from `source`")
    source: str | None = Field(None, description="dataset task: a benchmark name or file:PATH?question=F&answer=F spec")
    min_terms: int = Field(2, ge=2, le=12, description="fewest terms in a chain")
    max_terms: int = Field(5, ge=2, le=12, description="most terms in a chain")
    digits: int = Field(1, ge=1, le=4, description="digits per term")
    eval_size: int = Field(200, ge=1, description="problems in the fixed held-out set")
    eval_seed: int = Field(1234, ge=0, le=MAX_SEED, description="seed of the held-out set (never the train seed)")

    @model_validator(mode="after")
    def _terms_ordered(self) -> "TaskConfig":
        if self.min_terms > self.max_terms:
            raise ValueError(f"min_terms ({self.min_terms}) must be <= max_terms ({self.max_terms})")
        if self.name == "dataset" and not self.source:
            raise ValueError("source is required for the dataset task (a benchmark name or file:PATH?question=F&answer=F)")
        return self


class SFTConfig(Strict):
    enabled: bool = Field(True, description="warm-start micro models with supervised fine-tuning (cached)")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="seed of the warm start (initial weights and SFT data); None: the run's seed. One fixed seed gives every run seed the same warm start, so seeds differ only in RL's random stream")
    replay_levels: int = Field(1, ge=1, le=8, description="how many times a replay chunk that jumps over the band is itself replayed with finer checks (1: once, the interval after the last check below the band)")
    check: Literal["greedy", "sampled"] = Field("greedy", description="how the stop rule measures held-out accuracy: one greedy response per problem, or avg@check_k sampled at check_temperature")
    check_k: int = Field(4, ge=1, description="sampled check: responses per held-out problem")
    check_temperature: float = Field(1.0, gt=0, description="sampled check: sampling temperature (the rollouts' by default)")
    target_low: float = Field(0.30, ge=0, le=1, description="stop once held-out accuracy (greedy or sampled, see `check`) reaches this")
    target_high: float = Field(0.50, ge=0, le=1, description="upper edge of the accuracy band the warm start aims for")
    max_steps: int = Field(4000, ge=1, description="give up after this many SFT steps")
    lr: float = Field(1e-3, gt=0, description="SFT learning rate (AdamW, after warmup)")
    warmup_steps: int = Field(50, ge=0, description="SFT steps of linear learning-rate warmup")
    batch_size: int = Field(32, ge=1, description="SFT sequences per step")
    eval_every: int = Field(20, ge=1, description="SFT steps between held-out accuracy checks")
    cache_dir: str = Field(".cache/sft", description="where warm starts are stored, keyed by task, model and seed")

    @model_validator(mode="after")
    def _band_ordered(self) -> "SFTConfig":
        if self.target_low > self.target_high:
            raise ValueError(f"target_low ({self.target_low}) must be <= target_high ({self.target_high})")
        return self


class RolloutConfig(Strict):
    backend: Literal["hf", "vllm"] = Field("hf", description="hf: transformers generate; vllm: colocated vLLM engine (GPU extra)")
    prompts_per_step: int = Field(16, ge=1, description="prompts in one rollout batch")
    group_size: int = Field(8, ge=2, description="responses sampled per prompt (G)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (entropy is measured at it)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    max_new_tokens: int = Field(48, ge=1, description="response length limit; longer responses are truncated")
    old_logp: Literal["auto", "recompute"] = Field("auto", description="auto: old log-probs from the decode loop's own logits where exact (hf backend, no top-p, no CUDA autocast), else a second forward pass; recompute: always the second pass")
    gpu_memory_utilization: float = Field(0.35, gt=0, lt=1, description="vLLM share of GPU memory")
    enable_sleep_mode: bool = Field(True, description="vLLM frees its KV cache while the trainer updates")


class ObjectiveConfig(Strict):
    model_config = ConfigDict(allow_inf_nan=True)  # inf switches a bound off; NaN is refused by the params

    name: str = Field("dispo", description="registered objective (dispo-wb objectives lists them)")
    params: dict[str, float | bool | str] = Field(default_factory=dict, description="overrides of the objective's parameters")
    aggregation: str | None = Field(None, description="loss aggregation; None uses the objective's own")

    @field_validator("params", mode="before")
    @classmethod
    def _inf_strings(cls, v: Any) -> Any:
        # YAML has `.inf`, but people write `inf`; both mean "bound switched off".
        if isinstance(v, dict):
            return {k: (math.inf if isinstance(x, str) and x.strip().lower() in {"inf", "+inf", ".inf"} else x) for k, x in v.items()}
        return v

    @model_validator(mode="after")
    def _known_objective(self) -> "ObjectiveConfig":
        declared.make_params(self.name, dict(self.params))
        if self.aggregation is not None:
            declared.check_aggregation(self.aggregation)
        return self

    def build_params(self):
        return declared.make_params(self.name, dict(self.params))


class OverlongConfig(Strict):
    enabled: bool = Field(False, description="DAPO soft overlong penalty")
    buffer: int = Field(8, ge=1, description="tokens before max_new_tokens where the penalty ramps from 0 to -factor")
    factor: float = Field(1.0, ge=0, description="penalty at max_new_tokens")


class EvalConfig(Strict):
    benchmarks: list[str] = Field(default_factory=lambda: ["micro"], description="benchmark names (see workbench.tasks.benchmarks)")
    every: int = Field(20, ge=1, description="training steps between evaluations (and one at the end)")
    k: int = Field(4, ge=1, description="samples per problem: avg@k and pass@k")
    temperature: float = Field(1.0, gt=0, description="sampling temperature for avg@k")
    limit: int | None = Field(None, ge=1, description="evaluate on the first N problems only")

    @field_validator("benchmarks")
    @classmethod
    def _known_benchmarks(cls, v: list[str]) -> list[str]:
        names = ("micro", *HUB_SETS)
        for name in v:
            if name.startswith("file:"):
                path = name.removeprefix("file:").partition("?")[0]
                if not Path(path).expanduser().is_file():
                    raise ValueError(f"benchmark file {path!r} does not exist")
            elif name not in names:
                raise ValueError(f"unknown benchmark {name!r}; valid: {', '.join(names)}, or file:PATH[?question=FIELD&answer=FIELD]")
        return v


class CollapseConfig(Strict):
    repetition_threshold: float = Field(0.5, gt=0, le=1, description="repetition rate above which a step counts as repetitive")
    length_ratio: float = Field(0.35, gt=0, lt=1, description="length below this share of the first steps' mean counts as collapsed")
    truncation_threshold: float = Field(0.5, gt=0, le=1, description="truncated share at or above which a step counts as runaway length")
    accuracy_ratio: float = Field(0.25, gt=0, lt=1, description="train accuracy below this share of the first steps' mean counts as a crash")
    accuracy_min_baseline: float = Field(0.05, ge=0, le=1, description="first steps' mean train accuracy below which no crash is judged")
    patience: int = Field(3, ge=1, description="consecutive steps past a threshold before a run is flagged")
    stop: bool = Field(False, description="end the run when a collapse is flagged")


class RunConfig(Strict):
    recipe: str | None = Field(None, description="a paper's whole method (dispo-wb objectives lists them): sets the objective, "
                                                 "advantage, aggregation, clip bounds, dynamic_sampling and overlong "
                                                 "unless given; None: the objective alone")
    engine: Literal[declared.ENGINES] = Field("local", description="local: the workbench trainer; verl, trl: that engine runs the objective (workbench.engines)")
    experiment: str = Field("dispo-wb", min_length=1, pattern=r"\S", description="MLflow experiment (not blank)")
    run_name: str | None = Field(None, description="MLflow run name; default <objective>-<model>-s<seed>")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seeds sampling, data order and initialisation")
    steps: int = Field(60, ge=1, description="rollout batches (training steps)")
    lr: float = Field(5e-6, gt=0, description="AdamW learning rate for RL (micro-3m: 2e-5 at 16 updates/rollout collapsed)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    updates_per_rollout: int = Field(16, ge=1, description="optimizer steps per rollout batch (minibatches x epochs), as DAPO")
    epochs: int = Field(1, ge=1, description="passes over the rollout batch; minibatches = updates_per_rollout / epochs")
    micro_batch_size: int | None = Field(None, ge=1, description="sequences per forward/backward; gradients accumulate to the minibatch")
    rollout_lag: int = Field(64, ge=0, description="rollouts come from a policy snapshot this many optimizer steps old (64: 4 rollout batches, enough for the bounds to bind)")
    advantage: Literal["grpo", "dr_grpo"] = Field("grpo", description="grpo: (R - mean)/(std + eps); dr_grpo: R - mean")
    dynamic_sampling: bool = Field(False, description="DAPO: drop groups whose responses all have the same reward")
    overlong: OverlongConfig = Field(default_factory=OverlongConfig)
    reward_workers: int = Field(1, ge=1, description="math-verify worker processes")
    reward_timeout_s: float = Field(2.0, gt=0, description="hard wall-clock limit per answer")
    reward_require_boxed: bool = Field(True, description="only a \\boxed{} answer scores; a truncated scratchpad must not")
    sample_every: int = Field(10, ge=1, description="steps between logged tables of sample rollouts")
    checkpoint_every: int = Field(10, ge=1, description="steps between resumable checkpoints")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None leaves torch's default")
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    collapse: CollapseConfig = Field(default_factory=CollapseConfig)

    @model_validator(mode="before")
    @classmethod
    def _apply_recipe(cls, data: Any) -> Any:
        # Fields given in the file or flags win over the recipe's; `recipe_differences` names them.
        from workbench.recipes import RECIPES, apply_recipe

        if isinstance(data, dict) and isinstance(data.get("recipe"), str) and data["recipe"] in RECIPES:
            return apply_recipe(data, RECIPES[data["recipe"]])
        return data

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, v: str | None) -> str | None:
        from workbench.recipes import get_recipe

        if v is not None:
            get_recipe(v)
        return v

    @model_validator(mode="after")
    def _minibatches_divide(self) -> "RunConfig":
        if self.updates_per_rollout % self.epochs:
            raise ValueError(f"updates_per_rollout ({self.updates_per_rollout}) must be a multiple of epochs ({self.epochs})")
        batch = self.rollout.prompts_per_step * self.rollout.group_size
        minibatches = self.updates_per_rollout // self.epochs
        if minibatches > batch:
            raise ValueError(f"updates_per_rollout/epochs ({minibatches}) must be <= responses per step ({batch})")
        return self

    def recipe_parts(self) -> dict[str, Any]:
        """The run's resolved recipe parts as dotted fields (`workbench.recipes.PARTS` and the bounds)."""
        import dataclasses

        agg = self.objective.aggregation or declared.objective_params(self.objective.name).aggregation
        parts: dict[str, Any] = {"objective.name": self.objective.name, "advantage": self.advantage,
                                 "objective.aggregation": agg, "dynamic_sampling": self.dynamic_sampling,
                                 "overlong.enabled": self.overlong.enabled}
        parts.update({f"objective.params.{k}": v for k, v in dataclasses.asdict(self.objective.build_params()).items()})
        return parts

    def recipe_differences(self) -> tuple[str | None, list[str]]:
        """(recipe the run is measured against, the parts that differ from it): the named recipe,
        else the recipe of the objective's name; (None, []) for an objective without one.

        Without a named recipe the bounds are left out: they are the objective's own parameters,
        which a run sets on purpose (a clip-grid trial is not a departure from its paper)."""
        from workbench.recipes import RECIPES, differences

        name = self.recipe or (self.objective.name if self.objective.name in RECIPES else None)
        if name is None:
            return None, []
        parts = self.recipe_parts()
        if self.recipe is None:
            parts = {k: v for k, v in parts.items() if not k.startswith("objective.params.")}
        return name, differences(RECIPES[name], parts)

    @property
    def minibatches(self) -> int:
        return self.updates_per_rollout // self.epochs

    def resolved_run_name(self) -> str:
        if self.run_name:
            return self.run_name
        return f"{self.objective.name}-{Path(self.model.name).name}-s{self.seed}"


class ConfigError(UserError):
    """A config that cannot be used; `lines` holds one message per problem, each naming its field."""


def format_validation_error(err: ValidationError, prefix: str = "") -> list[str]:
    """One line per problem: `path.to.field: message` (pydantic's own wording, minus noise)."""
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "literal_error":
            msg = msg.replace("Input should be", "must be one of")
        where = f"{prefix}{path}" if path else prefix.rstrip(".") or "config"
        lines.append(f"{where}: {msg}")
    return lines


class DuplicateKey(ValueError):
    """A YAML mapping names one key twice; `str()` names the key and both lines."""


_STRICT_LOADER = None


def _strict_loader():
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""
    global _STRICT_LOADER
    if _STRICT_LOADER is not None:
        return _STRICT_LOADER
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:  # the mapping's own keys: `<<` merges may be overridden
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: PyYAML's own error follows
                    continue
                if first != key_node.start_mark.line + 1:
                    raise DuplicateKey(f"key {key!r} appears twice in one mapping, at line {first} and line "
                                       f"{key_node.start_mark.line + 1}; each key may appear once")
            return super().construct_mapping(node, deep=deep)

    _STRICT_LOADER = StrictLoader
    return StrictLoader


def strict_yaml_load(text: str) -> Any:
    """`yaml.safe_load` that raises DuplicateKey for a key given twice in one mapping."""
    import yaml

    return yaml.load(text, Loader=_strict_loader())  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML mapping; a missing file, a syntax error, a duplicate key or a non-mapping is a ConfigError."""
    import yaml  # here, not at the top: most bad command lines are refused without reading any YAML

    p = Path(path)
    try:
        data = strict_yaml_load(p.read_text(encoding="utf-8"))
    except DuplicateKey as e:
        raise ConfigError([f"{p}: {e}"]) from None
    except FileNotFoundError:
        raise ConfigError([f"{p}: no such file"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"{p}: not UTF-8 text (byte {e.start}); a config must be a UTF-8 YAML file"]) from None
    except (IsADirectoryError, PermissionError) as e:
        raise ConfigError([f"{p}: cannot be read ({e.strerror}); a config must be a readable YAML file"]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError([f"{p}: not valid YAML{where}: {getattr(e, 'problem', e)}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{p}: must be a mapping of config fields, got {type(data).__name__}"])
    return data


def build_run_config(data: dict[str, Any], overrides: dict[str, Any] | None = None, prefix: str = "",
                     settings: dict[str, Any] | None = None) -> RunConfig:
    """Validate `data` with dotted-key `settings` then `overrides` applied (e.g. {"objective.params.eps_neg_up": 0.01}).

    A None override means the flag was not given; a None setting (`--set eval.limit=null`) sets the field to None.
    """
    merged = _apply_overrides(_apply_overrides(data, settings or {}, keep_none=True), overrides or {})
    try:
        return RunConfig.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, prefix)) from None


def load_run_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> RunConfig:
    return build_run_config(read_yaml(path) if path else {}, overrides)


def _apply_overrides(data: dict[str, Any], overrides: dict[str, Any], keep_none: bool = False) -> dict[str, Any]:
    """`data` with dotted-key overrides set; a None override means "not given" unless keep_none."""
    out = copy.deepcopy(data)
    for dotted, value in overrides.items():
        if value is None and not keep_none:
            continue
        node = out
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError([f"{dotted}: cannot set inside non-mapping field {key}"])
        node[leaf] = value
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a.b.c": value}, for MLflow params and for sweep overrides."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def dump_yaml(config: RunConfig) -> str:
    import yaml

    # safe_dump writes math.inf as `.inf`, which safe_load reads back as inf.
    return yaml.safe_dump(config.model_dump(mode="python"), sort_keys=False)
