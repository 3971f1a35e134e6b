"""verl's `custom_reward_function` for workbench data: math-verify on the last \\boxed{} answer.

verl calls `compute_score(data_source, solution_str, ground_truth, extra_info)` per response in
its reward workers; the score is the local trainer's (1 correct, 0 wrong or no answer).
"""

from __future__ import annotations

from workbench.tasks.rewards import score_answer


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    require_boxed = bool((extra_info or {}).get("require_boxed", True))  # the run's reward_require_boxed
    score = score_answer(solution_str, str(ground_truth), require_boxed=require_boxed)
    return 0.0 if score is None else float(score)
