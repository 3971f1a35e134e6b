"""The package's shape: which package may import which, one way, and no private names across modules.

Read from the source with `ast` (imports inside functions count: a lazy import is still a
dependency), so the test needs none of the heavy libraries the modules load.

    pytest tests/test_layout.py -q
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import workbench

PACKAGE = Path(workbench.__file__).parent

# Top-level modules: the vocabulary and the torch-free parameter and config checks, which
# every package may import. Among themselves they import one way, down this table.
LEAVES: dict[str, set[str]] = {
    "names": set(),
    "errors": set(),
    "params": {"names", "errors"},
    "recipes": set(),  # a paper's whole method, as data (torch-free; config fills a run from it)
    "config": {"names", "errors", "params", "recipes"},
}
LEAF = set(LEAVES)

# Package -> the workbench packages it may import (the leaves always). Data flows
# config -> rollout -> rewards (tasks) -> advantages/objective (core) -> metrics -> tracking.
ALLOWED: dict[str, set[str]] = {
    **LEAVES,
    "core": LEAF,
    "metrics": LEAF | {"core"},
    "tasks": LEAF,
    "models": LEAF | {"tasks"},
    "rollout": LEAF | {"models", "tasks"},
    "services": LEAF,
    "tracking": LEAF | {"services"},
    "train": LEAF | {"core", "metrics", "models", "rollout", "tasks", "tracking"},
    "engines": LEAF | {"core", "metrics", "models", "rollout", "tasks", "tracking", "train"},
    "sweep": LEAF | {"core", "engines", "metrics", "services", "tasks", "tracking", "train"},
    "report": LEAF | {"core", "metrics", "services", "sweep", "tracking"},
    "cli": LEAF | {"core", "engines", "metrics", "report", "services", "sweep", "tasks", "tracking", "train"},
}
# Modules a package may not import even though it may import their package.
FORBIDDEN_MODULES: dict[str, set[str]] = {"report": {"workbench.sweep.coordinator"}}
MLFLOW_IMPORTERS = {"tracking"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    where = PACKAGE.parent.joinpath(*dotted.split("."))
    return where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()


def unit(dotted: str) -> str:
    """`workbench.sweep.claims` -> `sweep`; `workbench.names` -> `names`."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else "workbench"


def imports(source: str) -> Iterator[tuple[int, str]]:
    """(line, dotted module) of every import; `from workbench import tracking` is `workbench.tracking`."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names if is_module(f"{node.module}.{a.name}")]
            yield from ((node.lineno, s) for s in subs or [node.module])


def private_uses(source: str) -> Iterator[tuple[int, str]]:
    """(line, what) of `from workbench.x import _y` and `x._y` where x is an imported workbench module."""
    tree = ast.parse(source)
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("workbench")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("workbench"):
            for a in node.names:
                if is_module(f"{node.module}.{a.name}"):
                    modules.add(a.asname or a.name)
                elif _private(a.name):
                    yield node.lineno, f"from {node.module} import {a.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in modules:
                yield node.lineno, f"{ast.unparse(node.value)}.{node.attr}"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def sources() -> list[tuple[str, str]]:
    return [(module_name(p), p.read_text(encoding="utf-8")) for p in sorted(PACKAGE.rglob("*.py"))]


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, source in sources():
        graph.setdefault(unit(name), set()).update(
            unit(m) for _, m in imports(source) if m.startswith("workbench.") and unit(m) != unit(name))
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, as the path that closes it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [node, nxt] if nxt in path else path + [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [node])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [])):
            return found
    return None


def test_the_checks_see_what_they_look_for():
    source = ("import mlflow\n"
              "from workbench import tracking\n"
              "from workbench.report import curves as c\n"
              "from workbench.names import REGIMES, _hidden\n"
              "def f():\n"
              "    from workbench.sweep.coordinator import run\n"
              "    return c._band(tracking.store._private, c.public, obj._mine)\n")
    assert list(imports(source)) == [(1, "mlflow"), (2, "workbench.tracking"), (3, "workbench.report.curves"),
                                     (4, "workbench.names"), (6, "workbench.sweep.coordinator")]
    assert sorted(private_uses(source)) == [(4, "from workbench.names import _hidden"), (7, "c._band"),
                                            (7, "tracking.store._private")]
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_dependency_table_is_one_way():
    assert cycle(ALLOWED) is None


def test_workbench_has_no_top_level_modules_but_the_leaves():
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert top == LEAF, f"top-level modules other than the leaves: {sorted(top - LEAF)}"
    assert packages == set(ALLOWED) - LEAF, f"packages missing from the dependency table: {sorted(packages - set(ALLOWED))}"


def test_packages_import_only_what_the_table_allows():
    bad = []
    for name, source in sources():
        own = unit(name)
        for line, mod in imports(source):
            if mod.split(".")[0] == "mlflow" and own not in MLFLOW_IMPORTERS:
                bad.append(f"{name}:{line} imports mlflow (only workbench.tracking may)")
            if not mod.startswith("workbench.") or unit(mod) == own:
                continue
            if unit(mod) not in ALLOWED.get(own, set()) or any(mod.startswith(f) for f in FORBIDDEN_MODULES.get(own, ())):
                bad.append(f"{name}:{line} imports {mod}")
    assert not bad, "imports against the layering (tests/test_layout.py ALLOWED): " + "; ".join(bad)


def test_packages_import_each_other_without_cycles():
    assert cycle(package_graph()) is None


def test_no_module_reaches_another_modules_private_names():
    found = [f"{name}:{line}: {what}" for name, source in sources() for line, what in private_uses(source)]
    assert not found, "use a public name (or make one): " + "; ".join(found)


def test_nothing_imports_cli():
    assert all("cli" not in allowed for package, allowed in ALLOWED.items() if package != "cli")
    importers = sorted(p for p, deps in package_graph().items() if "cli" in deps and p != "cli")
    assert not importers, f"packages that import workbench.cli: {importers}"
