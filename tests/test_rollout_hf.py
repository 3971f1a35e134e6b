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
