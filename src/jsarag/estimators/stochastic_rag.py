"""Stochastic RAG: expected-utility training with sampling without replacement (Zamani & Bendersky,
SIGIR 2024, arXiv 2405.02816).

Per example, over the prior's top K (p_r renormalised over them):

1. Draw m passages without replacement by Gumbel-top-k:  g_k ~ Gumbel(0, 1) i.i.d.,
   S = the m largest of  log p_r(h_k | x) + g_k  (S's first element is exactly a draw from p_r; the
   ordered set is a Plackett-Luce draw from p_r).
2. Hard weights z_k = 1[k in S]; soft weights a_k = the relaxed top-m of the same perturbed logits at
   temperature lambda: a = sum_{i=1..m} y_i, y_1 = softmax(l / lambda), l_{i+1} = l_i + log(1 - y_i).
   Straight-through weights w = z + a - SG[a]: value z, gradient that of a.
3. The generator reads each drawn passage (one per prompt):  L_k = -log p_g(y | x, h_k), k in S.
4. loss = (1/m) sum_{k in S} w_k L_k,   value  (1/m) sum_{k in S} L_k.

What gets gradient:
- the generator: (1/m) sum_{k in S} grad L_k (the drawn passages only, weight 1 each);
- the retriever: (1/m) sum_{k in S} SG[L_k] grad a_k, through the relaxation and the Gumbel-perturbed
  logits, at this draw's noise. That is the straight-through estimate: it is NOT the gradient of the
  expected loss E_S[(1/m) sum_{k in S} L_k] (that is sum_k L_k grad P(k in S), and it needs the L_k of
  passages that were not drawn, which are never scored: they enter as 0). It is biased, its bias
  depends on lambda, and since every L_k > 0 it lowers the soft weight of every drawn passage, the
  worse ones more (softmax coupling raises the rest). With m = 1 the forward loss is an unbiased
  estimate of E_{h ~ p_r}[-log p_g(y | x, h)].
Deterministic: no (the Gumbel noise comes from torch's global RNG).

Deviations from the paper:
1. The paper feeds the relaxed selection to the generator's input (a FiD-style reader); a decoder-only
   generator reading text here cannot take a soft passage, so the straight-through weight multiplies
   each drawn passage's loss instead (the gradient above).
2. The candidates are the prior's top K, not the whole corpus; the utility is the likelihood of y.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from jsarag.configtools import at_least, check_ranges, positive
from jsarag.data import Batch
from jsarag.estimators.base import Panel, Stateless, prior_top_k, score_picks


@dataclass
class StochasticRAGConfig:
    num_draws: int = 2                 # m passages drawn without replacement (at most top_k)
    relaxation_temperature: float = 1.0  # lambda of the soft top-m

    def validate(self) -> None:
        check_ranges(self, num_draws=at_least(1), relaxation_temperature=positive())


def gumbel_noise(shape: torch.Size, device=None) -> torch.Tensor:
    """Standard Gumbel draws, -log(-log U), U ~ Uniform(0, 1) from the global RNG (float64)."""
    u = torch.rand(shape, dtype=torch.float64, device=device).clamp(1e-300, 1.0 - 1e-16)
    return -torch.log(-torch.log(u))


def gumbel_top_k(perturbed: torch.Tensor, num: int) -> torch.Tensor:
    """The ``num`` largest perturbed logits: [B, K] -> [B, m] indices (a draw without replacement)."""
    return perturbed.detach().topk(num, dim=-1).indices


def relaxed_top_k(perturbed: torch.Tensor, num: int, temperature: float) -> torch.Tensor:
    """Soft top-m weights a (each in [0, 1], summing to m): [B, K] -> [B, K], differentiable."""
    logits, soft = perturbed, torch.zeros_like(perturbed)
    for _ in range(num):
        y = torch.softmax(logits / temperature, dim=-1)
        soft = soft + y
        logits = logits + torch.log1p(-y.clamp(max=1.0 - 1e-12))
    return soft


def straight_through_weights(log_prior: torch.Tensor, gumbel: torch.Tensor, num: int, temperature: float
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Drawn indices [B, m] and their straight-through weights [B, m] (value 1, gradient of a_k)."""
    perturbed = log_prior + gumbel.to(log_prior.dtype)
    picks = gumbel_top_k(perturbed, num)
    soft = relaxed_top_k(perturbed, num, temperature).gather(1, picks)
    return picks, 1.0 + soft - soft.detach()


def stochastic_rag_loss(weights: torch.Tensor, pick_loglik: torch.Tensor) -> torch.Tensor:
    """(1/m) sum_{k in S} w_k (-log p_g(y|x,h_k)): [B, m], [B, m] -> [B]."""
    return -(weights * pick_loglik).mean(-1)


class StochasticRAG(Stateless):
    name = "stochastic_rag"
    options = StochasticRAGConfig
    methods = {"stochastic_rag": {}}
    panels = (Panel("draws", "Stochastic RAG draws", {
        "drawn_prior_mass": "p_r mass of the drawn passages (how concentrated the draws are)"}),)
    trains = frozenset({"prior", "passage", "generator"})
    deterministic = False

    def __init__(self, cfg: StochasticRAGConfig | None = None, top_k: int = 10):
        self.cfg = cfg or StochasticRAGConfig()
        self.top_k = top_k

    def __call__(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        # 1. Retrieve the prior's top K and renormalise p_r over them (with gradient).
        rows, log_prior = prior_top_k(model.retriever, batch.queries, self.top_k)     # [B, K], [B, K]
        num = min(self.cfg.num_draws, log_prior.shape[-1])
        # 2. Draw m passages without replacement (Gumbel-top-k); straight-through weights for them.
        gumbel = gumbel_noise(log_prior.shape, log_prior.device)
        picks, weights = straight_through_weights(log_prior, gumbel, num, self.cfg.relaxation_temperature)
        # 3. The generator reads each drawn passage (with gradient).
        pick_loglik = score_picks(model, batch, rows, picks, "sum")                   # [B, m]
        # 4. The weighted loss: value = mean NLL of the drawn passages.
        loss = stochastic_rag_loss(weights.to(pick_loglik.dtype), pick_loglik).mean()
        drawn_mass = log_prior.detach().exp().gather(1, picks).sum(-1)
        return loss, {"loss": loss.item(), "drawn_prior_mass": drawn_mass.mean().item(),
                      "prior_top1": log_prior.exp().max(-1).values.mean().item()}
