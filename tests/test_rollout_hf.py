"""The HF backend's own decode loop against transformers' generate.

Run: pytest tests/test_rollout_hf.py
"""

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
