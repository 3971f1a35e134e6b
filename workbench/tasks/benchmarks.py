"""Benchmark registry: a name maps to a loader returning a list of Problems.

Names:
- `micro`: the built-in chain-sum held-out set of the run's task config.
- `aime24`, `aime25`, `amc23`, `math500`, `minerva`: public math sets on the Hugging Face
  hub, loaded with the `datasets` library (an optional dependency). Without it, or without
  network and a local copy, they fail with one ValueError line saying so.
- `file:PATH[?question=FIELD&answer=FIELD&solution=FIELD]`: a local `.jsonl`, `.json` or
  `.parquet` file. Fields default to the first of problem/question/prompt present for the
  question and `answer` for the answer; `solution` is optional.
  Example: `file:data/test.jsonl?question=problem&answer=expected`.

Hub answers are kept as the data set writes them (AIME integers become strings); scoring
goes through math-verify, so `\\frac{1}{2}` and `0.5` still match.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qsl

from workbench.config import TaskConfig
from workbench.errors import first_line
from workbench.params import HUB_SETS
from workbench.tasks.micro import Problem, build_task

FILE_PREFIX = "file:"
_QUESTION_FIELDS = ("problem", "question", "prompt")


def _micro(task_cfg: TaskConfig) -> list[Problem]:
    return build_task(task_cfg).eval_set()


def _hub_loader(name: str) -> Callable[[TaskConfig], list[Problem]]:
    return lambda task_cfg: load_hub_set(name)


BENCHMARKS: dict[str, Callable[[TaskConfig], list[Problem]]] = {"micro": _micro, **{n: _hub_loader(n) for n in HUB_SETS}}


def list_benchmarks() -> list[str]:
    """Registered names; local files are addressed as `file:PATH?question=...&answer=...`."""
    return list(BENCHMARKS)


def load_benchmark(name: str, task_cfg: TaskConfig, limit: int | None = None) -> list[Problem]:
    """Problems of benchmark `name`, the first `limit` only when given."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    if name.startswith(FILE_PREFIX):
        problems = load_file(name[len(FILE_PREFIX) :])
    elif name in BENCHMARKS:
        problems = BENCHMARKS[name](task_cfg)
    else:
        raise ValueError(f"unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)}, or file:PATH[?question=FIELD&answer=FIELD]")
    return problems[:limit] if limit else problems


def load_file(spec: str) -> list[Problem]:
    """Problems from `PATH[?question=FIELD&answer=FIELD&solution=FIELD]` (.jsonl, .json, .parquet)."""
    path_text, _, query = spec.partition("?")
    fields = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(fields) - {"question", "answer", "solution"}
    if unknown:
        raise ValueError(f"benchmark file {path_text}: unknown option(s) {', '.join(sorted(unknown))}; valid: question, answer, solution")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ValueError(f"benchmark file {path_text!r} does not exist")
    rows = _read_rows(path)
    if not rows:
        raise ValueError(f"benchmark file {path_text} holds no rows")
    columns = list(rows[0])
    question = fields.get("question") or next((c for c in _QUESTION_FIELDS if c in columns), _QUESTION_FIELDS[0])
    answer = fields.get("answer", "answer")
    solution = fields.get("solution")
    for role, col in (("question", question), ("answer", answer), ("solution", solution)):
        if col is not None and col not in columns:
            raise ValueError(f"benchmark file {path_text}: no {role} field {col!r}; fields: {', '.join(columns)}")
    return [Problem(prompt=str(r[question]), answer=str(r[answer]), solution=str(r[solution]) if solution else "") for r in rows]


def _read_rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if suffix == ".json":
            data = json.loads(path.read_text())
            return data if isinstance(data, list) else [data]
        if suffix == ".parquet":
            import pandas as pd

            return pd.read_parquet(path).to_dict(orient="records")
    except (json.JSONDecodeError, OSError, ValueError) as e:
        raise ValueError(f"benchmark file {path}: cannot read it: {first_line(e)}") from None
    raise ValueError(f"benchmark file {path}: unsupported extension {suffix!r}; valid: .jsonl, .json, .parquet")


def load_hub_set(name: str) -> list[Problem]:
    """A public math set through `datasets`; the test split when there is one, else the only split."""
    spec = HUB_SETS[name]
    try:
        import datasets
    except ImportError:
        raise ValueError(f"benchmark {name!r} ({spec.dataset_id}) needs the `datasets` package, which is not installed (pip install datasets)") from None
    try:
        data = datasets.load_dataset(spec.dataset_id)
    except Exception as e:  # offline errors come as ConnectionError, OSError or datasets' own classes
        raise ValueError(f"benchmark {name!r}: {spec.dataset_id} is not in the local cache and could not be downloaded (no network available?): {first_line(e)}") from None
    split = "test" if "test" in data else next(iter(data))
    rows = data[split]
    missing = [c for c in (spec.question, spec.answer) if c not in rows.column_names]
    if missing:
        raise ValueError(f"benchmark {name!r}: {spec.dataset_id} has no field(s) {', '.join(missing)}; fields: {', '.join(rows.column_names)}")
    return [Problem(prompt=str(r[spec.question]), answer=str(r[spec.answer]), solution="") for r in rows]
