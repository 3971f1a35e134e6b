"""Study files: one base run config, a search space over the clip bounds, and how to search it.

A study file is YAML with these keys (all but `base` and `space` optional):

    name: clip_grid                 # Optuna study name; default: the file's stem
    base: {steps: 20, ...}          # a run config, the schema of `dispo-wb train --config`
    space:                          # one entry per dimension
      eps_neg_up: [0.01, 0.2, .inf] #   a list of values (grid or categorical)
      lr: {low: 1e-4, high: 1e-3, log: true}   # a range (random, tpe, gp)
      arm: {cispo: {objective.name: cispo, objective.params: {}}, ...}  # named override sets
    sampler: grid                   # grid | random | tpe | gp
    n_trials: 16                    # grid: default and maximum is the grid size
    directions: [maximize eval/micro/accuracy, minimize collapse]
    seeds: [0, 1, 2]                # every trial trains once per seed; its value is the mean
    seeds: {looks: [5, 10, 20]}     # or seeds 0..19 in looks: a claims study judges after 5, 10, 20,
                                    # runs look by look and gives later seeds only to the arms of
                                    # claims still undecided (workbench.sweep.looks)
    pruner: median                  # none | median | percentile | hyperband (single objective only)
    workers: 2
    storage: null                   # default: <study file>.journal next to the file
    claims: [...]                   # what the study tests, declared before it runs (workbench.sweep.claims)

Space keys are the four bounds (`eps_pos_up`, `eps_pos_down`, `eps_neg_up`, `eps_neg_down`,
i.e. `objective.params.<name>`), `objective`, `lr`, `updates_per_rollout`, `rollout_lag`, any
dotted field of the run config, or `arm`. Every value is checked by building the run config
it makes, so a bad bound is reported against the space entry that holds it.

Each error is one line `path.in.file: message`; `load_study_file` raises them all at once as
`ConfigError`, before any storage is opened.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workbench.sweep.claims import ClaimSpec, check_claims, looks_problem
from workbench.config import ConfigError, RunConfig, build_run_config, format_validation_error, read_yaml
from workbench.names import COLLAPSE_RATE, ENTROPY_RETENTION, EVAL_PREFIX, best_key
from workbench.params import DISPO_BOUNDS

SHORT_NAMES: dict[str, str] = {
    **{b: f"objective.params.{b}" for b in DISPO_BOUNDS},
    "objective": "objective.name",
    "lr": "lr",
    "updates_per_rollout": "updates_per_rollout",
    "rollout_lag": "rollout_lag",
}
ARM = "arm"
_MAX_GRID_CHECK = 4096  # combinations validated one by one; beyond that only each value alone


class Direction(NamedTuple):
    """One objective of a study: what is measured per seed and which way is better."""

    direction: Literal["maximize", "minimize"]
    metric: str  # eval/<benchmark>/accuracy | eval/<benchmark>/pass_at_<k> | collapse | entropy_retention
    at: Literal["final", "best"] = "final"  # eval metrics: last evaluation or best over the run

    @property
    def key(self) -> str:
        """MLflow metric key of the trial's value, e.g. `eval/micro/accuracy` or `best/eval/micro/accuracy`."""
        if self.metric == "collapse":
            return COLLAPSE_RATE
        if self.metric == "entropy_retention":
            return ENTROPY_RETENTION
        return self.metric if self.at == "final" else best_key(self.metric)

    @property
    def label(self) -> str:
        return f"{self.direction} {'best ' if self.at == 'best' else ''}{self.metric}"


class Dimension(NamedTuple):
    """One axis of the space. `values` (list) or `low`/`high` (range) or `arms` (named override sets)."""

    name: str
    path: str | None  # dotted run-config field; None for `arm`
    values: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False
    arms: dict[str, dict[str, Any]] | None = None

    @property
    def choices(self) -> list[Any] | None:
        return list(self.arms) if self.arms is not None else self.values


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Range(_Strict):
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)


class PrunerSpec(_Strict):
    name: Literal["none", "median", "percentile", "hyperband"] = "median"
    n_startup_trials: int = Field(2, ge=0, description="median/percentile: trials before pruning starts")
    n_warmup_steps: int = Field(0, ge=0, description="median/percentile: training steps before a trial can be pruned")
    percentile: float = Field(25.0, gt=0, lt=100, description="percentile: keep trials above this percentile")


class _StudyModel(_Strict):
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    base: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Any]
    sampler: Literal["grid", "random", "tpe", "gp"] = "tpe"
    sampler_seed: int = 0
    n_trials: int | None = Field(None, ge=1)
    directions: list[str] = Field(default_factory=lambda: ["maximize eval/micro/accuracy"], min_length=1)
    seeds: Any = Field(default_factory=lambda: [0])  # a list of seeds or {looks: [...]}: _parse_seeds
    pruner: PrunerSpec | Literal["none", "median", "percentile", "hyperband"] | None = None
    workers: int = Field(1, ge=1)
    storage: str | None = None
    claims: list[ClaimSpec] = Field(default_factory=list)


@dataclass(frozen=True)
class Study:
    """A validated study file."""

    name: str
    path: Path
    base: RunConfig
    base_data: dict[str, Any]  # the `base:` mapping as written; trial configs are built from it
    space: dict[str, Dimension]
    sampler: str
    sampler_seed: int
    n_trials: int
    directions: list[Direction]
    seeds: list[int]
    pruner: PrunerSpec
    workers: int
    storage: str | None
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    claims: list[ClaimSpec] = field(default_factory=list)  # what the study was declared to test
    looks: list[int] = field(default_factory=list)  # seeds at each look (claims); [] = one look at all seeds

    @property
    def prunes_on_collapse(self) -> bool:
        """A collapsed run ends its trial as PRUNED, unless collapse is itself an objective."""
        return all(d.metric != "collapse" for d in self.directions)

    def grid(self) -> dict[str, list[Any]]:
        return {name: dim.choices for name, dim in self.space.items()}

    def overrides(self, params: dict[str, Any]) -> dict[str, Any]:
        """Sampled params -> dotted run-config overrides (an arm expands into its override set)."""
        out: dict[str, Any] = {}
        for name, value in params.items():
            dim = self.space[name]
            out.update(_expand(dim.arms[value]) if dim.arms is not None else {dim.path: value})
        return out

    def run_config(self, overrides: dict[str, Any], seed: int, threads: int | None = None) -> RunConfig:
        extra: dict[str, Any] = {"seed": seed}
        if threads and self.base.threads is None:
            extra["threads"] = threads
        return build_run_config(self.base_data, {**overrides, **extra})

    def fingerprint(self) -> str:
        """Hash of what makes trials comparable (base, space, seeds, directions); n_trials may grow."""
        keep = {k: self.raw.get(k) for k in ("base", "space", "seeds", "directions", "sampler")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def default_storage(path: str | Path) -> Path:
    """Journal file next to the study file: appends with a file lock, safe for local worker processes."""
    p = Path(path)
    return p.with_name(p.stem + ".journal")


def load_study_file(path: str | Path) -> Study:
    p = Path(path)
    return parse_study(read_yaml(p), p)


def parse_study(data: dict[str, Any], path: Path) -> Study:
    data = _normalise_inf(data)
    if isinstance(data.get("base", {}), dict) and "engine" in data:
        # `engine: verl` at the top is where every trial's runs train: the base runs' engine field.
        if "engine" in data.get("base", {}):
            raise ConfigError(["engine: set it at the top or in base:, not both"])
        data = {**{k: v for k, v in data.items() if k != "engine"}, "base": {**data.get("base", {}), "engine": data["engine"]}}
    try:
        model = _StudyModel.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None
    errors: list[str] = []
    base: RunConfig | None = None
    try:
        base = build_run_config(model.base, prefix="base.")
    except ConfigError as e:
        errors += e.lines
    space = _parse_space(model, base, errors)
    directions = _parse_directions(model.directions, base, errors)
    seeds, looks = _parse_seeds(model.seeds, errors)
    pruner = _resolve_pruner(model.pruner, directions, errors)
    n_trials = _resolve_n_trials(model, space, errors)
    name = model.name or path.stem
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        errors.append(f"name: the study is named after the file ({name!r}), which needs letters, digits, "
                      f"'_', '.' or '-' only; set `name:`")
    arm_dim = space.get(ARM)
    prunes = pruner.name != "none" or all(d.metric != "collapse" for d in directions)
    errors += check_claims(model.claims, list(arm_dim.arms) if arm_dim and arm_dim.arms else None,
                           len(seeds) or None, prunes)
    if errors:
        raise ConfigError(errors)
    assert base is not None and n_trials is not None
    if looks and model.claims and arm_dim is not None and arm_dim.choices:
        n_trials = len(arm_dim.choices) * len(looks)  # sequential: at most one trial per arm and look
    return Study(name=name, path=path, base=base, base_data=model.base, space=space,
                 sampler=model.sampler, sampler_seed=model.sampler_seed, n_trials=n_trials, directions=directions,
                 seeds=seeds, pruner=pruner, workers=model.workers, storage=model.storage, raw=data,
                 claims=list(model.claims), looks=looks)


_SEEDS_HELP = "a list of distinct integer seeds, e.g. [0, 1, 2], or {looks: [5, 10, 20]} (seeds 0..19 judged after 5, 10, 20)"


def _parse_seeds(raw: Any, errors: list[str]) -> tuple[list[int], list[int]]:
    """`[0, 1, 2]` -> those seeds, no looks; `{looks: [5, 10]}` -> seeds 0..9, looks [5, 10]."""
    def ints(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)

    if isinstance(raw, list):
        if not ints(raw):
            errors.append(f"seeds: must be {_SEEDS_HELP}; got {raw}")
            return [], []
        if len(set(raw)) != len(raw):
            errors.append(f"seeds: each seed at most once, got {raw}")
            return [], []
        return list(raw), []
    if not isinstance(raw, dict) or set(raw) != {"looks"}:
        errors.append(f"seeds: must be {_SEEDS_HELP}; got {raw!r}")
        return [], []
    looks = raw["looks"]
    problem = looks_problem(looks)
    if problem:
        errors.append(f"seeds.looks: {problem}")
        return [], []
    return list(range(looks[-1])), list(looks)


def parse_direction(text: str) -> Direction:
    """'maximize eval/micro/accuracy', 'maximize best eval/micro/pass_at_4', 'minimize collapse', 'maximize entropy retention'."""
    words = text.strip().split()
    if len(words) < 2 or words[0] not in ("maximize", "minimize"):
        raise ValueError(_DIRECTION_HELP + f"; got {text!r}")
    at = "final"
    if words[1] in ("final", "best"):
        at, words = words[1], [words[0], *words[2:]]
    metric = "_".join(words[1:])
    if metric in ("collapse", "entropy_retention"):
        if at == "best":
            raise ValueError(f"'best' applies to eval metrics only; got {text!r}")
        return Direction(words[0], metric, "final")
    if not re.fullmatch(r"eval/[a-z0-9_.]+/(accuracy|pass_at_\d+)", metric):
        raise ValueError(_DIRECTION_HELP + f"; got {text!r}")
    return Direction(words[0], metric, at)


_DIRECTION_HELP = ("must be 'maximize|minimize [best] METRIC' with METRIC one of eval/<benchmark>/accuracy, "
                   "eval/<benchmark>/pass_at_<k>, collapse, entropy retention")


def _parse_directions(texts: list[str], base: RunConfig | None, errors: list[str]) -> list[Direction]:
    out = []
    for i, text in enumerate(texts):
        try:
            d = parse_direction(text)
        except ValueError as e:
            errors.append(f"directions.{i}: {e}")
            continue
        if base is not None and d.metric.startswith(EVAL_PREFIX):
            _, bench, what = d.metric.split("/")
            if bench not in base.eval.benchmarks:
                errors.append(f"directions.{i}: benchmark {bench!r} is not evaluated by the base config "
                              f"(base.eval.benchmarks: {', '.join(base.eval.benchmarks)})")
            elif what.startswith("pass_at_") and int(what.removeprefix("pass_at_")) != base.eval.k:
                errors.append(f"directions.{i}: runs log pass_at_{base.eval.k} (base.eval.k), not {what}")
        if d.key in {o.key for o in out}:
            errors.append(f"directions.{i}: {d.label!r} appears twice")
        out.append(d)
    return out


def _resolve_pruner(raw: Any, directions: list[Direction], errors: list[str]) -> PrunerSpec:
    single_eval = len(directions) == 1 and directions[0].metric.startswith(EVAL_PREFIX)
    if raw is None:
        return PrunerSpec(name="median" if single_eval else "none")
    spec = PrunerSpec(name=raw) if isinstance(raw, str) else raw
    if spec.name != "none" and not single_eval:
        errors.append("pruner: only a study with one eval-metric direction can prune (Optuna reports one "
                      "intermediate value per step); use pruner: none")
    return spec


def _resolve_n_trials(model: _StudyModel, space: dict[str, Dimension], errors: list[str]) -> int | None:
    if model.sampler != "grid":
        if model.n_trials is None:
            errors.append(f"n_trials: required with sampler {model.sampler}")
        return model.n_trials
    size = math.prod(len(d.choices or []) for d in space.values()) if space else None
    if size is None:
        return model.n_trials
    if model.n_trials is not None and model.n_trials > size:
        errors.append(f"n_trials: a grid of {size} points runs at most {size} trials, got {model.n_trials}")
    return model.n_trials or size


def _parse_space(model: _StudyModel, base: RunConfig | None, errors: list[str]) -> dict[str, Dimension]:
    if not model.space:
        errors.append("space: needs at least one dimension, e.g. eps_neg_up: [0.01, 0.2]")
        return {}
    space: dict[str, Dimension] = {}
    for name, spec in model.space.items():
        where = f"space.{name}"
        before = len(errors)
        dim = _parse_dimension(name, spec, model.sampler, where, errors)
        if dim is None:
            continue
        space[name] = dim
        if base is not None and len(errors) == before:
            _check_values(model.base, dim, where, errors)
    if base is not None and model.sampler == "grid" and len(space) == len(model.space) and not errors:
        _check_combinations(model.base, space, errors)
    return space


def _parse_dimension(name: str, spec: Any, sampler: str, where: str, errors: list[str]) -> Dimension | None:
    if name == ARM:
        if not isinstance(spec, dict) or not spec or not all(isinstance(v, dict) for v in spec.values()):
            errors.append(f"{where}: must map arm names to override sets, e.g. {{tight: {{eps_neg_up: 0.01}}}}")
            return None
        return Dimension(name, None, arms={str(k): dict(v) for k, v in spec.items()})
    path = SHORT_NAMES.get(name, name)
    kind = _field_kind(path)
    if kind is None:
        errors.append(f"{where}: unknown parameter; use {', '.join(SHORT_NAMES)}, arm, or a dotted run-config "
                      f"field such as rollout.group_size")
        return None
    if isinstance(spec, list):
        if not spec:
            errors.append(f"{where}: needs at least one value")
            return None
        bad = [v for v in spec if not isinstance(v, (str, int, float, bool))]
        if bad:
            errors.append(f"{where}: values must be numbers, strings or booleans, got {bad[0]!r}")
            return None
        if len(set(map(repr, spec))) != len(spec):
            errors.append(f"{where}: each value at most once, got {spec}")
            return None
        return Dimension(name, path, values=list(spec))
    if isinstance(spec, dict):
        if sampler == "grid":
            errors.append(f"{where}: sampler grid needs a list of values, got a range")
            return None
        try:
            r = _Range.model_validate(spec)
        except ValidationError as e:
            errors.extend(format_validation_error(e, where + "."))
            return None
        bad = len(errors)
        if kind not in ("int", "float"):
            errors.append(f"{where}: a range needs a numeric field, {path} is not; give a list of values")
        if r.high <= r.low:
            errors.append(f"{where}.high: must be > low ({r.low:g}), got {r.high:g}")
        if r.log and r.low <= 0:
            errors.append(f"{where}.low: must be > 0 with log: true, got {r.low:g}")
        if r.log and r.step is not None:
            errors.append(f"{where}.step: cannot be combined with log: true")
        integer = kind == "int"
        if integer:
            for key in ("low", "high", "step"):
                v = getattr(r, key)
                if v is not None and not float(v).is_integer():
                    errors.append(f"{where}.{key}: {path} is an integer field, got {v:g}")
        if len(errors) > bad:
            return None
        conv = int if integer else float
        return Dimension(name, path, low=conv(r.low), high=conv(r.high), log=r.log,
                         step=None if r.step is None else conv(r.step), integer=integer)
    errors.append(f"{where}: must be a list of values or a range {{low, high, log}}, got {type(spec).__name__}")
    return None


def _check_values(base_data: dict[str, Any], dim: Dimension, where: str, errors: list[str]) -> None:
    """Build the run config each value makes; report failures against the space entry."""
    if dim.arms is not None:
        cases = [(f"{where}.{arm}", _expand(ov)) for arm, ov in dim.arms.items()]
    elif dim.values is not None:
        cases = [(f"{where}.{i}", {dim.path: v}) for i, v in enumerate(dim.values)]
    else:
        cases = [(f"{where}.low", {dim.path: dim.low}), (f"{where}.high", {dim.path: dim.high})]
    for at, overrides in cases:
        try:
            build_run_config(base_data, overrides)
        except ConfigError as e:
            errors.extend(f"{at}: {_strip_path(line)}" for line in e.lines)


def _check_combinations(base_data: dict[str, Any], space: dict[str, Dimension], errors: list[str]) -> None:
    # An arm that switches the objective can clash with a bound of another axis: catch it now.
    names = list(space)
    combos = itertools.product(*(space[n].choices for n in names))
    for combo in itertools.islice(combos, _MAX_GRID_CHECK):
        params = dict(zip(names, combo))
        overrides: dict[str, Any] = {}
        for n, v in params.items():
            dim = space[n]
            overrides.update(_expand(dim.arms[v]) if dim.arms is not None else {dim.path: v})
        try:
            build_run_config(base_data, overrides)
        except ConfigError as e:
            errors.append(f"space: the grid point {params} is invalid: {_strip_path(e.lines[0])}")
            return


def _expand(overrides: dict[str, Any]) -> dict[str, Any]:
    return {SHORT_NAMES.get(k, k): v for k, v in overrides.items()}


def _strip_path(line: str) -> str:
    """'objective: DispoParams.eps_neg_up must be ...' -> 'DispoParams.eps_neg_up must be ...'."""
    head, sep, rest = line.partition(": ")
    return rest if sep and " " not in head else line


def _field_kind(path: str) -> str | None:
    """'int' | 'float' | 'other' for a dotted RunConfig field; None if there is no such field."""
    model: Any = RunConfig
    parts = path.split(".")
    for i, part in enumerate(parts):
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return None
        ann = fields[part].annotation
        if get_origin(ann) is dict:  # objective.params.<name>: the objective validates the name
            return "float" if i == len(parts) - 2 else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
            continue
        if i != len(parts) - 1:
            return None
        args = [a for a in (get_args(ann) if get_origin(ann) is Union or get_args(ann) else (ann,)) if a is not type(None)]
        if args == [int]:
            return "int"
        if args == [float]:
            return "float"
        return "other"
    return None


def _normalise_inf(data: Any) -> Any:
    # `inf` switches an upper bound off; YAML spells it `.inf` but people write `inf`.
    if isinstance(data, dict):
        return {k: _normalise_inf(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_normalise_inf(v) for v in data]
    if isinstance(data, str) and data.strip().lower() in {"inf", "+inf", ".inf"}:
        return math.inf
    return data
