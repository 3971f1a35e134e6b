"""The run's training problems and benchmarks as the parquet files verl's RLHFDataset reads,
and the model folder verl loads.

One row per problem: `data_source` (the benchmark name, which verl puts in its validation keys),
`prompt` (chat messages), `ability`, `reward_model.ground_truth` (the gold answer, scored by
`workbench.engines.verl.reward`) and `extra_info`. Training rows are the exact problems the
local trainer would draw (`steps * prompts_per_step` of them from the run's seed, in order), so a
verl run and a local run of one config see the same prompts.

Micro models are saved with a chat template that returns the message text unchanged: verl
always applies the tokenizer's chat template, and a micro policy was trained on the raw
problem (`3+7+5=`). Hugging Face models get the question plus the boxing instruction, and
their own template.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pandas as pd

from workbench.config import RunConfig
from workbench.models.policy import INSTRUCTION, is_micro
from workbench.tasks.benchmarks import load_benchmark
from workbench.tasks.micro import build_task

PLAIN_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


class DataFiles(NamedTuple):
    train: Path
    val: Path
    max_prompt_chars: int  # longest prompt text, for data.max_prompt_length of micro (char) tokenizers


def _rows(problems, source: str, split: str, micro: bool, require_boxed: bool) -> list[dict]:
    return [{"data_source": source,
             "prompt": [{"role": "user", "content": p.prompt if micro else f"{p.prompt}\n\n{INSTRUCTION}"}],
             "ability": "math",
             "reward_model": {"style": "rule", "ground_truth": p.answer},
             "extra_info": {"split": split, "index": i, "require_boxed": require_boxed}}
            for i, p in enumerate(problems)]


def export_parquet(cfg: RunConfig, out_dir: str | Path) -> DataFiles:
    """Write train.parquet and val.parquet for `cfg` into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    micro = is_micro(cfg.model.name)
    train = build_task(cfg.task).train_batch(cfg.seed, cfg.steps * cfg.rollout.prompts_per_step)
    val: list[dict] = []
    for bench in cfg.eval.benchmarks:
        source = bench.rsplit("/", 1)[-1].partition("?")[0] if bench.startswith("file:") else bench
        val += _rows(load_benchmark(bench, cfg.task, cfg.eval.limit), source, "test", micro, cfg.reward_require_boxed)
    train_rows = _rows(train, cfg.task.name, "train", micro, cfg.reward_require_boxed)
    paths = DataFiles(out / "train.parquet", out / "val.parquet",
                      max(len(r["prompt"][0]["content"]) for r in train_rows + val))
    pd.DataFrame(train_rows).to_parquet(paths.train)
    pd.DataFrame(val).to_parquet(paths.val)
    return paths


def export_model(cfg: RunConfig, out_dir: str | Path) -> str:
    """The model path verl loads: a Hugging Face id or folder as given; a micro model (its SFT
    warm start when `sft.enabled`) saved to `out_dir` with the plain chat template."""
    if not is_micro(cfg.model.name):
        return cfg.model.name
    from workbench.train.sft import warm_start

    model, tokenizer, _ = warm_start(cfg, log=lambda line: None)
    tokenizer.chat_template = PLAIN_TEMPLATE
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)
