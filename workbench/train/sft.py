"""SFT warm start: teach a micro model the task until its held-out accuracy enters a band.

RL needs groups with mixed outcomes: a policy that solves nothing or everything gives zero
advantages. So supervised fine-tuning stops as soon as held-out accuracy reaches the band
[sft.target_low, sft.target_high]. The check is one greedy response per problem by default;
`sft.check: sampled` measures avg@check_k at the sampling temperature instead, the accuracy RL
actually starts from (greedy accuracy 0.30 meant sampled avg@4 anywhere from 0.19 to 0.26 over
three seeds), with its own fixed random stream so the check neither perturbs training nor
changes between two checks of the same weights. Accuracy is checked every `eval_every` steps; when a
check jumps over the band, the interval before it is replayed from a snapshot with checks
four times as often, so the warm start kept is one inside the band whenever one exists.

The result is cached on disk, keyed by the task config, the model name, the seed and the SFT
settings that shape training, so every run of a sweep reuses one warm start. A cache entry
is built in a temporary directory and renamed into place, so a killed SFT never leaves a
half-written entry; a lock file makes concurrent workers build it once and share it.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from workbench.config import RunConfig
from workbench.models.policy import is_micro, load_policy, load_saved
from workbench.rollout.base import Sampling
from workbench.rollout.hf import HFBackend
from workbench.tasks.micro import ChainSumTask, Problem, build_task, last_boxed

INFO_FILE = "sft_info.json"
_REPLAY_SPLITS = 4  # checks per interval when a jump over the band is replayed


def encode_sft_batch(tokenizer, problems: list[Problem], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher-forcing batch `<bos> prompt solution <eos>`, right-padded.

    Returns input_ids (B, T), attention_mask (B, T) and labels (B, T), where labels are -100
    on <bos>, the prompt and padding, so the loss counts solution tokens (and <eos>) only.
    """
    rows, label_rows = [], []
    for p in problems:
        prompt = tokenizer(p.prompt)["input_ids"]  # <bos> added by the tokenizer
        target = tokenizer(p.solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(prompt + target)
        label_rows.append([-100] * len(prompt) + target)
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    labels = torch.tensor([r + [-100] * (width - len(r)) for r in label_rows], device=device)
    return ids, mask, labels


def greedy_responses(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy completions from the rollout backend (same prompt encoding as RL), decoded without special tokens."""
    backend = HFBackend(model, tokenizer, next(model.parameters()).device)
    ro = backend.generate(prompts, 1, Sampling(temperature=0, top_p=1.0, max_new_tokens=max_new_tokens))
    return tokenizer.batch_decode(ro.response_ids, skip_special_tokens=True)


def greedy_accuracy(model, tokenizer, problems: list[Problem], max_new_tokens: int) -> float:
    """Share of problems whose greedy response boxes exactly the gold answer."""
    responses = greedy_responses(model, tokenizer, [p.prompt for p in problems], max_new_tokens)
    return sum(last_boxed(r) == p.answer for r, p in zip(responses, problems)) / len(problems)


def sampled_accuracy(model, tokenizer, problems: list[Problem], max_new_tokens: int, k: int, temperature: float,
                     seed: int) -> float:
    """avg@k: mean over problems of the share of k sampled responses that box the gold answer.

    Drawn from a forked torch random stream seeded with `seed`: the caller's stream is untouched
    and the same weights always measure the same.
    """
    backend = HFBackend(model, tokenizer, next(model.parameters()).device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ro = backend.generate([p.prompt for p in problems], k,
                              Sampling(temperature=temperature, top_p=1.0, max_new_tokens=max_new_tokens))
    texts = tokenizer.batch_decode(ro.response_ids, skip_special_tokens=True)
    golds = [p.answer for p in problems for _ in range(k)]
    return sum(last_boxed(r) == g for r, g in zip(texts, golds)) / len(texts)


def cache_key(config: RunConfig) -> str:
    """Readable prefix plus a hash of everything that shapes the warm start."""
    # Settings that do not shape this warm start stay out of its key, so keys from before they existed still match:
    # the sampled check's when the check is greedy, the replay depth at its default.
    unused = set() if config.sft.check == "sampled" else {"check", "check_k", "check_temperature"}
    if config.sft.replay_levels == 1:
        unused.add("replay_levels")
    shaping = {
        "task": config.task.model_dump(exclude={"source"}),  # warm starts are for chain sums only
        "model": config.model.name,
        "seed": warm_seed(config),
        "sft": config.sft.model_dump(exclude={"cache_dir", "enabled", "seed", *unused}),
    }
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:12]
    return f"{Path(config.model.name).name}-s{warm_seed(config)}-{digest}"


def warm_seed(config: RunConfig) -> int:
    """The seed that shapes the warm start: `sft.seed` when set, else the run's."""
    return config.seed if config.sft.seed is None else config.sft.seed


def cache_path(config: RunConfig) -> Path:
    return Path(config.sft.cache_dir) / cache_key(config)


def warm_start(config: RunConfig, log: Callable[[str], None] = print) -> tuple[torch.nn.Module, object, dict]:
    """The policy RL starts from: the cached SFT warm start, built first if missing.

    HF models, and micro models with `sft.enabled: false`, are returned as loaded with
    info {"sft": False}. Otherwise info holds accuracy, steps, seconds, in_band, cache_dir,
    and `cached` (True when this call loaded an entry rather than training it).
    """
    if not config.sft.enabled or not is_micro(config.model.name):
        model, tokenizer = load_policy(config.model, config.seed)
        return model, tokenizer, {"sft": False}
    final = cache_path(config)
    if _complete(final):
        log(f"sft: loading warm start from {final}")
        return _load_entry(final, config, cached=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(final):
        if _complete(final):  # another worker built it while we waited for the lock
            log(f"sft: loading warm start built by another worker from {final}")
            return _load_entry(final, config, cached=True)
        # Holding the lock makes us the only builder of this key: leftovers are from killed builds.
        for stale in final.parent.glob(f".tmp-{final.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        model, tokenizer = load_policy(config.model, warm_seed(config))
        info = train_sft(model, tokenizer, build_task(config.task), config, log)
        _write_entry(final, model, tokenizer, info)
    log(f"sft: warm start saved to {final} (accuracy {info['accuracy']:.3f} after {info['steps']} steps, {info['seconds']:.0f}s)")
    return model, tokenizer, {**info, "sft": True, "cached": False, "cache_dir": str(final)}


def train_sft(model, tokenizer, task: ChainSumTask, config: RunConfig, log: Callable[[str], None] = print) -> dict:
    """Train in place until held-out greedy accuracy enters the band; returns the figures reached."""
    sft, low, high = config.sft, config.sft.target_low, config.sft.target_high
    run = _SFTRun(model, tokenizer, task, config)
    start, accuracy = time.perf_counter(), 0.0
    while run.step < sft.max_steps:
        before = run.snapshot()
        loss = run.train(min(sft.eval_every, sft.max_steps - run.step))
        accuracy = run.accuracy()
        log(f"sft: step {run.step} loss {loss:.3f} {sft.check} accuracy {accuracy:.3f} ({time.perf_counter() - start:.0f}s)")
        if accuracy > high:
            accuracy = _replay_into_band(run, before, low, high, log, sft.replay_levels)
        if accuracy >= low:
            break
    model.eval()
    return {
        "accuracy": accuracy, "check": sft.check, "steps": run.step, "seconds": time.perf_counter() - start,
        "in_band": low <= accuracy <= high, "target_low": low, "target_high": high,
    }


def _replay_into_band(run: "_SFTRun", before: dict, low: float, high: float, log: Callable[[str], None],
                      levels: int = 1) -> float:
    """Redo an interval that jumped over the band with finer checks; stop at the first inside.

    Training is deterministic given the snapshot, so the replay retraces the same path. With
    `levels` > 1 a finer interval that jumps over the band too is replayed again (the claims
    study's warm start went 0.240 -> 0.338 sampled within one 5-step chunk, over a 0.25-0.30 band,
    at the default of 1); when no check lands inside, the replay ends at the first check above the band.
    """
    end = run.step
    run.restore(before)
    chunk = max(1, (end - run.step) // _REPLAY_SPLITS)
    accuracy = 0.0
    while run.step < end:
        start = run.snapshot() if chunk > 1 and levels > 1 else None
        run.train(min(chunk, end - run.step))
        accuracy = run.accuracy()
        log(f"sft: replay step {run.step} {run.check} accuracy {accuracy:.3f}")
        if accuracy > high and start is not None:
            return _replay_into_band(run, start, low, high, log, levels - 1)
        if accuracy >= low:
            break
    return accuracy


class _SFTRun:
    """Model, optimizer and data stream of one SFT, with snapshots for replaying an interval."""

    def __init__(self, model, tokenizer, task: ChainSumTask, config: RunConfig):
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.batch_size = config.sft.batch_size
        self.check, self.check_k, self.check_temperature = config.sft.check, config.sft.check_k, config.sft.check_temperature
        self.check_seed = config.task.eval_seed
        self.device = next(model.parameters()).device
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.sft.lr, weight_decay=0.0)
        warmup = config.sft.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        self.rng = task.train_rng(warm_seed(config))
        self.eval_set = task.eval_set()
        self.max_new = max(len(tokenizer(p.solution, add_special_tokens=False)["input_ids"]) for p in self.eval_set) + 8
        self.step = 0

    def train(self, steps: int) -> float:
        """Take `steps` optimizer steps; returns their mean loss."""
        self.model.train()
        total = 0.0
        for _ in range(steps):
            ids, mask, labels = encode_sft_batch(self.tokenizer, self.task.train_batch(self.rng, self.batch_size), self.device)
            loss = self.model(input_ids=ids, attention_mask=mask, labels=labels).loss
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            total += loss.item()
        return total / max(steps, 1)

    def accuracy(self) -> float:
        if self.check == "sampled":
            # Same length limit as the greedy check: a sample that has not boxed its answer 8 tokens after the
            # longest solution is wrong either way, and an early policy's rambling would cost 48 tokens per sample.
            return sampled_accuracy(self.model, self.tokenizer, self.eval_set, self.max_new, self.check_k,
                                    self.check_temperature, self.check_seed)
        return greedy_accuracy(self.model, self.tokenizer, self.eval_set, self.max_new)

    def snapshot(self) -> dict:
        return {
            "model": copy.deepcopy(self.model.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scheduler": copy.deepcopy(self.scheduler.state_dict()),
            "rng": self.rng.getstate(),
            "step": self.step,
        }

    def restore(self, snap: dict) -> None:
        self.model.load_state_dict(snap["model"])
        self.optimizer.load_state_dict(snap["optimizer"])
        self.scheduler.load_state_dict(snap["scheduler"])
        self.rng.setstate(snap["rng"])
        self.step = snap["step"]


def _complete(entry: Path) -> bool:
    return (entry / INFO_FILE).is_file()


def _load_entry(entry: Path, config: RunConfig, cached: bool) -> tuple[torch.nn.Module, object, dict]:
    info = json.loads((entry / INFO_FILE).read_text())
    model, tokenizer = load_saved(entry, config.model)
    return model, tokenizer, {**info, "sft": True, "cached": cached, "cache_dir": str(entry)}


def _write_entry(final: Path, model, tokenizer, info: dict) -> None:
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2))  # written last: marks the entry complete
        os.rename(tmp, final)
    except OSError:
        if _complete(final):  # someone else won the rename; theirs is as good as ours
            return
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _build_lock(final: Path) -> Iterator[None]:
    # flock is released by the kernel when its holder dies, so a killed build never wedges others.
    fd = os.open(final.parent / f".{final.name}.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
