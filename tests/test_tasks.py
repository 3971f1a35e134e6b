"""Chain-sum task and benchmark registry. Run: .venv/bin/python -m pytest tests/test_tasks.py -q"""

import json
import re
import sys
import types

import pandas as pd
import pytest

from workbench.config import TaskConfig
from workbench.tasks import ChainSumTask, Problem, build_task, last_boxed, list_benchmarks, load_benchmark


def _check_scratchpad(p: Problem) -> None:
    """Re-derive every step of the worked solution from the prompt's terms."""
    terms = [int(t) for t in p.prompt.removesuffix("=").split("+")]
    *steps, final = p.solution.split(";")
    assert len(steps) == len(terms) - 1
    running = terms[0]
    for step, term in zip(steps, terms[1:]):
        m = re.fullmatch(r"(\d+)\+(\d+)=(\d+)", step)
        assert m, step
        a, b, c = map(int, m.groups())
        assert (a, b) == (running, term) and c == a + b
        running = c
    assert final == f"\\boxed{{{running}}}"
    assert p.answer == str(sum(terms)) == last_boxed(p.solution)


@pytest.mark.parametrize("digits,min_terms,max_terms", [(1, 2, 5), (2, 3, 7), (3, 2, 2)])
def test_solutions_verify(digits, min_terms, max_terms):
    task = build_task(TaskConfig(digits=digits, min_terms=min_terms, max_terms=max_terms, eval_size=50))
    problems = task.train_batch(3, 100) + task.eval_set()
    for p in problems:
        _check_scratchpad(p)
        terms = p.prompt.removesuffix("=").split("+")
        assert min_terms <= len(terms) <= max_terms
        assert all(len(t) == digits for t in terms)


def test_response_length_grows_with_terms():
    task = build_task(TaskConfig(min_terms=2, max_terms=8))
    by_terms: dict[int, list[int]] = {}
    for p in task.train_batch(0, 400):
        by_terms.setdefault(p.prompt.count("+") + 1, []).append(len(p.solution))
    means = [sum(v) / len(v) for _, v in sorted(by_terms.items())]
    assert len(means) == 7
    assert all(a < b for a, b in zip(means, means[1:]))


def test_train_stream_is_seeded_and_continues():
    task = build_task(TaskConfig())
    rng_a, rng_b = ChainSumTask.train_rng(5), ChainSumTask.train_rng(5)
    first, second = task.train_batch(rng_a, 20), task.train_batch(rng_a, 20)
    assert first + second == task.train_batch(rng_b, 40)
    assert first != second
    assert task.train_batch(5, 20) == first  # an int seed starts the same stream
    assert task.train_batch(6, 20) != first


def test_eval_set_fixed_and_held_out_from_training():
    cfg = TaskConfig(eval_seed=7, eval_size=100)
    task = build_task(cfg)
    assert task.eval_set() == build_task(cfg).eval_set() == task.eval_set()
    assert task.eval_set() != build_task(TaskConfig(eval_seed=8, eval_size=100)).eval_set()
    held_out = {p.prompt for p in task.eval_set()}
    train = task.train_batch(7, 2000)  # same number as the eval seed: still another stream
    assert not held_out & {p.prompt for p in train}
    assert [p.prompt for p in train[:100]] != [p.prompt for p in task.eval_set()]


def test_task_too_small_to_hold_out_is_an_error():
    # one-digit pairs: 100 prompts, nearly all taken by a large eval set
    task = build_task(TaskConfig(min_terms=2, max_terms=2, eval_size=5000))
    with pytest.raises(ValueError, match="eval_size"):
        task.train_batch(0, 10)


def test_last_boxed():
    assert last_boxed("1+2=3;\\boxed{3}") == "3"
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("1+2=3;\\boxed{3") is None
    assert last_boxed("no answer") is None


def test_micro_benchmark_is_the_held_out_set():
    cfg = TaskConfig(eval_size=30)
    assert load_benchmark("micro", cfg) == build_task(cfg).eval_set()
    assert load_benchmark("micro", cfg, limit=7) == build_task(cfg).eval_set()[:7]


def test_jsonl_with_custom_fields(tmp_path):
    path = tmp_path / "set.jsonl"
    rows = [{"q": f"What is {i}+1?", "gold": i + 1, "extra": "x"} for i in range(5)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    problems = load_benchmark(f"file:{path}?question=q&answer=gold", TaskConfig(), limit=3)
    assert problems == [Problem(prompt=f"What is {i}+1?", answer=str(i + 1), solution="") for i in range(3)]


def test_parquet_with_default_fields(tmp_path):
    path = tmp_path / "set.parquet"
    pd.DataFrame({"problem": ["2+2?", "3+3?"], "answer": ["4", "6"], "solution": ["\\boxed{4}", "\\boxed{6}"]}).to_parquet(path)
    problems = load_benchmark(f"file:{path}?solution=solution", TaskConfig())
    assert [(p.prompt, p.answer, p.solution) for p in problems] == [("2+2?", "4", "\\boxed{4}"), ("3+3?", "6", "\\boxed{6}")]


def test_file_errors_name_the_problem(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    with pytest.raises(ValueError, match=r"no answer field 'gold'; fields: problem, answer"):
        load_benchmark(f"file:{path}?answer=gold", TaskConfig())
    with pytest.raises(ValueError, match="unknown option"):
        load_benchmark(f"file:{path}?anwser=gold", TaskConfig())
    with pytest.raises(ValueError, match="does not exist"):
        load_benchmark(f"file:{tmp_path / 'missing.jsonl'}", TaskConfig())


def test_unknown_benchmark_lists_valid_names():
    with pytest.raises(ValueError) as err:
        load_benchmark("aime2024", TaskConfig())
    msg = str(err.value)
    assert "\n" not in msg
    for name in list_benchmarks():
        assert name in msg
    assert {"micro", "aime24", "aime25", "amc23", "math500", "minerva"} == set(list_benchmarks())


def test_hub_set_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import raises ImportError
    with pytest.raises(ValueError, match=r"needs the `datasets` package") as err:
        load_benchmark("aime24", TaskConfig())
    assert "\n" not in str(err.value)


def test_hub_set_offline_is_one_clear_line(monkeypatch):
    asked = []

    def load_dataset(dataset_id):
        asked.append(dataset_id)
        raise ConnectionError("Couldn't reach 'math-ai/amc23' on the Hub (LocalEntryNotFoundError)\ntraceback noise")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(ValueError, match="no network") as err:
        load_benchmark("amc23", TaskConfig())
    assert asked == ["math-ai/amc23"]
    assert "\n" not in str(err.value)


def test_hub_set_fields_and_split(monkeypatch):
    class Split(list):
        column_names = ["question", "answer"]

    def load_dataset(dataset_id):
        return {"train": Split([{"question": "bad", "answer": 0}]), "test": Split([{"question": "Q1", "answer": 12}])}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert load_benchmark("minerva", TaskConfig()) == [Problem(prompt="Q1", answer="12", solution="")]
