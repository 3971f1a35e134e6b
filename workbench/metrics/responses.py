"""Per-step statistics of the sampled responses (the objective reports its own).

Repetition is the share of repeated token n-grams within a response, `1 - unique/total`,
averaged over n = 3 and 4 and over responses long enough to have such n-grams: it rises
towards 1 when a policy collapses into loops.
"""

from __future__ import annotations

from statistics import fmean

from workbench.names import LENGTH_CORRECT, LENGTH_INCORRECT, LENGTH_MEAN, REPETITION_RATE, TRUNCATED_FRAC


def repetition_rate(ids: list[int], ns: tuple[int, ...] = (3, 4)) -> float | None:
    """Share of repeated n-grams in one response; None when it is shorter than every n.

    >>> round(repetition_rate([1, 2, 3, 1, 2, 3, 1, 2, 3]), 3)  # 3-grams 4/7 repeated, 4-grams 3/6
    0.536
    >>> repetition_rate([1, 2, 3, 4, 5])
    0.0
    >>> repetition_rate([1, 2]) is None
    True
    """
    rates = []
    for n in ns:
        total = len(ids) - n + 1
        if total <= 0:
            continue
        unique = len({tuple(ids[i:i + n]) for i in range(total)})
        rates.append(1.0 - unique / total)
    return fmean(rates) if rates else None


def response_metrics(response_ids: list[list[int]], correct: list[bool], finish_reasons: list[str]) -> dict[str, float]:
    """Length, truncation and repetition of a rollout batch, with length split by correctness."""
    lengths = [len(r) for r in response_ids]
    right = [n for n, c in zip(lengths, correct) if c]
    wrong = [n for n, c in zip(lengths, correct) if not c]
    reps = [x for x in (repetition_rate(r) for r in response_ids) if x is not None]
    nan = float("nan")
    return {
        LENGTH_MEAN: fmean(lengths) if lengths else nan,
        LENGTH_CORRECT: fmean(right) if right else nan,
        LENGTH_INCORRECT: fmean(wrong) if wrong else nan,
        TRUNCATED_FRAC: sum(f == "length" for f in finish_reasons) / max(len(finish_reasons), 1),
        REPETITION_RATE: fmean(reps) if reps else 0.0,
    }
