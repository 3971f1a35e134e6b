"""Padding must not change log-probs: the packed batch equals one sequence at a time.

Run: pytest tests/test_batching.py
"""

import torch

from workbench.train.batching import pack, response_logp, response_logp_chunked, trim
from workbench.models.policy import build_char_tokenizer, build_micro_model


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


def _ragged_batch(tok, seed=0, rows=24):
    g = torch.Generator().manual_seed(seed)
    prompts, responses = [], []
    for _ in range(rows):
        p_len = int(torch.randint(2, 9, (1,), generator=g))
        r_len = int(torch.randint(1, 30, (1,), generator=g))
        prompts.append(torch.randint(5, len(tok), (p_len,), generator=g).tolist())
        responses.append(torch.randint(5, len(tok), (r_len,), generator=g).tolist())
    return pack(prompts, responses, tok.pad_token_id, torch.device("cpu"))


def test_compact_forward_equals_the_padded_one():
    tok = build_char_tokenizer()
    model = build_micro_model("micro-0.5m", tok, seed=0).eval()
    batch = _ragged_batch(tok)
    with torch.no_grad():
        for idx in (torch.arange(24), torch.tensor([3, 7, 11]), torch.tensor([5])):
            mb = batch.select(idx)
            padded, ent_p = response_logp(model, mb, 0.9, with_entropy=True, layout="padded")
            for layout in ("packed", "trimmed", "auto"):
                compact, ent_c = response_logp(model, mb, 0.9, with_entropy=True, layout=layout)
                assert compact.shape == padded.shape
                assert torch.allclose(compact, padded, atol=1e-6, rtol=0), (layout, idx, (compact - padded).abs().max())
                m = mb.mask.bool()
                assert torch.allclose(ent_c[m], ent_p[m], atol=1e-6, rtol=0), layout
                assert torch.all(compact[~m] == 0)
        whole = response_logp_chunked(model, batch, 0.9, chunk=5)
        padded, _ = response_logp(model, batch, 0.9, layout="padded")
    assert torch.allclose(whole, padded, atol=1e-6, rtol=0), (whole - padded).abs().max()


def test_trim_cuts_only_all_padding_columns():
    tok = build_char_tokenizer()
    batch = _ragged_batch(tok, seed=1)
    mb = batch.select(torch.tensor([0, 1]))
    t = trim(mb)
    longest_prompt = int(mb.attention_mask[:, :mb.prompt_width].sum(1).max())
    assert t.prompt_width == longest_prompt
    assert t.response_ids.shape[1] == int(mb.mask.sum(1).max())
    assert t.mask.sum() == mb.mask.sum() and t.attention_mask.sum() == mb.attention_mask.sum()


def test_packed_gradients_equal_the_padded_ones():
    tok = build_char_tokenizer()
    batch = _ragged_batch(tok, seed=2, rows=8)
    grads = []
    for layout in ("padded", "packed"):
        model = build_micro_model("micro-0.5m", tok, seed=0)
        logp, _ = response_logp(model, batch, 1.0, layout=layout)
        (logp.sum() / batch.mask.sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5), n
