"""Interface tests of the vLLM rollout backend against a stand-in engine that records calls.

vLLM needs a GPU and is not installed on CPU machines, so these tests check what the
backend asks of the engine (the order of sleep / wake / load / generate calls, the
sampling parameters, the prompts) and how it turns engine outputs into Rollouts. They do
not show that vLLM itself behaves as its sources read; benchmarks/gpu.py does that on a GPU.

Run: .venv/bin/python -m pytest tests/test_rollout_vllm.py -q
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch

from workbench.config import RolloutConfig
from workbench.errors import UserError
from workbench.rollout.base import Sampling
from workbench.rollout.vllm import MISSING_VLLM, VLLMBackend, finish_reason, import_vllm, make_vllm_backend, rollouts_from_outputs

PARAMS = ["model.embed_tokens.weight", "model.layers.0.self_attn.qkv_proj.weight"]


class CharTokenizer:
    eos_token_id = 2

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [10 + ord(c) % 20 for c in text]}


class SamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class FakeModel:
    def __init__(self, calls):
        self.calls = calls
        self.loaded: dict[str, torch.Tensor] = {}

    def load_weights(self, weights):
        weights = list(weights)
        self.calls.append(("load_weights", tuple(n for n, _ in weights)))
        self.loaded.update(weights)
        # vLLM fuses q/k/v: report the engine-side names it filled, as the real loader does.
        return {"model.embed_tokens.weight" if "embed" in n else "model.layers.0.self_attn.qkv_proj.weight"
                for n, _ in weights}

    def named_parameters(self):
        return [(n, None) for n in PARAMS]


def completion(index, tokens, reason, logp=None):
    logprobs = None if logp is None else [{t: SimpleNamespace(logprob=lp)} for t, lp in zip(tokens, logp)]
    return SimpleNamespace(index=index, token_ids=tokens, finish_reason=reason, logprobs=logprobs)


@dataclass
class FakeLLM:
    """Stands in for vllm.LLM: records every call, answers generate with canned completions."""

    kwargs: dict
    calls: list = field(default_factory=list)

    def __post_init__(self):
        self.model = FakeModel(self.calls)

    def sleep(self, level=1):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags)))

    def apply_model(self, fn):
        return [fn(self.model)]

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))

    def generate(self, prompts, sampling_params, use_tqdm=True):
        self.calls.append(("generate", len(prompts)))
        self.last_prompts, self.last_params = prompts, sampling_params
        n = (sampling_params[0] if isinstance(sampling_params, list) else sampling_params).kwargs["n"]
        out = []
        for i, _ in enumerate(prompts):
            comps = [completion(j, [100 + 10 * i + j] * (j + 1) + [2], "stop", [-0.1 * (j + 1)] * (j + 2)) for j in range(n)]
            out.append(SimpleNamespace(outputs=comps[::-1]))  # engines need not keep child order
        return out


def weights():
    return [("model.embed_tokens.weight", torch.ones(2)), ("model.layers.0.self_attn.q_proj.weight", torch.zeros(2))]


def make(sleep=True, level=1, **kw):
    cfg = RolloutConfig(backend="vllm", enable_sleep_mode=sleep, gpu_memory_utilization=0.3)
    return make_vllm_backend("/models/m", CharTokenizer(), cfg, seed=7, llm_factory=lambda **k: FakeLLM(k),
                             sampling_params_cls=SamplingParams, sleep_level=level, **kw)


def trainer_step(backend, prompts=("1+2=", "3+4=")):
    """One step in the order workbench.train.trainer drives a backend."""
    backend.sync_weights(weights())
    backend.wake()
    ro = backend.generate(list(prompts), 2, Sampling(max_new_tokens=8))
    backend.sleep()
    return ro


STEP = [("wake_up", ("weights",)),
        ("load_weights", ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight")),
        ("reset_prefix_cache",), ("wake_up", ("kv_cache",)), ("generate", 2), ("sleep", 1)]


def test_two_steps_wake_weights_then_sync_then_kv_cache_then_sleep():
    backend = make()
    trainer_step(backend)
    trainer_step(backend)
    assert backend.llm.calls == [("sleep", 1), *STEP, *STEP]


def test_wake_before_sync_maps_weights_once():
    backend = make()
    backend.wake()
    backend.sync_weights(weights())
    backend.generate(["1+2="], 2, Sampling())
    calls = backend.llm.calls
    assert [c for c in calls if c[0] == "wake_up"] == [("wake_up", ("weights",)), ("wake_up", ("kv_cache",))]
    assert calls.index(("wake_up", ("weights",))) < [c[0] for c in calls].index("load_weights") \
        < calls.index(("wake_up", ("kv_cache",))) < [c[0] for c in calls].index("generate")


def test_without_sleep_mode_no_sleep_or_wake_reaches_the_engine():
    backend = make(sleep=False)
    trainer_step(backend)
    assert [c[0] for c in backend.llm.calls] == ["load_weights", "reset_prefix_cache", "generate"]


def test_level_two_sleep_refuses_to_generate_until_weights_are_synced():
    backend = make(level=2)
    with pytest.raises(RuntimeError, match="sync_weights"):
        backend.generate(["1+2="], 2, Sampling())
    assert "generate" not in [c[0] for c in backend.llm.calls]
    trainer_step(backend)
    assert ("sleep", 2) in backend.llm.calls and ("generate", 2) in backend.llm.calls


def test_level_one_sleep_keeps_the_last_synced_weights_usable():
    backend = make(level=1)
    backend.generate(["1+2="], 2, Sampling())  # the engine's own (loaded) weights, restored on wake
    assert ("generate", 1) in backend.llm.calls


def test_engine_is_built_colocated_token_in_token_out():
    backend = make()
    k = backend.llm.kwargs
    assert k["model"] == "/models/m" and k["seed"] == 7 and k["dtype"] == "bfloat16"
    assert k["enable_sleep_mode"] is True and k["gpu_memory_utilization"] == 0.3
    assert k["skip_tokenizer_init"] is True and k["logprobs_mode"] == "processed_logprobs"


def test_rollouts_group_samples_by_prompt_in_child_order():
    backend = make(sleep=False)
    ro = backend.generate(["ab", "cde", "f"], 3, Sampling())
    tok = CharTokenizer()
    assert len(ro) == 9 and ro.n == 3
    assert ro.group_index == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert ro.prompt_ids == [tok("ab")["input_ids"]] * 3 + [tok("cde")["input_ids"]] * 3 + [tok("f")["input_ids"]] * 3
    # FakeLLM returns children reversed; sample j of prompt i is [100 + 10i + j] * (j+1) + [eos].
    assert ro.response_ids[4] == [111, 111, 2]
    assert [len(r) for r in ro.response_ids] == [2, 3, 4] * 3
    assert all(len(lp) == len(r) for lp, r in zip(ro.sampling_logp, ro.response_ids))
    assert ro.sampling_logp[5] == pytest.approx([-0.3] * 4)
    assert ro.finish_reasons == ["stop"] * 9


def test_prompts_go_in_as_the_trainer_tokenizers_ids():
    backend = make(sleep=False)
    backend.generate(["1+2=", "9"], 2, Sampling())
    tok = CharTokenizer()
    assert backend.llm.last_prompts == [{"prompt_token_ids": tok("1+2=")["input_ids"]},
                                        {"prompt_token_ids": tok("9")["input_ids"]}]


def test_sampling_params_carry_the_sampling_and_stop_at_eos():
    backend = make(sleep=False)
    backend.generate(["1", "2"], 4, Sampling(temperature=0.7, top_p=0.9, max_new_tokens=33))
    assert backend.llm.last_params.kwargs == dict(n=4, temperature=0.7, top_p=0.9, max_tokens=33, logprobs=0,
                                                  stop_token_ids=[2], detokenize=False)


def test_a_seed_gives_every_sample_its_own_stream():
    backend = make(sleep=False)
    backend.generate(["1", "2", "3"], 4, Sampling(seed=100))
    params = backend.llm.last_params
    assert [p.kwargs["seed"] for p in params] == [100, 104, 108]
    # vLLM seeds child j of a request with seed + j: all 12 samples differ.
    assert len({p.kwargs["seed"] + j for p in params for j in range(4)}) == 12


@pytest.mark.parametrize("reason,expected", [("stop", "stop"), ("length", "length")])
def test_finish_reasons_map_to_the_interface(reason, expected):
    assert finish_reason(reason) == expected


@pytest.mark.parametrize("reason", ["abort", None])
def test_unexpected_finish_reasons_are_errors(reason):
    with pytest.raises(RuntimeError, match="finish_reason"):
        finish_reason(reason)


def test_outputs_without_logprobs_give_no_sampling_logp_and_truncation_is_length():
    outs = [SimpleNamespace(outputs=[completion(0, [5, 6], "length"), completion(1, [2], "stop")])]
    ro = rollouts_from_outputs(outs, [[1, 1]], 2)
    assert ro.sampling_logp is None and ro.finish_reasons == ["length", "stop"]


def test_a_missing_sample_is_an_error():
    outs = [SimpleNamespace(outputs=[completion(0, [5], "stop")])]
    with pytest.raises(RuntimeError, match="expected n=2"):
        rollouts_from_outputs(outs, [[1]], 2)


def test_weights_that_miss_an_engine_parameter_are_refused():
    backend = make(sleep=False)
    with pytest.raises(ValueError, match="qkv_proj"):
        backend.sync_weights([("model.embed_tokens.weight", torch.ones(2))])
    assert ("reset_prefix_cache",) not in backend.llm.calls


def test_close_is_idempotent():
    backend = make()
    backend.close()
    backend.close()
    assert backend.llm is None


def test_without_vllm_choosing_it_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail as if it were not installed
    with pytest.raises(UserError) as e:
        make_vllm_backend("/models/m", CharTokenizer(), RolloutConfig(backend="vllm"), seed=0)
    assert str(e.value) == MISSING_VLLM
    assert str(e.value) == "rollout.backend: vllm is not installed; install the GPU extra: pip install '.[gpu]'"
    with pytest.raises(UserError):
        import_vllm()


def test_backend_module_imports_without_vllm(monkeypatch):
    import importlib

    monkeypatch.setitem(sys.modules, "vllm", None)
    import workbench.rollout.vllm as mod

    assert importlib.reload(mod).VLLMBackend is not None


def test_bad_sleep_level_is_refused():
    with pytest.raises(ValueError, match="sleep_level"):
        VLLMBackend(FakeLLM({}), CharTokenizer(), SamplingParams, enable_sleep_mode=True, sleep_level=3)


def test_an_in_memory_model_is_saved_for_the_engine_and_removed_at_close():
    from pathlib import Path

    from workbench.models.policy import build_char_tokenizer, build_micro_model

    tok = build_char_tokenizer()
    model = build_micro_model("micro-0.5m", tok, seed=0)
    backend = make_vllm_backend(model, tok, RolloutConfig(backend="vllm"), seed=0, llm_factory=lambda **k: FakeLLM(k),
                                sampling_params_cls=SamplingParams)
    saved = Path(backend.llm.kwargs["model"])
    assert (saved / "config.json").exists()
    backend.close()
    assert not saved.exists()


def test_a_micro_model_name_is_refused_since_the_engine_cannot_load_it():
    with pytest.raises(ValueError, match="pass the model itself"):
        make_vllm_backend("micro-3m", CharTokenizer(), RolloutConfig(backend="vllm"), seed=0,
                          llm_factory=lambda **k: FakeLLM(k), sampling_params_cls=SamplingParams)


class SamplingEngine:
    """Stands in for vllm.LLM inside the trainer: samples with the transformers model saved at
    `model`, returns the processed log-prob of each sampled token, and records calls."""

    instances: list["SamplingEngine"] = []

    def __init__(self, model, seed, **kwargs):
        from transformers import AutoModelForCausalLM

        self.hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        self.generator = torch.Generator().manual_seed(seed)
        self.calls: list = []
        SamplingEngine.instances.append(self)

    def sleep(self, level=1):
        self.calls.append("sleep")

    def wake_up(self, tags=None):
        self.calls.append(f"wake_up:{tags[0]}")

    def reset_prefix_cache(self):
        self.calls.append("reset_prefix_cache")

    def apply_model(self, fn):
        hf = self.hf

        class Loader:
            def load_weights(self, weights):
                state = dict(weights)
                hf.load_state_dict(state, strict=False)
                return set(state)

            def named_parameters(self):
                return hf.named_parameters()

        self.calls.append("load_weights")
        return [fn(Loader())]

    @torch.no_grad()
    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append("generate")
        out = []
        for p in prompts:
            kw = params.kwargs
            ids = torch.tensor([p["prompt_token_ids"]] * kw["n"])
            torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=self.generator)))
            gen = self.hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=kw["temperature"],
                                   top_p=kw["top_p"], top_k=0, max_new_tokens=kw["max_tokens"], eos_token_id=kw["stop_token_ids"],
                                   pad_token_id=kw["stop_token_ids"][0], output_scores=True, return_dict_in_generate=True)
            comps = []
            for j in range(kw["n"]):
                toks = gen.sequences[j, ids.shape[1]:].tolist()
                stop = next((t for t, tok in enumerate(toks) if tok in kw["stop_token_ids"]), None)
                toks = toks if stop is None else toks[:stop + 1]
                logp = [torch.log_softmax(gen.scores[t][j].float(), -1)[tok].item() for t, tok in enumerate(toks)]
                comps.append(completion(j, toks, "length" if stop is None else "stop", logp))
            out.append(SimpleNamespace(outputs=comps))
        return out


def test_trainer_on_the_vllm_backend_syncs_each_step_and_its_logps_line_up(monkeypatch, tmp_path):
    """Interface test through workbench.train.trainer.train with the stand-in SamplingEngine: the trainer's
    old_logp and the engine's sampling log-probs come from the same weights, so the logged mismatch
    is float noise only if every sampled token's log-prob sits at the right position."""
    from dataclasses import dataclass as dc

    from transformers import Qwen2Config, Qwen2ForCausalLM

    import workbench.rollout.vllm as backend_module
    from workbench import tracking
    from workbench.config import build_run_config
    from workbench.models.policy import build_char_tokenizer
    from workbench.train.trainer import train

    tok = build_char_tokenizer()
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                                 num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")

    @dc
    class EngineArgs:
        logprobs_mode: str = ""
        generation_config: str = ""

    fake_vllm = SimpleNamespace(LLM=SamplingEngine, SamplingParams=SamplingParams, EngineArgs=EngineArgs)
    monkeypatch.setattr(backend_module, "import_vllm", lambda: fake_vllm)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # restored after the test
    SamplingEngine.instances.clear()
    cfg = build_run_config({
        "steps": 2, "seed": 0, "updates_per_rollout": 2, "rollout_lag": 1, "lr": 1e-3, "sample_every": 100,
        "checkpoint_every": 100, "model": {"name": str(tmp_path / "m"), "device": "cpu"},
        "rollout": {"backend": "vllm", "prompts_per_step": 3, "group_size": 2, "max_new_tokens": 6, "temperature": 0.8},
        "eval": {"benchmarks": ["micro"], "every": 100, "k": 2, "limit": 2},
    })
    logged: list[dict] = []
    monkeypatch.setattr(tracking.NullTracker, "log_metrics", lambda self, m, step: logged.append(m))
    result = train(cfg, progress=False, track=False, checkpoint_root=str(tmp_path / "ckpt"))

    assert result.status == "FINISHED"
    (engine,) = SamplingEngine.instances
    step = ["wake_up:weights", "load_weights", "reset_prefix_cache", "wake_up:kv_cache", "generate", "sleep"]
    assert engine.calls[0] == "sleep"  # built asleep
    assert engine.calls.count("generate") >= 2  # two steps, plus evaluations
    for i in [j for j, c in enumerate(engine.calls) if c == "wake_up:weights"]:
        assert engine.calls[i:i + 6] == step
    mismatch = [m["rollout/logp_mismatch_max"] for m in logged if "rollout/logp_mismatch_max" in m]
    assert len(mismatch) == 2 and max(mismatch) < 1e-4
