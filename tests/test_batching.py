"""Padding must not change log-probs: the packed batch equals one sequence at a time.

Run: pytest tests/test_batching.py
"""

import torch

from workbench.batching import pack, response_logp, response_logp_chunked
from workbench.models import build_char_tokenizer, build_micro_model


def _single_logp(model, prompt, response, temperature):
    ids = torch.tensor([prompt + response])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1: len(prompt) + len(response) - 1] / temperature
    return torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


def test_packed_logp_matches_unpadded_sequences():
    tok = build_char_tokenizer()
    model = build_micro_model("micro-0.5m", tok, seed=0).eval()
    prompts = [tok(p)["input_ids"] for p in ["1+2=", "3+4+5=", "9="]]
    responses = [tok(r, add_special_tokens=False)["input_ids"] for r in ["1+2=3;", "3+4=7;7+5=12;", ""]]
    responses[2] = [tok.eos_token_id]
    batch = pack(prompts, responses, tok.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        logp, ent = response_logp(model, batch, temperature=0.7, with_entropy=True)
        chunked = response_logp_chunked(model, batch, temperature=0.7, chunk=2)
    assert torch.allclose(logp, chunked, atol=1e-5)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        want = _single_logp(model, p, r, 0.7)
        assert torch.allclose(logp[i, :len(r)], want, atol=1e-4), i
        assert torch.all(logp[i, len(r):] == 0) and torch.all(batch.mask[i, len(r):] == 0)
    assert ent.shape == logp.shape and torch.all(ent[batch.mask.bool()] > 0)
