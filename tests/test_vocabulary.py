"""The workbench spells each metric key, MLflow tag and shared list once.

Metric keys and tag names live in `workbench/names.py`: a key or tag spelled by hand elsewhere
drifts from the one the report and the sweep read (docs/design.md#metrics). The bound names and the engine list live in
`workbench/params.py`. These tests read every module's string literals (docstrings aside) and
name each one that spells such a thing elsewhere.

    pytest tests/test_vocabulary.py -q
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import workbench

PACKAGE = Path(workbench.__file__).parent
# Modules allowed their own key literals: none since the regime statistics became one accumulator.
NOT_YET: set[str] = set()
# The trl bridge's metric-prefix lists go through names.py when its recipes rework lands.
KEY_PREFIXES_NOT_YET: set[str] = {"engines/trl/bridge.py", "engines/trl/check.py"}
TAG = re.compile(r"(?<![\w-])dispo\.[a-z_]")
# A whole literal that is a metric key (`perf/step_s`, `regime/pos_up/clip_frac`) or an MLflow/Optuna
# tag (`mlflow.parentRunId`, `optuna.storage`); file names (`mlflow.db`) are not tags.
METRIC_KEY = re.compile(r"^(regime|response|reward|eval|perf|batch|ratio|entropy|loss|grad|rollout|train|best|collapse)"
                        r"/([a-z0-9_.]+(/[a-z0-9_.]+)*/?)?$")
OTHER_TAG = re.compile(r"^(mlflow|optuna)\.[A-Za-z_]+$(?<!\.db)(?<!\.log)(?<!\.pid)")


def _docstrings(tree: ast.AST) -> set[int]:
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))]
    return {id(n.body[0].value) for n in nodes
            if n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}


def _literals(source: str) -> list[tuple[int, str]]:
    """(line, text) of each string literal, f-string parts included, docstrings left out."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip]


def spelled_tags(source: str) -> list[tuple[int, str]]:
    """(line, literal) of each string literal that spells a `dispo.*` tag, or is an mlflow./optuna. tag."""
    return [(line, text) for line, text in _literals(source) if TAG.search(text) or OTHER_TAG.search(text)]


def spelled_keys(source: str) -> list[tuple[int, str]]:
    """(line, literal) of each string literal that is a metric key or a key prefix."""
    return [(line, text) for line, text in _literals(source) if METRIC_KEY.search(text)]


def spelled_lists(source: str) -> list[tuple[int, str]]:
    """(line, code) of each tuple, list or set literal that names two bounds or two engines."""
    from workbench.params import DISPO_BOUNDS, ENGINES

    found = []
    for n in ast.walk(ast.parse(source)):
        if isinstance(n, (ast.Tuple, ast.List, ast.Set)):
            words = {e.value for e in n.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            if len(words & set(DISPO_BOUNDS)) >= 2 or len(words & set(ENGINES)) >= 2:
                found.append((n.lineno, ast.unparse(n)))
    return found


def test_the_check_sees_literals_and_filters():
    source = ('"""Tagged `dispo.kind` (a docstring)."""\n'
              'a = {"dispo.kind": "train"}\n'
              'b = f"tags.`dispo.study` = {x}"\n'
              'c = "dispo-wb train"\n')
    assert spelled_tags(source) == [(2, "dispo.kind"), (3, "tags.`dispo.study` = ")]
    keys = ('"""`perf/step_s` in a docstring."""\n'
            'a = {"response/length_mean": 1, "perf/": 2, "reward/crash_frac": 3}\n'
            'b = f"regime/{r}/clip_frac"\n'
            'c = "dispo-wb train/eval"; d = "and/or"; e = "a/b"\n'
            'f = {"mlflow.parentRunId": 1, "optuna.storage": 2, "mlflow.db": 3, "mlflow.store.db.utils": 4}\n'
            'g = ("local", "verl"); h = Literal["eps_pos_up", "eps_neg_up"]; i = ("eps_pos_up",)\n')
    assert spelled_keys(keys) == [(2, "response/length_mean"), (2, "perf/"), (2, "reward/crash_frac"), (3, "regime/")]
    assert spelled_tags(keys) == [(5, "mlflow.parentRunId"), (5, "optuna.storage")]
    assert spelled_lists(keys) == [(6, "('local', 'verl')"), (6, "('eps_pos_up', 'eps_neg_up')")]


def test_dispo_tags_are_spelled_only_in_names():
    found = [f"{path.relative_to(PACKAGE)}:{line}: {text!r}"
             for path in sorted(PACKAGE.rglob("*.py"))
             if path.name != "names.py" and path.relative_to(PACKAGE).as_posix() not in NOT_YET
             for line, text in spelled_tags(path.read_text(encoding="utf-8"))]
    assert not found, "spell these through workbench.names: " + "; ".join(found)


def _found(scan, skip: set[str]) -> list[str]:
    return [f"{path.relative_to(PACKAGE)}:{line}: {text!r}"
            for path in sorted(PACKAGE.rglob("*.py"))
            if path.relative_to(PACKAGE).as_posix() not in skip
            for line, text in scan(path.read_text(encoding="utf-8"))]


def test_metric_keys_are_spelled_only_in_names():
    found = _found(spelled_keys, {"names.py"} | NOT_YET | KEY_PREFIXES_NOT_YET)
    assert not found, "spell these metric keys through workbench.names: " + "; ".join(found)


def spelled_off_rules(source: str) -> list[tuple[int, str]]:
    """(line, code) of each test of a bound's kind by its name's end, `name.endswith("_down")`: the rule
    for when a bound is off is `workbench.params.bound_off`."""
    return [(n.lineno, ast.unparse(n)) for n in ast.walk(ast.parse(source))
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "endswith"
            and any(isinstance(a, ast.Constant) and a.value in ("down", "_down", "up", "_up") for a in n.args)]


def test_bound_names_and_engines_are_listed_only_in_params():
    found = _found(spelled_lists, {"params.py"})
    assert not found, "import DISPO_BOUNDS or ENGINES from workbench.params: " + "; ".join(found)


def test_the_bound_off_rule_lives_only_in_params():
    assert spelled_off_rules('if name.endswith("_down") and v >= 1:\n    pass\nx = s.endswith(".db")\n') == [
        (1, "name.endswith('_down')")]
    found = _found(spelled_off_rules, {"params.py"})
    assert not found, "use workbench.params.bound_off: " + "; ".join(found)


def test_dispo_bounds_are_dispo_params_fields_one_per_regime():
    from dataclasses import fields

    from workbench.names import REGIMES
    from workbench.params import DISPO_BOUNDS, DispoParams

    assert DISPO_BOUNDS == tuple(f.name for f in fields(DispoParams) if f.name != "mask_mode")
    assert len(DISPO_BOUNDS) == len(REGIMES)


def test_objectives_are_declared_in_params_and_registered_as_declared():
    from workbench.core.objectives import get_spec, list_objectives
    from workbench.params import objective_names, objective_params

    assert list_objectives() == objective_names()
    for name in objective_names():
        spec, declared = get_spec(name), objective_params(name)
        assert (spec.params_cls, spec.aggregation, spec.default_params, spec.paper) == (
            declared.params_cls, declared.aggregation, declared.default_params, declared.paper), name
        assert "arXiv" in spec.paper, name
