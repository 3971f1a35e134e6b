"""The workbench spells each `dispo.*` MLflow tag once, in `workbench/names.py`.

A tag spelled by hand elsewhere drifts from the one the report and the sweep read (docs/design.md#metrics):
this test reads every module's string literals (docstrings aside) and names each
`dispo.*` it finds.

    pytest tests/test_vocabulary.py -q
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import workbench

PACKAGE = Path(workbench.__file__).parent
# sweep.py takes the names.py constants when it is split into modules of one job each.
NOT_YET: set[str] = set()
TAG = re.compile(r"(?<![\w-])dispo\.[a-z_]")


def _docstrings(tree: ast.AST) -> set[int]:
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))]
    return {id(n.body[0].value) for n in nodes
            if n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}


def spelled_tags(source: str) -> list[tuple[int, str]]:
    """(line, literal) of each string literal, f-string parts included, that spells a `dispo.*` tag."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip and TAG.search(n.value)]


def test_the_check_sees_literals_and_filters():
    source = ('"""Tagged `dispo.kind` (a docstring)."""\n'
              'a = {"dispo.kind": "train"}\n'
              'b = f"tags.`dispo.study` = {x}"\n'
              'c = "dispo-wb train"\n')
    assert spelled_tags(source) == [(2, "dispo.kind"), (3, "tags.`dispo.study` = ")]


def test_dispo_tags_are_spelled_only_in_names():
    found = [f"{path.relative_to(PACKAGE)}:{line}: {text!r}"
             for path in sorted(PACKAGE.rglob("*.py"))
             if path.name != "names.py" and path.relative_to(PACKAGE).as_posix() not in NOT_YET
             for line, text in spelled_tags(path.read_text(encoding="utf-8"))]
    assert not found, "spell these through workbench.names: " + "; ".join(found)
