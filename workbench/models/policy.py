"""Policies: tiny Qwen2 models built from a config by name, or any causal LM by HF id or path.

Micro models (`micro-0.5m`, `micro-3m`, `micro-15m`) pair a freshly initialised, seeded
`Qwen2ForCausalLM` with a character-level tokenizer built locally, so nothing is ever
downloaded. Any other name is a Hugging Face hub id or a local directory, loaded with
`AutoModelForCausalLM` / `AutoTokenizer`; a hub id that is not in the local cache fails with
one clear line when there is no network.

Micro models stay in float32 even where `dtype: auto` would pick bfloat16 on CUDA: at a few
million parameters bf16 saves nothing worth having and hurts SFT precision.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers import models as tok_models
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from workbench.config import ModelConfig
from workbench.errors import first_line
from workbench.params import MICRO_MODELS, is_micro  # noqa: F401 - is_micro is part of this module's interface
from workbench.tasks.micro import BOXED

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
# The chain-sum alphabet plus a little arithmetic punctuation; `\boxed{` is one token so the
# answer marker costs one step of generation instead of seven.
ALPHABET = "0123456789+-*/=;,.(){}\\^# "
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer over the task alphabet; adds <bos> in front, pads on the left."""
    vocab = {t: i for i, t in enumerate([PAD, BOS, EOS, UNK, BOXED, *ALPHABET])}
    tok = Tokenizer(tok_models.WordLevel(vocab, unk_token=UNK))
    # One piece per character, except that `\boxed{` wins over its characters.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\\boxed\{|."), behavior="isolated")
    tok.decoder = decoders.Fuse()  # join pieces without the spaces WordLevel would insert
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK, padding_side="left", model_max_length=1024
    )


def build_micro_model(name: str, tokenizer: PreTrainedTokenizerBase, seed: int) -> Qwen2ForCausalLM:
    """A freshly initialised tiny Qwen2; the same name and seed give the same weights."""
    if name not in MICRO_MODELS:
        raise ValueError(f"unknown micro model {name!r}; valid: {', '.join(MICRO_MODELS)}")
    spec = MICRO_MODELS[name]
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        num_hidden_layers=spec.layers,
        intermediate_size=spec.intermediate,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # Seed a private RNG stream so building a model leaves the caller's torch RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    _set_generation_ids(model, tokenizer)
    return model


def select_device(cfg: ModelConfig) -> torch.device:
    """`auto`: cuda when available, else cpu; asking for cuda without one is an error."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("model.device: cuda was requested but no CUDA device is available; use auto or cpu")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def resolve_dtype(cfg: ModelConfig, device: torch.device, micro: bool) -> torch.dtype:
    if cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" and not micro else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype]


def load_policy(cfg: ModelConfig, seed: int) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """Model (on its device, in its dtype) and tokenizer (left padding, with a pad token)."""
    if is_micro(cfg.name):
        tokenizer = build_char_tokenizer()
        return _place(build_micro_model(cfg.name, tokenizer, seed), cfg, micro=True), tokenizer
    model, tokenizer = _load_pretrained(cfg)
    return _place(model, cfg, micro=False), tokenizer


def load_saved(path: str | Path, cfg: ModelConfig) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """A policy saved with save_pretrained (a warm start or checkpoint) of the model `cfg` names.

    Device, dtype and checkpointing follow `cfg`; a saved micro model stays a micro model
    (float32 under dtype auto).
    """
    micro = is_micro(cfg.name)
    model, tokenizer = _load_pretrained(cfg.model_copy(update={"name": str(path)}), micro=micro)
    return _place(model, cfg, micro=micro), tokenizer


def _place(model: torch.nn.Module, cfg: ModelConfig, micro: bool) -> torch.nn.Module:
    device = select_device(cfg)
    model.to(device=device, dtype=resolve_dtype(cfg, device, micro))
    if cfg.gradient_checkpointing:
        # transformers 5 renamed the switch; 4.x only has the old name
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    return model


def _load_pretrained(cfg: ModelConfig, micro: bool = False) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    name = cfg.name
    if name.startswith("micro-"):
        raise ValueError(f"unknown micro model {name!r}; valid: {', '.join(MICRO_MODELS)}")
    local = Path(name).expanduser()
    looks_like_path = name.startswith((".", "/", "~")) or local.exists()
    if looks_like_path and not local.is_dir():
        raise ValueError(f"model.name: local path {name!r} is not a directory (valid: a built-in micro model, a HF hub id or a model directory)")
    device = select_device(cfg)
    kwargs = dict(trust_remote_code=cfg.trust_remote_code, dtype=resolve_dtype(cfg, device, micro))
    source = str(local) if looks_like_path else name
    try:
        # The local cache first, so a cached hub model loads without touching the network.
        return _from_pretrained(source, local_files_only=True, **kwargs)
    except OSError as e:
        if looks_like_path:
            raise ValueError(f"model.name: cannot load a model from {name!r}: {first_line(e)}") from None
    if _offline():
        raise ValueError(f"model {name!r} could not be found locally and no network is available (HF_HUB_OFFLINE is set)")
    if not _hub_reachable():
        # Checked up front: the hub client would otherwise retry for most of a minute.
        raise ValueError(f"model {name!r} could not be found locally and no network is available (cannot reach {_hub_host()})")
    try:
        return _from_pretrained(source, local_files_only=False, **kwargs)
    except Exception as e:  # connection errors come in many classes; all end the same way
        raise ValueError(f"model {name!r} could not be found locally and could not be downloaded (no network available?): {first_line(e)}") from None


def _from_pretrained(source: str, local_files_only: bool, **kwargs):
    # A per-tensor "Loading weights" bar for every load (warm starts, sweep trials) is noise.
    transformers.utils.logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only, trust_remote_code=kwargs["trust_remote_code"])
    model = AutoModelForCausalLM.from_pretrained(source, local_files_only=local_files_only, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation appends on the right
    _set_generation_ids(model, tokenizer)
    return model, tokenizer


def _set_generation_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.pad_token_id = tokenizer.pad_token_id
        if gen.eos_token_id is None:
            gen.eos_token_id = tokenizer.eos_token_id


def _offline() -> bool:
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(f.strip().lower() in {"1", "true", "yes", "on"} for f in flags)


def _hub_host() -> str:
    return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    try:
        socket.create_connection((_hub_host(), 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def build_prompt(tokenizer: PreTrainedTokenizerBase, question: str, is_micro: bool) -> str:
    """The text a policy is conditioned on.

    Micro models see the raw problem (`3+7+5=`). HF models get it through their chat
    template, with an instruction to box the final answer and the generation prompt added;
    a model without a template gets the question and the instruction as plain text.
    Chat-template output already holds the model's special tokens: encode it with
    `add_special_tokens=False`; micro prompts rely on the tokenizer adding <bos>.
    """
    if is_micro:
        return question
    content = f"{question}\n\n{INSTRUCTION}"
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    return f"{content}\n"


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
