"""The HF backend's own decode loop against transformers' generate.

Run: pytest tests/test_rollout_hf.py
"""

import pytest
import torch

from workbench.models.policy import build_char_tokenizer, build_micro_model
from workbench.rollout.base import Sampling
from workbench.rollout.hf import HFBackend

PROMPTS = ["1+2=", "3+4+5=", "9=", "7+7+7+7=", "2+2="]


def _backend(decode, seed=3, end_at=12):
    tok = build_char_tokenizer()
    model = build_micro_model("micro-0.5m", tok, seed=seed)

    # An untrained model never picks <eos>; force it at absolute position `end_at`, so rows with
    # prompts of different lengths finish at different steps and leave the batch mid-way.
    def end_rows(module, args, kwargs, out):
        last = kwargs["position_ids"][:, -1]
        out.logits[last == end_at, -1, tok.eos_token_id] = 1e4
        return out

    model.register_forward_hook(end_rows, with_kwargs=True)
    return HFBackend(model, tok, decode=decode), tok


def test_greedy_loop_equals_generate_while_rows_finish_at_different_steps():
    outs = {}
    for decode in ("loop", "generate"):
        backend, tok = _backend(decode)
        outs[decode] = backend.generate(PROMPTS, 2, Sampling(temperature=0, max_new_tokens=24))
    loop, gen = outs["loop"], outs["generate"]
    assert loop.response_ids == gen.response_ids and loop.finish_reasons == gen.finish_reasons
    lengths = {len(r) for r in loop.response_ids}
    assert len(lengths) > 1, "rows must end at different steps for this test to mean anything"


def test_sampling_is_fixed_by_the_seed_and_matches_generate_on_the_first_token():
    runs = []
    for decode in ("loop", "loop", "generate"):
        backend, tok = _backend(decode)
        torch.manual_seed(11)
        runs.append(backend.generate(PROMPTS, 4, Sampling(temperature=0.8, top_p=0.9, max_new_tokens=16)))
    assert runs[0].response_ids == runs[1].response_ids
    # Both draw the first token of every row with one multinomial call over the same warped distribution.
    assert [r[0] for r in runs[0].response_ids] == [r[0] for r in runs[2].response_ids]
    for r, reason in zip(runs[0].response_ids, runs[0].finish_reasons):
        assert (reason == "stop") == (r[-1] == tok.eos_token_id) and len(r) <= 16


def _old_logp_both_ways(temperature: float, top_p: float):
    """A real rollout of an untrained micro-3m model: the decode loop's log-probs, and the trainer's second pass."""
    from workbench.train.batching import pack, response_logp_chunked

    tok = build_char_tokenizer()
    model = build_micro_model("micro-3m", tok, seed=5).eval()
    torch.manual_seed(2)
    ro = HFBackend(model, tok).generate(PROMPTS, 4, Sampling(temperature=temperature, top_p=top_p,
                                                             max_new_tokens=24, logprobs=True))
    batch = pack(ro.prompt_ids, ro.response_ids, tok.pad_token_id, torch.device("cpu"))
    W = batch.mask.shape[1]
    from_loop = torch.tensor([r + [0.0] * (W - len(r)) for r in ro.sampling_logp])
    return ro, batch, model, from_loop, response_logp_chunked(model, batch, temperature)


# Measured: max |old_logp difference| 4.8e-7 (T 1.0) and 9.5e-7 (T 0.7), float32 rounding.
LOGP_TOL = 1e-5


def test_decode_loop_log_probs_are_the_trainers_old_logp_to_float_rounding():
    from workbench.train.batching import response_logp

    for temperature in (1.0, 0.7):  # temperature scaling must match the trainer's
        ro, batch, model, from_loop, recomputed = _old_logp_both_ways(temperature, 1.0)
        assert ro.exact_logp and [len(r) for r in ro.sampling_logp] == [len(r) for r in ro.response_ids]
        assert batch.mask.sum() > 100
        assert ((from_loop - recomputed).abs() * batch.mask).max() < LOGP_TOL
        # r = exp(logp - old_logp) under a policy that moved: the two old_logp give the same ratios.
        moved = build_micro_model("micro-3m", build_char_tokenizer(), seed=5)
        with torch.no_grad():
            for p in moved.parameters():
                p.add_(0.01 * torch.randn_like(p))
            logp, _ = response_logp(moved.eval(), batch, temperature)
        r_loop, r_pass = torch.exp(logp - from_loop), torch.exp(logp - recomputed)
        assert ((r_loop - 1).abs() * batch.mask).max() > 1e-3  # the ratios do move away from 1
        assert ((r_loop - r_pass).abs() * batch.mask).max() < 2 * LOGP_TOL


def test_top_p_log_probs_are_not_exact_and_the_trainer_recomputes(monkeypatch):
    from workbench.config import build_run_config
    from workbench.train import trainer

    ro, batch, model, from_loop, recomputed = _old_logp_both_ways(1.0, 0.8)
    assert not ro.exact_logp
    assert ((from_loop - recomputed).abs() * batch.mask).max() > 1e-2  # truncated distribution: they differ
    cpu = torch.device("cpu")

    def cfg(**rollout):
        return build_run_config({"rollout": rollout})

    assert trainer.logp_from_rollout(cfg(), cpu)
    assert not trainer.logp_from_rollout(cfg(top_p=0.8), cpu)
    assert not trainer.logp_from_rollout(cfg(old_logp="recompute"), cpu)
    # Whatever the config says, a rollout whose log-probs are not exact gets the second pass.
    calls = []
    monkeypatch.setattr(trainer, "response_logp_chunked", lambda *a, **k: calls.append(1) or recomputed)
    parts = trainer.Parts(cfg(), device=cpu, tok=None, micro=True, benchmarks={}, old_policy=model,
                          logp_from_rollout=True)
    assert trainer.behaviour_logp(parts, ro, batch) is recomputed and calls == [1]


# Prompts of different lengths (left padding). An untrained micro model draws <eos> about once in 31
# tokens; with <eos>'s (tied) embedding scaled by 4 it is also the argmax after some prompts, so at
# every temperature responses end at different steps, and some only at the cap.
VARIED = ["1+2=", "3+4+5=", "9=", "7+7+7+7=", "2+2=", "8+1+1+1+1+1="]
SAMPLINGS = [Sampling(temperature=1.0, max_new_tokens=24, logprobs=True),
             Sampling(temperature=0.7, max_new_tokens=24, logprobs=True),
             Sampling(temperature=1.0, top_p=0.9, max_new_tokens=24, logprobs=True),
             Sampling(temperature=0, max_new_tokens=24, logprobs=True)]


@pytest.mark.parametrize("fast_step", [True, False], ids=["qwen2-step", "module"])
@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["t1", "t0.7", "top-p", "greedy"])
def test_decode_loop_gives_the_previous_loops_tokens_and_log_probs(monkeypatch, sampling, fast_step):
    """The loop now (finished rows kept as padding until COMPACT_AT of the batch, Qwen2Step) against the
    loop before it (tests/decode_reference.py): the same tokens for the same seed, log-probs to float rounding."""
    from tests.decode_reference import reference_generate
    from workbench.rollout import hf
    from workbench.rollout.qwen2_step import Qwen2Step

    tok = build_char_tokenizer()
    model = build_micro_model("micro-0.5m", tok, seed=4).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight[tok.eos_token_id] *= 4
    assert Qwen2Step.build(model, 64) is not None  # a hook-free micro model takes the fast path when asked
    monkeypatch.setattr(hf, "FAST_STEP", fast_step)
    torch.manual_seed(9)
    before = reference_generate(model, tok, VARIED, 6, sampling)
    assert len({len(r) for r in before.response_ids}) > 2
    assert "stop" in before.finish_reasons and "length" in before.finish_reasons
    for at in (0.0, hf.COMPACT_AT, 1.0):  # 0: a row leaves the batch at once; 1.0: never
        monkeypatch.setattr(hf, "COMPACT_AT", at)
        torch.manual_seed(9)
        now = HFBackend(model, tok).generate(VARIED, 6, sampling)
        assert now.response_ids == before.response_ids and now.finish_reasons == before.finish_reasons, at
        assert now.exact_logp == before.exact_logp
        diff = max(abs(a - b) for ra, rb in zip(now.sampling_logp, before.sampling_logp) for a, b in zip(ra, rb))
        assert diff < LOGP_TOL, (at, diff)
        if at == hf.COMPACT_AT:  # and the same seed gives the same rollout
            torch.manual_seed(9)
            again = HFBackend(model, tok).generate(VARIED, 6, sampling)
            assert again.response_ids == now.response_ids and again.sampling_logp == now.sampling_logp


def test_qwen2_step_is_the_modules_decode_step_to_float_rounding():
    """Grouped-query attention, left padding, untied lm_head: Qwen2Step's logits are the module's."""
    from transformers import DynamicCache, Qwen2Config, Qwen2ForCausalLM

    from workbench.rollout.qwen2_step import Qwen2Step

    config = Qwen2Config(vocab_size=40, hidden_size=64, num_hidden_layers=2, intermediate_size=96,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config).eval()
    step = Qwen2Step.build(model, 32)
    assert step is not None
    g = torch.Generator().manual_seed(1)
    width, n_steps = 6, 5
    attention = torch.ones(3, width + n_steps, dtype=torch.long)
    attention[0, :3] = 0  # rows 0 and 1 are left-padded
    attention[1, :1] = 0
    ids = torch.randint(1, 40, (3, width), generator=g)
    positions = (attention[:, :width].cumsum(1) - 1).clamp(min=0)
    caches = [DynamicCache(config=config), DynamicCache(config=config)]
    with torch.no_grad():
        for c in caches:
            model(input_ids=ids, attention_mask=attention[:, :width], position_ids=positions, cache=c, use_cache=True)
        pos = positions[:, -1]
        for t in range(1, n_steps + 1):
            pos = pos + 1
            nxt = torch.randint(1, 40, (3,), generator=g)
            ref = model(input_ids=nxt[:, None], attention_mask=attention[:, :width + t], position_ids=pos[:, None],
                        cache=caches[0], use_cache=True, logits_to_keep=1).logits[:, -1]
            got = step(nxt, pos, caches[1], attention[:, None, None, :width + t].bool())
            assert (got - ref).abs().max() < 1e-5
    hooked = build_micro_model("micro-0.5m", build_char_tokenizer(), seed=0)
    hooked.model.layers[0].register_forward_hook(lambda *a: None)
    assert Qwen2Step.build(hooked.eval(), 32) is None  # whatever hooks the model expects its forward to run
    assert Qwen2Step.build(model.train(), 32) is None
