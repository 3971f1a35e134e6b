"""Rollouts from a vLLM engine colocated in the trainer process (GPU extra: `pip install '.[gpu]'`).

The engine lives in this process and shares the GPU with the trainer. Per step the trainer
calls `sync_weights` (its rollout snapshot), `wake`, `generate`, then `sleep` before its
optimizer phase. Memory is handed back and forth with vLLM's sleep mode, in the order
TRL's colocate mode uses:

    sleep(level)            weights (level 1: copied to CPU; level 2: dropped) and KV cache freed
    wake_up(["weights"])    weight memory mapped again, before any load_weights writes into it
    load_weights(...)       the trainer's tensors copied into the engine's model, then prefix cache reset
    wake_up(["kv_cache"])   KV cache mapped only now, at the first generate, so the trainer's
                            model, the engine's weights and the KV cache never peak together
                            while the trainer's tensors are still being copied

Level 1 (the default) restores the weights it copied out, so a `generate` without a fresh
`sync_weights` samples from the last synced policy. Level 2 saves that copy (the trainer
pushes every weight anyway) but leaves the weights undefined until the next sync;
`generate` then refuses to run rather than sample from garbage.

Read against vLLM's V1 engine sources (vllm/entrypoints/llm.py, v1/engine/llm_engine.py,
v1/executor/uniproc_executor.py, v1/engine/parallel_sampling.py; releases 0.10 to 0.1x)
and TRL's colocate generation (trl/generation/vllm_generation.py). Choices, and why:
- The engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, what vLLM itself
  sets for its external launcher): only then does `LLM.apply_model` hand our function the
  live model, so `load_weights` copies GPU tensors in place instead of pickling them to an
  engine process. The engine's weight-transfer API (`update_weights`) exists for engines in
  other processes or machines and is not needed here.
- Token ids in, token ids out: prompts are tokenized with the trainer's tokenizer (as the
  hf backend does) and passed as `{"prompt_token_ids": ...}`; the engine starts without a
  tokenizer (`skip_tokenizer_init`), so the micro models' character tokenizer never has to
  be loadable by vLLM, and EOS is the trainer's `eos_token_id` passed as a stop token.
  `generation_config="vllm"` keeps a model's generation_config.json from adding stop ids
  or sampling defaults the trainer does not know about.
- `logprobs=0` returns the sampled token's log-prob; `logprobs_mode="processed_logprobs"`
  (where the installed vLLM has it) takes it after temperature and top-p, i.e. from the
  distribution that was actually sampled. These are diagnostics only (base.py).
- With a seed, each prompt gets its own (`seed + i * n`); vLLM then gives the n samples of
  prompt i the seeds `seed + i * n + j`, so no two samples share a random stream.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
import tempfile
from typing import Any, Callable, Iterable

import torch

from workbench.config import RolloutConfig
from workbench.errors import UserError
from workbench.models.policy import is_micro
from workbench.rollout.base import Rollouts, Sampling, encode_prompts

MISSING_VLLM = "rollout.backend: vllm is not installed; install the GPU extra: pip install '.[gpu]'"
_FINISH = {"stop": "stop", "length": "length"}
_TAGS = ("weights", "kv_cache")


def import_vllm():
    """The vllm module, or one UserError line saying how to get it."""
    try:
        return importlib.import_module("vllm")
    except ModuleNotFoundError as e:
        if e.name == "vllm":
            raise UserError(MISSING_VLLM) from None
        raise UserError(f"rollout.backend: vllm is installed but cannot be imported: {e}") from None
    except ImportError as e:
        raise UserError(f"rollout.backend: vllm is installed but cannot be imported: {e}") from None


class VLLMBackend:
    """A RolloutBackend around a vLLM `LLM` (or any object with the same few methods)."""

    def __init__(self, llm, tokenizer, sampling_params_cls: Callable[..., Any], *, enable_sleep_mode: bool,
                 sleep_level: int = 1, workdir: tempfile.TemporaryDirectory | None = None):
        if sleep_level not in (1, 2):
            raise ValueError(f"sleep_level must be 1 or 2, got {sleep_level}")
        self.llm = llm
        self.tokenizer = tokenizer
        self.sampling_params_cls = sampling_params_cls
        self.enable_sleep_mode = enable_sleep_mode
        self.sleep_level = sleep_level
        self._asleep: set[str] = set()  # tags whose memory is released right now
        self._weights_valid = True  # False after a level-2 sleep until the next sync
        self._workdir = workdir  # a saved copy of an in-memory model, removed at close

    # ---- memory: sleep / wake ----
    def sleep(self) -> None:
        """Free the engine's GPU memory for the trainer's optimizer phase (no-op without sleep mode)."""
        if not self.enable_sleep_mode or self._asleep:
            return
        self.llm.sleep(level=self.sleep_level)
        self._asleep = set(_TAGS)
        if self.sleep_level == 2:
            self._weights_valid = False

    def wake(self) -> None:
        """Map the weights again; the KV cache follows at the next `generate` (see module doc)."""
        self._wake("weights")

    def _wake(self, tag: str) -> None:
        if tag not in self._asleep:
            return
        if torch.cuda.is_available():
            # Blocks the trainer freed sit in torch's cache, where vLLM's allocator cannot reach them.
            torch.cuda.empty_cache()
        self.llm.wake_up(tags=[tag])
        self._asleep.discard(tag)

    # ---- weights ----
    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy the trainer's tensors (HF state-dict names) into the engine's model in place."""
        self._wake("weights")
        weights = [(name, t.detach()) for name, t in named_tensors]
        if not weights:
            return
        missing = self.llm.apply_model(lambda model: _load_into(model, weights))[0]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise ValueError(f"sync_weights: the engine's parameters {', '.join(missing[:5])}{more} were not among the "
                             "pushed tensors; push the full state dict with Hugging Face names")
        # Cached prefixes hold keys/values computed by the old weights.
        self.llm.reset_prefix_cache()
        self._weights_valid = True

    # ---- sampling ----
    def generate(self, prompts: list[str], n: int, sampling: Sampling) -> Rollouts:
        if not self._weights_valid:
            raise RuntimeError("the vLLM engine dropped its weights in a level-2 sleep; call sync_weights before generate")
        self._wake("weights")
        self._wake("kv_cache")
        prompt_ids = encode_prompts(self.tokenizer, prompts)
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids],
                                    self._sampling_params(len(prompts), n, sampling), use_tqdm=False)
        return rollouts_from_outputs(outputs, prompt_ids, n)

    def _sampling_params(self, num_prompts: int, n: int, sampling: Sampling):
        eos = self.tokenizer.eos_token_id
        common = dict(n=n, temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_new_tokens,
                      logprobs=0, stop_token_ids=[eos] if eos is not None else [], detokenize=False)
        if sampling.seed is None:
            return self.sampling_params_cls(**common)
        return [self.sampling_params_cls(**common, seed=sampling.seed + i * n) for i in range(num_prompts)]

    def close(self) -> None:
        """Shut the engine down and give its GPU memory back; safe to call twice."""
        if self.llm is None:
            return
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if hasattr(core, "shutdown"):
            core.shutdown()
        self.llm = None
        _release_vllm_process_groups()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None


def _load_into(model, weights: list[tuple[str, torch.Tensor]]) -> list[str]:
    """Runs inside the engine: load, then name the parameters nothing was loaded into.

    vLLM's load_weights maps HF names onto its fused layers (q/k/v -> qkv_proj, gate/up ->
    gate_up_proj) and returns the parameter names it filled; vLLM's own checkpoint loader
    demands that set cover every parameter, and so does this. Only names travel back.
    """
    loaded = model.load_weights(weights)
    if not isinstance(loaded, set):  # releases that return nothing cannot be checked
        return []
    return sorted(name for name, _ in model.named_parameters() if name not in loaded)


def rollouts_from_outputs(outputs, prompt_ids: list[list[int]], n: int) -> Rollouts:
    """vLLM `RequestOutput`s (one per prompt, in prompt order) -> grouped Rollouts.

    Sample i answers prompt i // n; within a prompt, samples keep vLLM's child order
    (`CompletionOutput.index`). `sampling_logp` is None when the engine returned no log-probs.
    """
    if len(outputs) != len(prompt_ids):
        raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompt_ids)} prompts")
    expanded, responses, reasons, logps = [], [], [], []
    have_logp = True
    for ids, out in zip(prompt_ids, outputs):
        completions = sorted(out.outputs, key=lambda c: c.index)
        if len(completions) != n:
            raise RuntimeError(f"vLLM returned {len(completions)} samples for a prompt, expected n={n}")
        for c in completions:
            tokens = [int(t) for t in c.token_ids]
            expanded.append(list(ids))
            responses.append(tokens)
            reasons.append(finish_reason(c.finish_reason))
            if c.logprobs is None:
                have_logp = False
            elif have_logp:
                # With logprobs=0 each position holds exactly the sampled token's entry.
                logps.append([float(c.logprobs[t][tok].logprob) for t, tok in enumerate(tokens)])
    return Rollouts(prompt_ids=expanded, response_ids=responses, finish_reasons=reasons,
                    sampling_logp=logps if have_logp else None, n=n)


def finish_reason(reason: str | None) -> str:
    """vLLM's finish reason -> the interface's: "stop" (EOS) or "length" (max tokens or context)."""
    try:
        return _FINISH[reason]
    except KeyError:
        raise RuntimeError(f"vLLM ended a response with finish_reason={reason!r}; expected 'stop' or 'length'") from None


def make_vllm_backend(model_path: str | torch.nn.Module, tokenizer, cfg: RolloutConfig, seed: int,
                      llm_factory: Callable[..., Any] | None = None, *,
                      sampling_params_cls: Callable[..., Any] | None = None, sleep_level: int = 1,
                      dtype: str = "bfloat16", trust_remote_code: bool = False, max_model_len: int | None = None,
                      enforce_eager: bool = False, engine_kwargs: dict[str, Any] | None = None) -> VLLMBackend:
    """A colocated engine for `model_path` (HF id or directory; an in-memory HF model is saved first).

    `llm_factory` / `sampling_params_cls` stand in for `vllm.LLM` / `vllm.SamplingParams`
    (tests); without them vLLM is imported, and its absence is one UserError line.
    The engine is put to sleep at once, so the trainer's first optimizer phase has the memory.
    `gpu_memory_utilization` is a share of the whole GPU, checked against the memory free
    when the engine starts: build the backend before the optimizer allocates its state.
    """
    if isinstance(model_path, str) and is_micro(model_path):
        raise ValueError(f"make_vllm_backend: {model_path} is built in memory; pass the model itself, which is saved for the engine")
    workdir = None
    if isinstance(model_path, torch.nn.Module):
        workdir = tempfile.TemporaryDirectory(prefix="dispo-vllm-")
        model_path.save_pretrained(workdir.name)  # weights are re-synced before use; config is what matters
        model_path = workdir.name
    kwargs: dict[str, Any] = dict(
        model=model_path, skip_tokenizer_init=True, dtype=dtype, seed=seed,
        gpu_memory_utilization=cfg.gpu_memory_utilization, enable_sleep_mode=cfg.enable_sleep_mode,
        trust_remote_code=trust_remote_code, max_model_len=max_model_len, enforce_eager=enforce_eager,
        generation_config="vllm", logprobs_mode="processed_logprobs", **(engine_kwargs or {}))
    if llm_factory is None:
        vllm = import_vllm()
        # The engine core must run in this process for apply_model to reach the live model.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        kwargs = _known_engine_args(kwargs, vllm)
        llm_factory = vllm.LLM
        sampling_params_cls = sampling_params_cls or vllm.SamplingParams
    if sampling_params_cls is None:
        raise ValueError("sampling_params_cls is required with a custom llm_factory")
    llm = llm_factory(**kwargs)
    backend = VLLMBackend(llm, tokenizer, sampling_params_cls, enable_sleep_mode=cfg.enable_sleep_mode,
                          sleep_level=sleep_level, workdir=workdir)
    backend.sleep()
    return backend


def _known_engine_args(kwargs: dict[str, Any], vllm) -> dict[str, Any]:
    """Drop optional arguments this vLLM release does not know (logprobs_mode came in 0.10.x)."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(vllm.EngineArgs)}
    optional = {"logprobs_mode", "generation_config"}
    return {k: v for k, v in kwargs.items() if k in known or k not in optional}


def _release_vllm_process_groups() -> None:
    """The in-process engine set up torch.distributed; tear it down so a later engine can start."""
    if "vllm" not in sys.modules or sys.modules["vllm"] is None:
        return
    try:
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel
    except ImportError:
        return
    destroy_model_parallel()
    destroy_distributed_environment()
