"""TRL's `GRPOTrainer` with the workbench's objectives as its loss and our regime metrics.

The per-token loss, its aggregation and the regime statistics all come from
`workbench.core.objectives` (the same functions the local trainer calls); TRL keeps generation,
rewards, advantages, batching, the optimizer and distribution.

Where this departs from TRL's own `_compute_loss`, and why:
- Only the overridden loss runs: no KL term (beta must be 0), no entropy bonus, no
  top-entropy mask, no off-policy sequence mask, no vLLM importance-sampling correction.
  Each would change the objective under ablation; a config asking for one is refused.
- A batch without old log-probs is an error, not `old = logp.detach()`: r == 1 would make
  every bound inert (TRL issues #3120, #3757).
- Loss per micro-batch is `aggregate(per_token_loss, mask, mode) / accumulation steps`, as
  TRL's grpo/bnpo losses are; DDP then averages ranks. For token_mean this is the mean of
  per-micro-batch token means, not one token mean over the whole minibatch.
- Regime metrics are computed over the union of all ranks' tokens: each micro-batch's
  log-probs, old log-probs, advantages, mask, entropy and logp coefficient (for the entropy
  push) are gathered (padded to one length) and the objective is evaluated on them once more
  without gradient. Their token sums go into one `RegimeAccumulator` per mode, divided once
  when TRL logs (once per rollout batch): the same token-weighted statistics over every
  micro-batch and rank as the local trainer's (workbench.core.regimes). `loss/policy` stays
  TRL's mean of the micro-batch losses.

`_compute_loss` is private TRL API: the `trl` extra pins the tested release.
"""

from __future__ import annotations

import torch
from trl import GRPOTrainer

from workbench.engines.trl.settings import computes_old_logps
from workbench.names import LOSS_POLICY
from workbench.core.objectives import aggregate, get_spec, objective_terms
from workbench.core.regimes import RegimeAccumulator, logp_coef


class MissingOldLogps(RuntimeError):
    pass


class WorkbenchGRPOTrainer(GRPOTrainer):
    """`GRPOTrainer` whose loss is the workbench objective `objective` with `params`."""

    def __init__(self, *args, objective: str, params=None, aggregation: str | None = None, **kwargs):
        self.wb_spec = get_spec(objective)
        self.wb_params = params if params is not None else self.wb_spec.default_params
        self.wb_aggregation = aggregation or self.wb_spec.aggregation
        super().__init__(*args, **kwargs)
        a = self.args
        unsupported = {"beta": a.beta != 0.0, "entropy_coef": bool(self._entropy_bonus_enabled),
                       "top_entropy_quantile": a.top_entropy_quantile < 1.0,
                       "off_policy_mask_threshold": a.off_policy_mask_threshold is not None,
                       "vllm_importance_sampling_correction": a.use_vllm and a.vllm_importance_sampling_correction}
        bad = [k for k, on in unsupported.items() if on]
        if bad:
            raise ValueError(f"WorkbenchGRPOTrainer: {', '.join(bad)} would change the objective; leave them at TRL's defaults")
        if not computes_old_logps(a.gradient_accumulation_steps, a.steps_per_generation, a.num_iterations):
            raise ValueError("WorkbenchGRPOTrainer: this batch layout makes TRL skip old log-probs (r == 1, no bound "
                             "can act; TRL issues #3120, #3757); use more than one optimizer step per generation batch")

    # --- the loss ---------------------------------------------------------------------------

    def _compute_loss(self, model, inputs):
        logp, old_logp, adv, mask, entropy = self._policy_terms(model, inputs)
        loss = self._objective_loss(logp, old_logp, adv, mask, entropy)
        mode = "train" if self.model.training else "eval"
        return loss / (self.current_gradient_accumulation_steps if mode == "train" else 1.0)

    def _policy_terms(self, model, inputs):
        """(logp, old_logp, advantages, mask, entropy) of one micro-batch, (B, T) each, advantages (B,)."""
        old_logp = inputs.get("old_per_token_logps")
        if old_logp is None:
            raise MissingOldLogps("TRL passed no old log-probs for this batch: r would be 1 and no bound could act")
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        logp, entropy, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=True)
        return logp, old_logp, inputs["advantages"], completion_mask, entropy

    def _objective_loss(self, logp, old_logp, adv, mask, entropy) -> torch.Tensor:
        """The objective's aggregated loss of this micro-batch; records the all-rank regime sums."""
        per_token, _ = self.wb_spec.fn(logp, old_logp, adv, mask, self.wb_params, entropy=entropy)
        loss = aggregate(per_token, mask, self.wb_aggregation)
        self._record_metrics(logp, old_logp, adv, mask, entropy, logp_coef(per_token, logp))
        return loss

    # --- metrics ----------------------------------------------------------------------------

    @torch.no_grad()
    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        if x.dim() == 2:
            x = self.accelerator.pad_across_processes(x, dim=1, pad_index=0)
        return self.accelerator.gather(x)

    @torch.no_grad()
    def all_rank_metrics(self, logp, old_logp, adv, mask, entropy, coef=None) -> dict[str, float]:
        """Regime sums of the micro-batch over every rank's tokens into this mode's accumulator;
        returns the micro-batch's own statistics (regime metrics, `entropy/mean`, `loss/policy`)."""
        g = [self._gather(t) for t in (logp, old_logp, adv, mask.to(logp.dtype), entropy)]
        gc = self._gather(coef) if coef is not None else None
        per_token, terms, adv_bt = objective_terms(self.wb_spec.name, g[0], g[1], g[2], g[3], self.wb_params)
        args = (terms.ratio, terms.weight, terms.clipped, adv_bt, g[3], g[4], None if gc is None else g[0], gc)
        self._wb_accumulator(self._mode()).add(*args)
        piece = RegimeAccumulator()
        piece.add(*args)
        metrics = piece.result()
        metrics[LOSS_POLICY] = aggregate(per_token, g[3], self.wb_aggregation).item()
        self.wb_last_metrics = metrics  # the workbench.engines.trl.check recorder compares these
        return metrics

    def _mode(self) -> str:
        return "train" if self.model.training else "eval"

    def _wb_accumulator(self, mode: str) -> RegimeAccumulator:
        accs = self.__dict__.setdefault("_wb_accumulators", {})
        return accs.setdefault(mode, RegimeAccumulator())

    def _record_metrics(self, logp, old_logp, adv, mask, entropy, coef=None) -> None:
        self._metrics[self._mode()][LOSS_POLICY].append(self.all_rank_metrics(logp, old_logp, adv, mask, entropy, coef)[LOSS_POLICY])

    def step_metrics(self, mode: str) -> dict[str, float]:
        """The accumulated regime statistics of `mode` since the last log, and a fresh accumulator."""
        acc = self.__dict__.setdefault("_wb_accumulators", {}).pop(mode, None)
        return acc.result() if acc is not None else {}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # TRL averages each list in self._metrics; one value per key gives our step-wide figure.
        mode = self._mode()
        for key, value in self.step_metrics(mode).items():
            self._metrics[mode][key] = [value]
        super().log(logs, start_time)
