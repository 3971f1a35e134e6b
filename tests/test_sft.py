"""SFT warm start: band stopping, replay, greedy accuracy, on-disk cache.

Run: .venv/bin/python -m pytest tests/test_sft.py -q
"""

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from workbench.train import sft
from workbench.config import RunConfig
from workbench.models.policy import build_char_tokenizer, load_policy
from workbench.tasks import Problem, build_task

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path, **sft_fields) -> RunConfig:
    fields = {"max_steps": 4, "eval_every": 2, "batch_size": 8, "warmup_steps": 2, "cache_dir": str(tmp_path / "sft")}
    return RunConfig(
        seed=3,
        model={"name": "micro-0.5m", "device": "cpu"},
        task={"eval_size": 16, "max_terms": 3},
        sft={**fields, **sft_fields},
    )


def _same_weights(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_sft_batch_masks_prompt_and_padding():
    _, tok = load_policy(RunConfig().model.model_copy(update={"name": "micro-0.5m"}), seed=0)
    problems = [Problem("1+2=", "3", "1+2=3;\\boxed{3}"), Problem("1+2+3=", "6", "1+2=3;3+3=6;\\boxed{6}")]
    ids, mask, labels = sft.encode_sft_batch(tok, problems, torch.device("cpu"))
    assert ids.shape == mask.shape == labels.shape == (2, 1 + 6 + 15 + 1)  # <bos>, prompt, solution, <eos>
    first = labels[0][labels[0] != -100].tolist()
    assert tok.decode(first) == "1+2=3;\\boxed{3}<eos>"
    assert (labels[0][mask[0] == 0] == -100).all() and mask[0].sum() == 1 + 4 + 9 + 1
    assert (labels[1][: 1 + 6] == -100).all()


def test_greedy_accuracy_scores_boxed_exact_match(monkeypatch):
    model, tok = load_policy(RunConfig().model.model_copy(update={"name": "micro-0.5m"}), seed=0)
    problems = [Problem("1+2=", "3", ""), Problem("1+2+3=", "6", ""), Problem("4+4=", "8", "")]
    monkeypatch.setattr(sft, "greedy_responses", lambda m, t, prompts, n: ["1+2=3;\\boxed{3}", "\\boxed{7}", "4+4=8;"])
    assert sft.greedy_accuracy(model, tok, problems, 10) == pytest.approx(1 / 3)


def test_greedy_left_padding_matches_unpadded():
    model, tok = load_policy(RunConfig().model.model_copy(update={"name": "micro-0.5m"}), seed=1)
    prompts = ["1+2=", "11+22+3+4="]  # the short one gets left-padded in the batch
    batched = sft.greedy_responses(model, tok, prompts, max_new_tokens=12)
    alone = [sft.greedy_responses(model, tok, [p], max_new_tokens=12)[0] for p in prompts]
    assert batched == alone


def _scripted(monkeypatch, accuracy_at):
    """Replace training by a step counter and accuracy by a function of the step."""
    monkeypatch.setattr(sft._SFTRun, "train", lambda self, n: setattr(self, "step", self.step + n) or 0.0)
    monkeypatch.setattr(sft._SFTRun, "accuracy", lambda self: accuracy_at(self.step))


def _train(tmp_path, **sft_fields):
    cfg = _config(tmp_path, **sft_fields)
    model, tok = load_policy(cfg.model, cfg.seed)
    return sft.train_sft(model, tok, build_task(cfg.task), cfg, log=lambda s: None)


def test_stops_at_first_check_inside_band(monkeypatch, tmp_path):
    _scripted(monkeypatch, lambda step: step / 100)
    info = _train(tmp_path, eval_every=10, max_steps=1000)
    assert (info["steps"], info["accuracy"], info["in_band"]) == (30, 0.30, True)


def test_jump_over_band_replays_to_a_checkpoint_inside(monkeypatch, tmp_path):
    _scripted(monkeypatch, lambda step: 0.0 if step < 25 else 0.4 if step < 35 else 0.9)
    info = _train(tmp_path, eval_every=40, max_steps=1000)
    assert (info["steps"], info["accuracy"], info["in_band"]) == (30, 0.4, True)


def test_jump_with_no_inside_checkpoint_records_accuracy_reached(monkeypatch, tmp_path):
    _scripted(monkeypatch, lambda step: 0.0 if step < 35 else 0.9)
    info = _train(tmp_path, eval_every=40, max_steps=1000)
    assert (info["steps"], info["accuracy"], info["in_band"]) == (40, 0.9, False)
    info = _train(tmp_path, eval_every=40, max_steps=1000, replay_levels=8)
    assert (info["steps"], info["accuracy"], info["in_band"]) == (35, 0.9, False)  # the first step above


def test_a_replay_chunk_that_jumps_is_replayed_again_step_by_step(monkeypatch, tmp_path):
    # The shape the claims study's sampled warm start took: 0.240 at step 160, 0.338 at 165.
    rise = {161: 0.26, 162: 0.29, 163: 0.31, 164: 0.33}
    _scripted(monkeypatch, lambda step: 0.24 if step <= 160 else rise.get(step, 0.338))
    once = _train(tmp_path, eval_every=20, max_steps=1000, target_low=0.25, target_high=0.30)
    assert (once["steps"], once["accuracy"], once["in_band"]) == (165, 0.338, False)  # the default: one replay level
    info = _train(tmp_path, eval_every=20, max_steps=1000, target_low=0.25, target_high=0.30, replay_levels=2)
    assert (info["steps"], info["accuracy"], info["in_band"]) == (161, 0.26, True)


def test_gives_up_at_max_steps(monkeypatch, tmp_path):
    _scripted(monkeypatch, lambda step: 0.1)
    info = _train(tmp_path, eval_every=7, max_steps=20)
    assert (info["steps"], info["accuracy"], info["in_band"]) == (20, 0.1, False)


def test_replay_from_snapshot_retraces_training(tmp_path):
    """The replay relies on training being a pure function of the snapshot."""
    cfg = _config(tmp_path)
    task = build_task(cfg.task)
    model_a, tok = load_policy(cfg.model, cfg.seed)
    run_a = sft._SFTRun(model_a, tok, task, cfg)
    run_a.train(4)
    model_b, _ = load_policy(cfg.model, cfg.seed)
    run_b = sft._SFTRun(model_b, tok, task, cfg)
    run_b.train(2)
    snap = run_b.snapshot()
    run_b.train(3)
    run_b.restore(snap)
    run_b.train(2)
    assert run_b.step == 4 and _same_weights(model_a, model_b)
    model_c, _ = load_policy(cfg.model, cfg.seed)
    assert not _same_weights(model_a, model_c)  # training did change the weights


def test_second_call_loads_from_cache_fast(tmp_path, monkeypatch):
    cfg = _config(tmp_path)
    model, tok, info = sft.warm_start(cfg, log=lambda s: None)
    assert info["cached"] is False and info["steps"] == 4
    entry = Path(info["cache_dir"])
    saved = json.loads((entry / sft.INFO_FILE).read_text())
    assert set(saved) >= {"accuracy", "steps", "seconds"} and saved["steps"] == 4

    monkeypatch.setattr(sft, "train_sft", lambda *a, **k: pytest.fail("trained again instead of loading the cache"))
    start = time.perf_counter()
    model2, tok2, info2 = sft.warm_start(cfg, log=lambda s: None)
    assert time.perf_counter() - start < 1.0
    assert info2["cached"] is True and info2["accuracy"] == info["accuracy"]
    assert _same_weights(model, model2)
    assert tok2("1+2=")["input_ids"] == tok("1+2=")["input_ids"]


def test_cache_key_separates_what_shapes_the_warm_start(tmp_path):
    base = _config(tmp_path)
    keys = {
        sft.cache_key(base),
        sft.cache_key(base.model_copy(update={"seed": 4})),
        sft.cache_key(_config(tmp_path, lr=5e-4)),
        sft.cache_key(RunConfig.model_validate({**base.model_dump(), "task": {"eval_size": 16, "max_terms": 4}})),
        sft.cache_key(RunConfig.model_validate({**base.model_dump(), "model": {"name": "micro-3m"}})),
    }
    assert len(keys) == 5
    # where the cache lives and the RL settings do not change the warm start
    assert sft.cache_key(_config(tmp_path / "elsewhere")) == sft.cache_key(base)
    assert sft.cache_key(base.model_copy(update={"lr": 1e-5})) == sft.cache_key(base)


def test_failure_mid_write_leaves_no_usable_entry(tmp_path, monkeypatch):
    cfg = _config(tmp_path)
    seen = []

    def broken_save(self, directory, *a, **k):
        seen.append(sorted(p.name for p in Path(directory).iterdir()))  # the weights are already there
        raise OSError("disk full")

    monkeypatch.setattr(type(build_char_tokenizer()), "save_pretrained", broken_save)
    with pytest.raises(OSError, match="disk full"):
        sft.warm_start(cfg, log=lambda s: None)
    monkeypatch.undo()
    assert any(name.endswith(".safetensors") for name in seen[0])
    assert not sft.cache_path(cfg).exists()
    assert list((tmp_path / "sft").glob(".tmp-*")) == []
    _, _, info = sft.warm_start(cfg, log=lambda s: None)
    assert info["cached"] is False


def test_killed_build_leaves_no_entry_and_next_build_cleans_up(tmp_path):
    cfg = _config(tmp_path)
    script = textwrap.dedent(f"""
        import os, signal
        from workbench.train import sft
        from workbench.config import RunConfig
        def killed(final, model, tokenizer, info):
            tmp = final.parent / f".tmp-{{final.name}}-{{os.getpid()}}"
            model.save_pretrained(tmp)  # half an entry on disk, then the process dies
            os.kill(os.getpid(), signal.SIGKILL)
        sft._write_entry = killed
        sft.warm_start(RunConfig.model_validate_json({cfg.model_dump_json()!r}), log=lambda s: None)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert not sft.cache_path(cfg).exists()
    assert len(list((tmp_path / "sft").glob(".tmp-*"))) == 1
    _, _, info = sft.warm_start(cfg, log=lambda s: None)  # the dead builder's lock is gone
    assert info["cached"] is False
    assert list((tmp_path / "sft").glob(".tmp-*")) == []


def test_concurrent_builders_train_once(tmp_path, monkeypatch):
    cfg = _config(tmp_path)
    calls = []
    real = sft.train_sft

    def counted(*a, **k):
        calls.append(1)
        time.sleep(0.3)  # widen the window in which the other worker arrives
        return real(*a, **k)

    monkeypatch.setattr(sft, "train_sft", counted)
    results = []
    workers = [threading.Thread(target=lambda: results.append(sft.warm_start(cfg, log=lambda s: None))) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(calls) == 1
    assert sorted(r[2]["cached"] for r in results) == [False, True]
    assert _same_weights(results[0][0], results[1][0])


def test_rename_loser_keeps_the_winners_entry(tmp_path):
    cfg = _config(tmp_path)
    model, tok, info = sft.warm_start(cfg, log=lambda s: None)
    entry = sft.cache_path(cfg)
    before = (entry / sft.INFO_FILE).read_text()
    sft._write_entry(entry, model, tok, {"accuracy": -1.0})  # a late builder of the same key
    assert (entry / sft.INFO_FILE).read_text() == before
    assert list(entry.parent.glob(".tmp-*")) == []


def test_disabled_sft_skips_training(tmp_path, monkeypatch):
    monkeypatch.setattr(sft, "train_sft", lambda *a, **k: pytest.fail("should not train"))
    cfg = _config(tmp_path, enabled=False)
    _, _, info = sft.warm_start(cfg, log=lambda s: None)
    assert info == {"sft": False}
    assert not (tmp_path / "sft").exists()


def test_sampled_check_is_repeatable_and_leaves_the_torch_stream_alone():
    model, tok = load_policy(RunConfig().model.model_copy(update={"name": "micro-0.5m"}), seed=2)
    problems = [Problem(f"{a}+{b}=", str(a + b), "") for a in range(1, 4) for b in range(1, 4)]
    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)
    first = sft.sampled_accuracy(model, tok, problems, 12, k=4, temperature=1.0, seed=5)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's stream did not move
    assert sft.sampled_accuracy(model, tok, problems, 12, k=4, temperature=1.0, seed=5) == first


def test_sampled_check_scores_every_sample(monkeypatch):
    model, tok = load_policy(RunConfig().model.model_copy(update={"name": "micro-0.5m"}), seed=0)
    problems = [Problem("1+2=", "3", ""), Problem("4+4=", "8", "")]
    texts = ["\\boxed{3}", "\\boxed{4}", "\\boxed{3}", "\\boxed{3}", "\\boxed{8}", "", "8", "\\boxed{9}"]
    monkeypatch.setattr(tok, "batch_decode", lambda ids, skip_special_tokens: texts)
    assert sft.sampled_accuracy(model, tok, problems, 4, k=4, temperature=1.0, seed=0) == pytest.approx(4 / 8)


def test_run_uses_the_check_the_config_names(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(sft, "greedy_accuracy", lambda *a: calls.append("greedy") or 0.0)
    monkeypatch.setattr(sft, "sampled_accuracy", lambda *a: calls.append(("sampled", a[3:])) or 0.0)
    _train(tmp_path, eval_every=2, max_steps=2)
    info = _train(tmp_path, eval_every=2, max_steps=2, check="sampled", check_k=3, check_temperature=0.7)
    assert calls[0] == "greedy" and calls[1][0] == "sampled" and calls[1][1][1:] == (3, 0.7, 1234)
    assert info["check"] == "sampled"


def test_sampled_check_changes_the_cache_key_only_when_used(tmp_path):
    greedy = _config(tmp_path)
    assert sft.cache_key(greedy) == sft.cache_key(_config(tmp_path, check_k=9))  # greedy ignores sampled settings
    sampled = _config(tmp_path, check="sampled")
    assert sft.cache_key(sampled) != sft.cache_key(greedy)
    assert sft.cache_key(sampled) != sft.cache_key(_config(tmp_path, check="sampled", check_k=9))
    assert sft.cache_key(greedy) != sft.cache_key(_config(tmp_path, replay_levels=2))


def test_sft_seed_shares_one_warm_start_across_run_seeds(tmp_path):
    own = [RunConfig(seed=s, model={"name": "micro-0.5m"}, sft={"cache_dir": str(tmp_path)}) for s in (0, 1)]
    shared = [c.model_copy(update={"sft": c.sft.model_copy(update={"seed": 0})}) for c in own]
    assert sft.cache_key(own[0]) != sft.cache_key(own[1])
    assert sft.cache_key(shared[0]) == sft.cache_key(shared[1]) == sft.cache_key(own[0])  # seed None keys stay as they were
