"""Rollout decoding against the matmul bound: the decode loop before and after issue 22, alternated.

    python benchmarks/decode.py                               # micro-3m, 16 prompts x 8, 32 new tokens, 3 pairs
    python benchmarks/decode.py --pairs 5 --threads 2 --model micro-15m
    python benchmarks/decode.py --kinds module step --compact-at 0 0.25 0.5   # one arm per kind and threshold
    python benchmarks/decode.py --profile                     # cProfile of the current loop, top functions

Arms, each one rollout batch of 16 prompts x 8 samples with the trainer's sampling (temperature 1,
full distribution, log-probs from the loop): "before", the loop as it was (`tests/decode_reference.py`:
transformers' `DynamicCache` grown by concatenation, a finished row dropped from the batch and the
cache at the step it ends), and one arm per kind and compaction threshold `KIND@AT` of the HF
backend now: finished rows decoded as padding until the share AT of the batch has ended, and the
one-token steps through the model's forward (kind "module") or `Qwen2Step` ("step", the default
for a micro model). The pre-allocated KV cache measured against these is in commit 6b832d2
(`--kinds after fast dynamic dynamic+fast` there). The bound, measured in every
pair on the same model: one no-gradient forward over 128 x `--new-tokens` positions at once, in
positions per second (all rows' matmuls at once, no cache, no sampling).

The model is freshly initialised: it samples nearly uniformly from its 36 tokens, <eos> among
them, so responses end by themselves at a mean length of ~17 of 32, at different steps. The arms
decode the same tokens (a draw can flip on a float-rounding near-tie; the pair line says so).

Pairs rotate the order of the arms, the load average is printed with each pair, tokens/s are given
per wall second and (in brackets) per CPU second of this process (less sensitive to other jobs
taking the cores; with more than one thread CPU seconds add up across threads), and ratios are
taken from the medians of this one invocation: on a shared machine only figures from the same
run compare.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.decode_reference import reference_generate  # noqa: E402 - the replaced loop lives only in the tests
from workbench.models.policy import build_char_tokenizer, build_micro_model  # noqa: E402
from workbench.rollout import hf  # noqa: E402
from workbench.rollout.base import Sampling  # noqa: E402

PROMPTS = [f"{i % 9 + 1}+{i % 7 + 2}+{i % 5}=" for i in range(16)]


def _model(name: str, tok):
    return build_micro_model(name, tok, seed=0).eval()


def _decode(arm: str, model, tok, sampling: Sampling, seed: int):
    """Wall seconds, CPU seconds of this process, and the rollouts of one arm."""
    torch.manual_seed(seed)
    t, c = time.perf_counter(), time.process_time()
    if arm == "before":
        ro = reference_generate(model, tok, PROMPTS, 8, sampling)
    else:
        kind, at = arm.split("@")
        hf.COMPACT_AT = float(at)
        hf.FAST_STEP = kind == "step"
        ro = hf.HFBackend(model, tok).generate(PROMPTS, 8, sampling)
    return time.perf_counter() - t, time.process_time() - c, ro


def _bound(model, tok, new_tokens: int) -> tuple[float, float]:
    """Positions per wall second and per CPU second of one forward over all positions at once."""
    ids = torch.randint(5, len(tok), (8 * len(PROMPTS), new_tokens), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t, c = time.perf_counter(), time.process_time()
        model(input_ids=ids, use_cache=False)
        return ids.numel() / (time.perf_counter() - t), ids.numel() / (time.process_time() - c)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="micro-3m")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compact-at", type=float, nargs="+", default=[hf.COMPACT_AT],
                    help="shares of ended rows at which the batch is compacted, one arm per kind each")
    ap.add_argument("--kinds", nargs="+", default=["step"], choices=["module", "step"],
                    help="one-token steps through the model's forward (module) or Qwen2Step (step)")
    ap.add_argument("--profile", action="store_true", help="cProfile 5 rollouts of the current loop instead")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok = build_char_tokenizer()
    model = _model(args.model, tok)
    sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=args.new_tokens, logprobs=True)
    now = f"step@{hf.COMPACT_AT}"
    if args.profile:
        _decode(now, model, tok, sampling, 0)
        prof = cProfile.Profile()
        prof.enable()
        for i in range(5):
            _decode(now, model, tok, sampling, i)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return
    arms = ["before"] + [f"{kind}@{c:g}" for kind in args.kinds for c in args.compact_at]
    print(f"{args.model}, {8 * len(PROMPTS)} responses of up to {args.new_tokens} tokens, {args.threads} thread(s); "
          f"arms {', '.join(arms)}; bound: one forward over {8 * len(PROMPTS)} x {args.new_tokens} positions; "
          "tok/s per wall second (per CPU second of this process)")
    wall: dict[str, list[float]] = {a: [] for a in arms + ["bound"]}
    cpu: dict[str, list[float]] = {a: [] for a in arms + ["bound"]}
    for i in range(args.pairs + 1):  # pair 0 warms up and is not counted
        order = arms[i % len(arms):] + arms[:i % len(arms)]  # rotated: each arm in each place in turn
        load = os.getloadavg()[0]
        outs, line = {}, []
        for arm in order:
            s, c, ro = _decode(arm, model, tok, sampling, seed=i)
            outs[arm] = ro
            real = sum(len(r) for r in ro.response_ids)
            if i:
                wall[arm].append(real / s)
                cpu[arm].append(real / c)
            line.append(f"{arm} {s:.3f} s {real / s:.0f} ({real / c:.0f})")
        first = outs[arms[0]]
        for arm in arms[1:]:  # float rounding may flip a near-tie draw; then the rows after it differ
            differ = sum(a != b for a, b in zip(outs[arm].response_ids, first.response_ids))
            if differ:
                line.append(f"({arm}: {differ} responses differ from {arms[0]})")
        b_wall, b_cpu = _bound(model, tok, args.new_tokens)
        if i:
            wall["bound"].append(b_wall)
            cpu["bound"].append(b_cpu)
            lens = [len(r) for r in first.response_ids]
            print(f"pair {i} (load avg {load:.2f} -> {os.getloadavg()[0]:.2f}; {sum(lens)} real tokens, mean length "
                  f"{statistics.mean(lens):.1f}): " + "  ".join(line) + f"  bound {b_wall:.0f} ({b_cpu:.0f})",
                  flush=True)
    for label, res in (("wall", wall), ("CPU", cpu)):
        med = {a: statistics.median(v) for a, v in res.items()}
        print(f"medians per {label} second: " + ", ".join(f"{a} {med[a]:.0f}" for a in arms)
              + f" real tokens/s; bound {med['bound']:.0f} positions/s")
        for a in arms:
            print(f"  {a:12s} {med[a] / med['bound']:6.1%} of the bound"
                  + ("" if a == "before" else f", {med[a] / med['before']:.2f}x before"))

if __name__ == "__main__":
    main()
