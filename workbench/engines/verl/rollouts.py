"""The response statistics verl does not log, from the rollouts verl dumps each step.

verl logs response length and truncation (`response_length/*`, translated by `keys.py`) but
neither repetition nor length by correctness, and its reward-manager `reward_extra_info` reaches
its logs for validation only. With `trainer.rollout_data_dir` set (the launcher sets it), verl's
trainer writes every training step's responses as `<step>.jsonl` (`output`, `gts`, `score`,
`step`); this module turns one such file into the local trainer's keys
(`workbench.metrics.responses`): `response/repetition_rate`, `response/length_correct`,
`response/length_incorrect`. Collapse detection then sees repetition on verl runs as on local ones.

- Responses are re-tokenized with the run's tokenizer (verl dumps decoded text without special
  tokens): a length can differ from verl's by the end-of-sequence token.
- Correct means the workbench reward was 1: `score` is that reward plus, with the overlong
  penalty on, DAPO's penalty for the response's length, which is subtracted back first.
- Per-regime entropy is not recoverable on verl: its `ppo_loss` hands the policy loss no entropy
  (`policy_loss_fn(old_log_prob, log_prob, advantages, response_mask, ...)`), so the wb_* losses
  cannot split it by regime; the closest substitute is verl's token-mean `actor/entropy`, which
  `keys.py` logs as `entropy/mean`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from workbench.config import RunConfig
from workbench.metrics.responses import response_metrics
from workbench.names import LENGTH_CORRECT, LENGTH_INCORRECT, REPETITION_RATE

KEYS = (REPETITION_RATE, LENGTH_CORRECT, LENGTH_INCORRECT)


def step_files(rollout_dir: str | Path) -> dict[int, Path]:
    """{step: file} of the `<step>.jsonl` files verl has written so far."""
    d = Path(rollout_dir)
    if not d.is_dir():
        return {}
    return {int(p.stem): p for p in d.glob("*.jsonl") if p.stem.isdigit()}


def read_rows(path: Path) -> list[dict[str, Any]]:
    """A step file's rows; a line verl is still writing (not yet valid JSON) ends the read."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def _penalty(length: int, cfg: RunConfig) -> float:
    """DAPO's soft overlong penalty (verl's DAPO reward manager; `workbench.core.advantages.overlong_penalty`)."""
    if not cfg.overlong.enabled:
        return 0.0
    o = cfg.overlong
    over = max(length - (cfg.rollout.max_new_tokens - o.buffer), 0) / o.buffer
    return -o.factor * min(over, 1.0)


def step_metrics(rows: list[dict[str, Any]], encode: Callable[[str], list[int]], cfg: RunConfig) -> dict[str, float]:
    """One step's repetition rate and lengths by correctness from verl's dumped rows."""
    if not rows:
        return {}
    ids = [encode(str(r["output"])) for r in rows]
    correct = [float(r["score"]) - _penalty(len(i), cfg) >= 0.5 for r, i in zip(rows, ids)]
    finish = ["length" if len(i) >= cfg.rollout.max_new_tokens else "stop" for i in ids]
    m = response_metrics(ids, correct, finish)
    return {k: m[k] for k in KEYS if not (isinstance(m[k], float) and math.isnan(m[k]))}


def tokenizer_encoder(model_path: str, trust_remote_code: bool = False) -> Callable[[str], list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    return lambda text: tok(text, add_special_tokens=False)["input_ids"]
