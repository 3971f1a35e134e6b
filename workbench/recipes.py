"""Recipes: what each paper trains with besides its loss, so that a name means the whole method.

An objective (`workbench.core.objectives`) is a loss and its default aggregation. A paper's
method is more: how advantages are normalised, how the loss is aggregated, its clip bounds,
whether groups with one reward are resampled (dynamic sampling) and whether long responses are
penalised. `--recipe NAME` (or `recipe:` in a config) sets every part; a run that names an
objective without the rest of its recipe is told which parts differ, once at start and in a
run tag (`workbench.names.TAG_RECIPE_DIFF`).

Each recipe as its paper states it:
- grpo (DeepSeekMath, arXiv 2402.03300): advantages (R - mean)/std per group, loss averaged
  per response then over responses, clip 0.2 both sides. Its KL penalty is left out, as for
  every objective here (none of the compared papers after it keeps it).
- dr_grpo (Dr.GRPO, arXiv 2503.20783): advantages R - mean without the std, the loss summed
  and divided by a constant (B x max length), clip 0.2.
- dapo (DAPO, arXiv 2503.14476): std-normalised advantages, token-mean loss, clip-higher
  (eps_low 0.2, eps_high 0.28), dynamic sampling and the soft overlong punishment.
- cispo (MiniMax-M1, arXiv 2506.13585): group-normalised advantages, token-mean loss over all
  tokens of the group, the IS weight clipped with the lower bound off; M1 trains it with DAPO's
  dynamic sampling and length penalty. Its eps_high is not published: 0.28, as
  `workbench.params` declares.
- gspo (GSPO, arXiv 2507.18071): group-normalised advantages, the sequence-level ratio with
  eps 3e-4 / 4e-4, averaged per response; no dynamic sampling or length penalty in the paper.
- dispo (DISPO, arXiv 2602.00983): the clipped IS weight of CISPO with four bounds, token-mean
  loss, group-normalised advantages. The paper does not publish its bounds: the four offsets
  are the workbench's neutral 0.2 (`workbench.params`), and it adds neither dynamic sampling
  nor a length penalty.

Torch-free data: a config names a recipe and is checked against it before torch loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# The parts of a recipe, in the order a note lists them; each is a dotted RunConfig field.
PARTS: tuple[str, ...] = ("objective.name", "advantage", "objective.aggregation", "dynamic_sampling", "overlong.enabled")


@dataclass(frozen=True)
class Recipe:
    name: str
    objective: str
    advantage: str  # grpo: (R - mean)/std; dr_grpo: R - mean
    aggregation: str
    bounds: dict[str, float] = field(default_factory=dict)  # objective.params the recipe fixes
    dynamic_sampling: bool = False
    overlong: bool = False
    paper: str = ""

    def settings(self) -> dict[str, Any]:
        """The recipe as dotted config fields (what `--recipe` sets unless a field is given)."""
        out: dict[str, Any] = {"objective.name": self.objective, "advantage": self.advantage,
                               "objective.aggregation": self.aggregation, "dynamic_sampling": self.dynamic_sampling,
                               "overlong.enabled": self.overlong}
        out.update({f"objective.params.{k}": v for k, v in self.bounds.items()})
        return out


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("grpo", "grpo", "grpo", "seq_mean_token_mean", {"eps_low": 0.2, "eps_high": 0.2},
           paper="DeepSeekMath (GRPO), arXiv 2402.03300"),
    Recipe("dr_grpo", "dr_grpo", "dr_grpo", "seq_mean_token_sum_norm", {"eps_low": 0.2, "eps_high": 0.2},
           paper="Dr.GRPO, arXiv 2503.20783"),
    Recipe("dapo", "dapo", "grpo", "token_mean", {"eps_low": 0.2, "eps_high": 0.28}, dynamic_sampling=True,
           overlong=True, paper="DAPO, arXiv 2503.14476"),
    Recipe("cispo", "cispo", "grpo", "token_mean", {"eps_low": 1.0, "eps_high": 0.28}, dynamic_sampling=True,
           overlong=True, paper="CISPO (MiniMax-M1), arXiv 2506.13585"),
    Recipe("gspo", "gspo", "grpo", "seq_mean_token_mean", {"eps_low": 3e-4, "eps_high": 4e-4},
           paper="GSPO, arXiv 2507.18071"),
    Recipe("dispo", "dispo", "grpo", "token_mean",
           {"eps_pos_up": 0.2, "eps_pos_down": 0.2, "eps_neg_up": 0.2, "eps_neg_down": 0.2},
           paper="DISPO, arXiv 2602.00983"),
)}


def recipe_names() -> list[str]:
    return sorted(RECIPES)


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown recipe {name!r}; valid: {', '.join(recipe_names())}") from None


def describe_recipes() -> list[dict[str, str]]:
    """One row per recipe, every part as text, for `dispo-wb objectives`."""
    return [{"recipe": r.name, "objective": r.objective, "advantage": r.advantage, "aggregation": r.aggregation,
             "bounds": ", ".join(f"{k}={v}" for k, v in r.bounds.items()),
             "dynamic_sampling": _text(r.dynamic_sampling), "overlong": _text(r.overlong), "paper": r.paper}
            for r in (RECIPES[n] for n in recipe_names())]


def _get(data: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = data
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return False, None
        node = node[key]
    return True, node


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        data = data.setdefault(key, {})
    data[leaf] = value


def apply_recipe(data: dict[str, Any], recipe: Recipe) -> dict[str, Any]:
    """Raw config mapping with every part of `recipe` that `data` does not set itself.

    A field `data` gives wins (and `differences` reports it). The bounds are the recipe
    objective's parameters, so they are filled in only when the objective is the recipe's.
    """
    import copy

    out = copy.deepcopy(data)
    given, objective = _get(out, "objective.name")
    same_objective = not given or objective == recipe.objective
    for dotted, value in recipe.settings().items():
        if dotted.startswith("objective.params.") and not same_objective:
            continue
        present, current = _get(out, dotted)
        if not present or (current is None and dotted == "objective.aggregation"):
            _set(out, dotted, value)
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isinf(a) and math.isinf(b):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return a == b


def differences(recipe: Recipe, parts: dict[str, Any]) -> list[str]:
    """The parts of a run (`parts`: dotted field -> resolved value, bounds as objective.params.*)
    that are not `recipe`'s, each as `field=run value (recipe: value)`."""
    out = []
    other_objective = parts.get("objective.name", recipe.objective) != recipe.objective
    for dotted, want in recipe.settings().items():
        # Another objective's parameters are not comparable with the recipe's bounds.
        if dotted not in parts or (other_objective and dotted.startswith("objective.params.")):
            continue
        if not _same(parts[dotted], want):
            out.append(f"{dotted}={_text(parts[dotted])} (recipe: {_text(want)})")
    return out


def _text(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)
