r"""Tests for workbench.tasks.rewards: math-verify scoring and the worker pool's limits.

Run from the repository root: .venv/bin/python -m pytest tests/test_rewards.py -q
"""

from __future__ import annotations

import doctest
import functools
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import workbench.tasks.rewards
from workbench.tasks.rewards import RewardPool, RewardResult, score_answer

LIMIT_S = 0.5
# Starting a replacement worker and reading replies costs far less than this on any machine
# we run on; the bound is loose because the test machine's two cores are shared.
SLACK_S = 1.5
# A fresh worker scores math-verify's warm-up answers before it reports ready: ~0.1 s idle, ~1 s busy.
WARM_UP_S = 1.0

# Both hang for minutes inside math-verify: a tower of powers (C-level big-integer arithmetic)
# and 100 kB of nested brackets (the LaTeX parser).
POWER_TOWER = r"\boxed{5^{5^{5^{5}}}}"
NESTED_100K = r"\boxed{" + "(" * 50_000 + ")" * 50_000 + "}"
# 100 kB of noise that math-verify gets through quickly: must score 0 without timing out.
NOISE_100K = "".join(random.Random(0).choice("0123456789+-*/^{}() $=x") for _ in range(100_000))

CRASH, RAISE = "__crash_the_worker__", "__raise_in_scorer__"


def crash_on_marker(response: str, gold: str) -> float | None:
    """Scorer that kills its worker or raises on marker responses, else scores normally."""
    if response == CRASH:
        os._exit(3)
    if response == RAISE:
        raise ZeroDivisionError("scorer bug")
    return score_answer(response, gold)


_calls = 0


def count_calls(response: str, gold: str) -> float:
    """Scorer whose reward is the number of answers its worker has scored, to observe the memo."""
    global _calls
    _calls += 1
    return float(_calls)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # a zombie has stopped running; only its exit status is left


@pytest.fixture(scope="module")
def pool():
    with RewardPool(workers=2, timeout_s=LIMIT_S) as p:
        yield p


def test_doctests_pass():
    result = doctest.testmod(workbench.tasks.rewards)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize(
    ("response", "gold", "expected"),
    [
        (r"3+7=10;10+5=15;\boxed{15}", "15", 1.0),
        (r"3+7=10;10+5=15;\boxed{16}", "15", 0.0),
        (r"\boxed{1/2}", "0.5", 1.0),
        (r"\boxed{0.5}", r"\frac{1}{2}", 1.0),
        (r"so the answer is $\frac{2}{4}$", "1/2", 1.0),
        (r"\boxed{\frac{1}{3}}", "0.5", 0.0),
        ("I do not know", "15", 0.0),  # no answer at all is wrong, not unscorable
        ("", "15", 0.0),
        (r"\boxed{15}", "", None),  # nothing to compare against
    ],
)
def test_score_answer(response, gold, expected):
    assert score_answer(response, gold) == expected


def test_pool_agrees_with_in_process_scoring(pool):
    responses = [r"\boxed{15}", r"\boxed{14}", "no answer", r"\boxed{0.5}", r"\boxed{15}", "x"]
    golds = ["15", "15", "15", r"\frac{1}{2}", "", "7"]
    expected = [score_answer(r, g) for r, g in zip(responses, golds)]

    result = pool.score(responses, golds)

    assert result.rewards == [0.0 if e is None else e for e in expected]
    assert result.unscorable == [e is None for e in expected]
    assert not any(result.timed_out) and not any(result.crashed)
    assert sum(result.rewards) == 2.0  # the fixture itself is not all-zero or all-one


def test_pool_runs_a_configured_scorer():
    cut_off = "3+7=10;10+5=15;"  # math-verify's fallback reads the last number as the answer
    with RewardPool(scorer=functools.partial(score_answer, require_boxed=True)) as pool:
        result = pool.score([cut_off, cut_off + r"\boxed{15}"], ["15", "15"])
    assert result.rewards == [0.0, 1.0]
    assert score_answer(cut_off, "15") == 1.0


def test_adversarial_answers_are_bounded_and_counted():
    responses = [r"\boxed{15}", POWER_TOWER, NESTED_100K, NOISE_100K, r"\boxed{15}"]
    opened = time.monotonic()
    with RewardPool(workers=1, timeout_s=LIMIT_S) as pool:
        # Starting the pool (fork server, imports, one worker's warm-up) costs at least what a
        # replacement worker does, measured now: under CI's load a warm-up took several seconds.
        warm_up_s = max(WARM_UP_S, time.monotonic() - opened)
        start = time.monotonic()
        result = pool.score(responses, ["15"] * len(responses))
        elapsed = time.monotonic() - start

        # One worker meets both hangs in turn: each is tried twice, each try may use the full limit,
        # and each of the four replacements warms up before it takes an answer. Unbounded, either
        # hang runs for minutes; the bound is twice the expected cost, as a loaded machine's
        # warm-ups vary from one replacement to the next (16 s against an estimate of 15 s seen).
        assert elapsed < 2 * 4 * (LIMIT_S + warm_up_s) + SLACK_S, (elapsed, warm_up_s)
        assert result.timed_out == [False, True, True, False, False]
        assert result.rewards == [1.0, 0.0, 0.0, 0.0, 1.0]
        assert result.metrics() == {"reward/timeout_frac": 2 / 5, "reward/crash_frac": 0.0}

        # The pool carries on with fresh workers after killing the stuck ones.
        again = pool.score([r"\boxed{3}", r"\boxed{4}"], ["3", "3"])
        assert again.rewards == [1.0, 0.0] and not any(again.timed_out)


def test_timed_out_answer_is_retried_and_not_remembered():
    with RewardPool(workers=1, timeout_s=LIMIT_S) as pool:
        before = pool.pids
        start = time.monotonic()
        assert pool.score([POWER_TOWER], ["1"]).timed_out == [True]
        assert time.monotonic() - start >= 2 * LIMIT_S  # a second try on a fresh worker before it scores 0
        replaced = pool.pids
        assert replaced != before

        # A timeout is not a score: a repeat is scored again (and times out again), not read from the memo.
        assert pool.score([POWER_TOWER, r"\boxed{1}"], ["1", "1"]).timed_out == [True, False]
        assert pool.pids != replaced


def slow_the_first_time(response: str, gold: str, *, marker: str) -> float | None:
    """Scorer that stalls far past the limit on its first answer ever (a stand-in for a busy machine)."""
    if not os.path.exists(marker):
        Path(marker).touch()
        time.sleep(60)
    return score_answer(response, gold)


def test_answer_that_overran_once_scores_on_its_retry(tmp_path):
    scorer = functools.partial(slow_the_first_time, marker=str(tmp_path / "stalled"))
    with RewardPool(workers=1, timeout_s=LIMIT_S, scorer=scorer) as pool:
        result = pool.score([r"\boxed{15}", r"\boxed{14}"], ["15", "15"])
        assert result.rewards == [1.0, 0.0] and result.timed_out == [False, False]


def _spin() -> None:
    while True:
        pass


def test_no_correct_answer_times_out_under_cpu_load():
    """Four busy processes on the cores, a fresh pool each round at the default 2 s limit: every
    correct answer scores 1 (the first answer a fresh worker scores used to take up to 2 s here)."""
    import multiprocessing as mp

    answers = [(r"\boxed{15}", "15"), (r"\boxed{\frac{1}{2}}", "0.5"), (r"3+4=7;7+8=15;\boxed{15}", "15"),
               (r"\boxed{1/4}", "0.25"), (r"\boxed{0.25}", r"\frac{1}{4}"), (r"\boxed{-3}", "-3")]
    busy = [mp.get_context("fork").Process(target=_spin, daemon=True) for _ in range(4)]
    for p in busy:
        p.start()
    try:
        for _ in range(3):
            with RewardPool(workers=2, timeout_s=2.0) as pool:
                result = pool.score([r for r, _ in answers], [g for _, g in answers])
            assert not any(result.timed_out), result
            assert result.rewards == [1.0] * len(answers)
    finally:
        for p in busy:
            p.kill()
            p.join()


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_crashed_worker_is_replaced_and_scoring_continues(start_method):
    responses = [r"\boxed{2}", CRASH, r"\boxed{2}", r"\boxed{5}", RAISE, r"\boxed{2}"]
    with RewardPool(workers=1, timeout_s=5.0, start_method=start_method, scorer=crash_on_marker) as pool:
        before = pool.pids
        result = pool.score(responses, ["2"] * len(responses))

        assert result.crashed == [False, True, False, False, True, False]
        assert result.rewards == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
        assert result.metrics()["reward/crash_frac"] == 2 / 6
        assert not any(result.timed_out)
        assert pool.pids != before
        assert pool.score([r"\boxed{2}"], ["2"]).rewards == [1.0]


def test_repeated_pairs_are_scored_once():
    with RewardPool(workers=1, scorer=count_calls) as pool:
        first = pool.score(["a", "b", "a"], ["1", "1", "1"])
        assert first.rewards == [1.0, 2.0, 1.0]
        # "b" comes from the memo; ("a", "2") is a different pair from ("a", "1").
        second = pool.score(["b", "c", "a"], ["1", "1", "2"])
        assert second.rewards == [2.0, 3.0, 4.0]

    with RewardPool(workers=1, scorer=count_calls, memo_size=0) as pool:
        assert pool.score(["a", "a"], ["1", "1"]).rewards == [1.0, 1.0]
        assert pool.score(["a"], ["1"]).rewards == [2.0]


def test_close_leaves_no_child_processes():
    pool = RewardPool(workers=2)
    pids = pool.pids
    assert not any(_gone(pid) for pid in pids)

    pool.close()
    pool.close()

    assert all(_gone(pid) for pid in pids)
    with pytest.raises(RuntimeError, match="closed"):
        pool.score([r"\boxed{1}"], ["1"])


def test_workers_die_with_a_killed_trainer(tmp_path):
    script = textwrap.dedent(
        f"""
        from workbench.tasks.rewards import RewardPool
        if __name__ == "__main__":
            pool = RewardPool(workers=1, timeout_s=600)
            print(*pool.pids, flush=True)
            pool.score([{POWER_TOWER!r}], ["1"])
        """
    )
    path = tmp_path / "trainer.py"
    path.write_text(script)
    env = {**os.environ, "PYTHONPATH": str(Path(workbench.__file__).parents[1])}
    trainer = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        pids = [int(p) for p in trainer.stdout.readline().split()]
        time.sleep(0.3)  # let the worker get stuck in the power tower
        assert pids and not any(_gone(pid) for pid in pids)
    finally:
        trainer.send_signal(signal.SIGKILL)
        trainer.wait()

    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(pid) for pid in pids)


def test_empty_batch(pool):
    result = pool.score([], [])
    assert result.rewards == [] and result.metrics() == {
        "reward/timeout_frac": 0.0,
        "reward/crash_frac": 0.0,
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": 0}, "workers"),
        ({"workers": 1.5}, "workers"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": float("inf")}, "timeout_s"),
        ({"start_method": "thread"}, "start_method"),
        ({"scorer": "score_answer"}, "scorer"),
        ({"scorer": lambda r, g: 1.0}, "top-level"),
        ({"memo_size": -1}, "memo_size"),
    ],
)
def test_bad_pool_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RewardPool(**kwargs)


def test_bad_score_arguments(pool):
    with pytest.raises(ValueError, match="equal lengths"):
        pool.score(["a", "b"], ["1"])
    with pytest.raises(ValueError, match=r"golds\[1\] must be a str"):
        pool.score(["a", "b"], ["1", 1])


def test_reward_result_checks_lengths():
    assert RewardResult([1.0], [False], [False]).unscorable == [False]
    with pytest.raises(ValueError, match="equal lengths"):
        RewardResult([1.0, 0.0], [False], [False, False])
