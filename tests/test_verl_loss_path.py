"""verl's real policy-loss path on CPU, against the local trainer's, on one tiny Qwen2 (verl's environment).

The loss verl's actor worker binds is `verl.workers.utils.losses.ppo_loss` (engine_workers:
`partial(ppo_loss, config=actor_config)`). Here it runs as the worker runs it: the batch is
turned into verl's no-padding layout by verl's `left_right_2_no_padding`, the model runs once on
the packed sequences (the remove-padding forward), log-probs and entropies come from verl's
`logprobs_from_logits` and `entropy_from_logits`, and the actor config is the one verl's Hydra
builds from `dispo-wb train --engine verl`'s overrides (`policy_loss.loss_mode=wb_<objective>`,
bounds, `loss_agg_mode`). The local trainer's path on the same weights and batch: padded
forward (`workbench.train.batching.response_logp`), the objective, `aggregate` with the
objective's aggregation. The weights are float64, but the local trainer takes log-probs from
float32 logits (`response_logp`'s `.float()`), so the two agree to float32 rounding: loss within
1e-5 and every parameter's gradient within 1e-4, both relative (the gradient to its largest
entry). A wrong bound moves them by orders of magnitude more (test_a_wrong_bound_is_seen).

Run: DISPO_REQUIRE_VERL=1 .venv-verl/bin/python -m pytest -m verl tests/test_verl_loss_path.py
"""

import importlib
import math
import os

import pytest
import torch

pytestmark = pytest.mark.verl

if os.environ.get("DISPO_REQUIRE_VERL") == "1":
    importlib.import_module("verl")
else:
    pytest.importorskip("verl", reason="verl is not installed here: make install-verl")

from tensordict import TensorDict  # noqa: E402
from verl.utils import tensordict_utils as tu  # noqa: E402
from verl.utils.torch_functional import entropy_from_logits, logprobs_from_logits  # noqa: E402
from verl.workers.utils.losses import ppo_loss  # noqa: E402
from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding  # noqa: E402

from workbench.config import build_run_config  # noqa: E402
from workbench.core.objectives import aggregate, get_spec  # noqa: E402
from workbench.engines.verl import checks  # noqa: E402
from workbench.engines.verl.launch import verl_overrides  # noqa: E402
from workbench.models.policy import build_char_tokenizer, build_micro_model  # noqa: E402
from workbench.names import REGIMES, regime_key  # noqa: E402
from workbench.train.batching import pack, response_logp  # noqa: E402

LOSS_RTOL, GRAD_RTOL = 1e-5, 1e-4
FOUR_BOUNDS = {"eps_pos_up": 0.1, "eps_pos_down": 0.4, "eps_neg_up": 0.05, "eps_neg_down": 0.15}
CASES = {
    "grpo": {}, "dr_grpo": {}, "dapo": {}, "cispo": {}, "gspo": {},
    "dispo (four different bounds)": {"name": "dispo", "params": FOUR_BOUNDS},
    "dispo (mask_mode)": {"name": "dispo", "params": {**FOUR_BOUNDS, "mask_mode": True}},
}


@pytest.fixture(scope="module")
def model_and_batch():
    tok = build_char_tokenizer()
    model = build_micro_model("micro-0.5m", tok, seed=0).double()
    g = torch.Generator().manual_seed(0)
    vocab = range(5, len(tok))  # past <pad>, <bos>, <eos>, <unk>, \boxed{
    prompts = [[tok.bos_token_id, *[vocab[int(i)] for i in torch.randint(len(vocab), (n,), generator=g)]]
               for n in (3, 5, 4, 6, 2, 5, 3, 4)]
    responses = [[vocab[int(i)] for i in torch.randint(len(vocab), (n,), generator=g)] for n in (7, 1, 9, 6, 9, 6, 2, 8)]
    batch = pack(prompts, responses, tok.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        logp, _ = response_logp(model, batch, 1.0, layout="padded")
    # Old log-probs spread the ratios over ~[0.5, 2] so that every bound binds somewhere.
    old = (logp + 0.4 * torch.randn(logp.shape, generator=g, dtype=torch.float64)) * batch.mask
    adv = torch.tensor([1.2, -0.7, 0.9, -1.5, 0.4, -0.3, 1.0, -0.8], dtype=torch.float64)
    return model, batch, old, adv


def actor_config(objective: dict):
    """verl's actor config as its Hydra builds it from our launcher's overrides."""
    cfg = build_run_config({"engine": "verl", "rollout_lag": 0, "objective": objective,
                            "rollout": {"prompts_per_step": 8, "group_size": 2}, "updates_per_rollout": 2})
    overrides = verl_overrides(cfg, model_path="/m", train_file="/t.parquet", val_file="/v.parquet", prompt_length=16)
    built = checks.check(checks.compose([*overrides, "trainer.n_gpus_per_node=1"]))
    return cfg, built["actor"]


def verl_path(model, batch, old, adv, config):
    """verl's worker path: no-padding layout, packed forward, verl's log-probs, `ppo_loss`; (loss, grads, entropy)."""
    model.zero_grad()
    P = batch.prompt_width
    data = TensorDict({"prompts": batch.input_ids[:, :P], "responses": batch.response_ids,
                       "input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                       "position_ids": batch.position_ids, "response_mask": batch.mask.long(),
                       "old_log_probs": old, "advantages": adv[:, None] * batch.mask}, batch_size=[len(batch)])
    data = left_right_2_no_padding(data)
    ids, pos = data["input_ids"], data["position_ids"]
    logits = model(input_ids=ids.values()[None], position_ids=pos.values()[None], use_cache=False).logits[0]
    log_probs = logprobs_from_logits(logits, torch.roll(ids.values(), -1), inplace_backward=False)
    entropy = entropy_from_logits(logits)
    offsets = ids.offsets()
    output = {"log_probs": torch.nested.nested_tensor_from_jagged(log_probs, offsets),
              "entropy": torch.nested.nested_tensor_from_jagged(entropy, offsets)}
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=int(batch.mask.sum()), global_batch_size=None)
    loss, metrics = ppo_loss(config, output, data)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, \
        no_padding_2_padding(output["entropy"], data).detach()


def local_path(model, batch, old, adv, cfg):
    """The local trainer's: padded forward, the objective, its aggregation; (loss, grads, entropy, metrics)."""
    model.zero_grad()
    spec = get_spec(cfg.objective.name)
    logp, ent = response_logp(model, batch, 1.0, with_entropy=True, layout="padded")
    per_token, metrics = spec.fn(logp, old, adv, batch.mask, cfg.objective.build_params(), entropy=ent)
    loss = aggregate(per_token, batch.mask, cfg.objective.aggregation or spec.aggregation)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, ent, metrics


def loss_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return abs(float(a) - float(b)) / max(abs(float(b)), 1e-12)


def max_grad_gap(a: dict, b: dict) -> float:
    scale = max(float(g.abs().max()) for g in b.values())
    return max(float((a[n] - b[n]).abs().max()) for n in b) / scale


@pytest.mark.parametrize("case", CASES)
def test_verls_loss_path_equals_the_local_trainers(model_and_batch, case):
    model, batch, old, adv = model_and_batch
    cfg, config = actor_config(CASES[case] or {"name": case})
    assert config.policy_loss.loss_mode == f"wb_{cfg.objective.name}"
    v_loss, v_grads, v_ent = verl_path(model, batch, old, adv, config)
    l_loss, l_grads, l_ent, metrics = local_path(model, batch, old, adv, cfg)
    assert loss_gap(v_loss, l_loss) <= LOSS_RTOL, (float(v_loss), float(l_loss))
    assert max_grad_gap(v_grads, l_grads) <= GRAD_RTOL, max_grad_gap(v_grads, l_grads)
    assert torch.allclose(v_ent * batch.mask, l_ent.double() * batch.mask, atol=1e-5)
    if cfg.objective.name == "dispo":  # the batch makes every one of the four bounds act
        assert all(metrics[regime_key(r, "clip_frac")] > 0 for r in REGIMES), {r: metrics[regime_key(r, "clip_frac")] for r in REGIMES}


def test_a_wrong_bound_is_seen(model_and_batch):
    model, batch, old, adv = model_and_batch
    _, config = actor_config({"name": "dispo", "params": FOUR_BOUNDS})
    wrong = build_run_config({"objective": {"name": "dispo", "params": {**FOUR_BOUNDS, "eps_neg_up": 0.3}}})
    v_loss, v_grads, _ = verl_path(model, batch, old, adv, config)
    l_loss, l_grads, _, _ = local_path(model, batch, old, adv, wrong)
    assert loss_gap(v_loss, l_loss) > 100 * LOSS_RTOL and max_grad_gap(v_grads, l_grads) > 100 * GRAD_RTOL
    assert math.isfinite(float(v_loss))
