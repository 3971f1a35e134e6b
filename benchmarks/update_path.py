"""The trainer's update phase before and after issue 15, on one synthetic rollout batch.

    python benchmarks/update_path.py                      # micro-3m, 128 responses, 3 pairs, 1 thread
    python benchmarks/update_path.py --model micro-15m --pairs 5 --threads 2
    python benchmarks/update_path.py --generate           # rollout decoding: own loop vs transformers' generate

One rollout batch (16 prompts x 8 responses, prompts 5-12 tokens, responses 6-32 tokens with
mean ~19, as the default run's) goes through what a training step does after generation:
the no-gradient old_logp pass, then 16 minibatches of 8 with forward, entropy, the DISPO
loss, backward, gradient clipping and AdamW. Arm "padded": every forward padded to the batch
maximum, old_logp in row order, AdamW's per-tensor loop (the code before issue 15). Arm
"compact": forwards cut to their rows' columns, old_logp in chunks sorted by length, fused
AdamW (the code now). Pairs alternate the order; the load average is printed with each.
`--generate` instead times sampling 128 responses of up to 32 tokens with the HF backend's
decode loop against `generate`, on a model whose <eos> is forced with probability 1/19 per
token (an untrained model never ends; a trained one ends at mean ~19), and the bound both are
measured against: one no-gradient forward over 128 x 32 positions at once, in tokens/s.
Also prints the weight snapshots a run holds at lags 16-128 with one state per optimizer
step against the SnapshotRing, in MB (counted, not timed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from workbench.train.batching import pack, response_logp, response_logp_chunked
from workbench.config import ObjectiveConfig
from workbench.models.policy import build_char_tokenizer, build_micro_model
from workbench.core.objectives import aggregate, get_spec
from workbench.train.snapshots import SnapshotRing


def _batch(tok, g: torch.Generator):
    prompts, responses = [], []
    for _ in range(128):
        p = int(torch.randint(5, 13, (1,), generator=g))
        r = int(torch.randint(6, 33, (1,), generator=g))
        prompts.append(torch.randint(5, len(tok), (p,), generator=g).tolist())
        responses.append(torch.randint(5, len(tok), (r,), generator=g).tolist())
    return pack(prompts, responses, tok.pad_token_id, torch.device("cpu"))


def _old_logp(model, batch, compact: bool) -> torch.Tensor:
    with torch.no_grad():
        if compact:
            return response_logp_chunked(model, batch, 1.0)
        return torch.cat([response_logp(model, batch.select(torch.arange(i, min(i + 64, len(batch)))), 1.0,
                                        layout="padded")[0] for i in range(0, len(batch), 64)])


def _step(model, batch, compact: bool, seed: int) -> tuple[float, float]:
    """Seconds of the old_logp pass and of the 16 updates."""
    opt = torch.optim.AdamW(model.parameters(), lr=5e-6, **({"fused": True} if compact else {}))
    spec = get_spec("dispo")
    params = ObjectiveConfig(name="dispo").build_params()
    adv = torch.randn(len(batch), generator=torch.Generator().manual_seed(seed))
    t0 = time.perf_counter()
    old = _old_logp(model, batch, compact)
    t1 = time.perf_counter()
    order = torch.randperm(len(batch), generator=torch.Generator().manual_seed(seed))
    for idx in torch.tensor_split(order, 16):
        opt.zero_grad(set_to_none=True)
        mb = batch.select(idx)
        logp, ent = response_logp(model, mb, 1.0, with_entropy=True, layout="auto" if compact else "padded")
        per_token, _ = spec.fn(logp, old[idx], adv[idx], mb.mask, params, entropy=ent)
        aggregate(per_token, mb.mask, mode=spec.aggregation).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return t1 - t0, time.perf_counter() - t1


def _snapshot_mb(model, lag: int = 64, stride: int = 16, steps: int = 160) -> tuple[float, float]:
    per_state = sum(v.numel() * v.element_size() for v in model.state_dict().values()) / 2 ** 20
    ring = SnapshotRing(lag, stride)
    most = 0
    for c in range(steps + 1):
        ring.record(c, model)
        most = max(most, len(ring))
    return (lag + 1) * per_state, most * per_state


def _generate_ab(args, tok) -> None:
    from workbench.rollout.base import Sampling
    from workbench.rollout.hf import HFBackend

    model = build_micro_model(args.model, tok, seed=0).eval()
    ends = torch.Generator().manual_seed(0)

    def end_some(module, a, out):  # <eos> with probability 1/19 at each sampled position
        hit = torch.rand(out.logits.shape[0], generator=ends) < 1 / 19
        out.logits[hit, -1, tok.eos_token_id] = 1e4
        return out

    model.register_forward_hook(end_some)
    prompts = [f"{i % 9 + 1}+{i % 7 + 2}+{i % 5}=" for i in range(16)]
    ids = torch.randint(5, len(tok), (128, 32))

    def forward_bound() -> float:
        with torch.no_grad():
            t = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            return ids.numel() / (time.perf_counter() - t)

    res: dict[str, list[float]] = {"loop": [], "generate": [], "bound": []}
    for i in range(args.pairs + 1):
        order = ["generate", "loop"] if i % 2 == 0 else ["loop", "generate"]
        load = os.getloadavg()[0]
        line = []
        for arm in order:
            backend = HFBackend(model, tok, decode=arm)
            torch.manual_seed(i)
            t = time.perf_counter()
            ro = backend.generate(prompts, 8, Sampling(temperature=1.0, max_new_tokens=32))
            s = time.perf_counter() - t
            real = sum(len(r) for r in ro.response_ids)
            if i:
                res[arm].append(real / s)
                line.append(f"{arm} {s:.2f} s, {real} tokens, {real / s:.0f} tok/s")
        bound = forward_bound()
        if i:
            res["bound"].append(bound)
            print(f"pair {i} (load avg {load:.2f}): " + "  ".join(line) + f"  forward bound {bound:.0f} tok/s")
    med = {a: statistics.median(v) for a, v in res.items()}
    bound = med["bound"]
    print(f"medians real tokens/s: loop {med['loop']:.0f}, generate {med['generate']:.0f}, "
          f"ratio {med['loop'] / med['generate']:.2f}x; forward bound {bound:.0f} tokens/s "
          f"(loop at {med['loop'] / bound:.0%} of it, generate at {med['generate'] / bound:.0%})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="micro-3m")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--generate", action="store_true", help="time rollout decoding instead of the update phase")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok = build_char_tokenizer()
    if args.generate:
        return _generate_ab(args, tok)
    batch = _batch(tok, torch.Generator().manual_seed(0))
    real = int(batch.mask.sum())
    print(f"{args.model}, {len(batch)} responses, {real} response tokens in a {tuple(batch.mask.shape)} batch "
          f"({1 - real / batch.mask.numel():.0%} padding), {args.threads} thread(s)")
    times: dict[str, list[tuple[float, float]]] = {"padded": [], "compact": []}
    for i in range(args.pairs + 1):  # pair 0 warms up and is not counted
        order = ["padded", "compact"] if i % 2 == 0 else ["compact", "padded"]
        load = os.getloadavg()[0]
        for arm in order:
            model = build_micro_model(args.model, tok, seed=0).train()
            t = _step(model, batch, arm == "compact", seed=i)
            if i:
                times[arm].append(t)
        if i:
            print(f"pair {i} (load avg {load:.2f}): " + "  ".join(
                f"{a} old_logp {times[a][-1][0]:.2f} s update {times[a][-1][1]:.2f} s" for a in ("padded", "compact")))
    med = {a: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v)) for a, v in times.items()}
    print("medians: " + "  ".join(f"{a} old_logp {m[0]:.2f} s update {m[1]:.2f} s" for a, m in med.items()))
    print(f"ratio compact / padded: old_logp {med['compact'][0] / med['padded'][0]:.2f}x, "
          f"update {med['compact'][1] / med['padded'][1]:.2f}x")
    model = build_micro_model(args.model, tok, seed=0)
    for lag in (16, 32, 64, 128):
        full, ring = _snapshot_mb(model, lag=lag, steps=4 * lag)
        print(f"snapshots held at lag {lag:>3}, 16 updates per rollout: one per step {full:6.0f} MB, ring {ring:5.0f} MB")


if __name__ == "__main__":
    main()
