"""VRAG: variational RAG, maximising the evidence lower bound (Mishra et al. 2022, arXiv 2112.00653).

    ELBO(x, y) = E_{q(h|x,y)}[ log p_g(y | x, h) ] - KL( q(.|x,y) || p_r(.|x) )  <=  log p(y | x)
    loss = -mean_b ELBO

q and p_r are both renormalised over a candidate set C: the posterior's top K (default) or the union
of the posterior's and the prior's top K. Two ways to take the expectation:

- ``exact``: the weighted sum over C,  sum_h q(h) log p_g(y|x,h). Deterministic; the posterior gets
  its gradient through the weights q(h); the generator scores all |C| passages with gradient.
- ``sampled``: S draws h_s ~ q. Generator term  (1/S) sum_s log p_g(y|x,h_s); posterior term by the
  score function,  (1/S) sum_s (log p_g(y|x,h_s) - b_s) grad log q(h_s), with b_s the mean of the
  other S-1 draws (leave-one-out baseline) or 0. This is the high-variance estimator.
  In both modes the KL over C is exact.

Deviations from the paper:
1. The paper's posterior and prior share nothing but the passage encoder, as here; its candidate set
   is the posterior's top K. The union is offered for comparison with JSA.
2. The sampled form scores only the distinct sampled passages (identical values, fewer passes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch.profiler import record_function

from jsarag.configtools import OutOfRange, at_least, check_ranges
from jsarag.data import Batch
from jsarag.estimators.base import (
    Panel,
    Stateless,
    candidate_union,
    count_states,
    kl_categorical,
    sample_candidates,
    score_selected,
    weighted_sum,
)


@dataclass
class VRAGConfig:
    mode: Literal["exact", "sampled"] = "exact"
    candidates: Literal["posterior", "union"] = "posterior"
    num_samples: int = 4
    baseline: Literal["leave_one_out", "none"] = "leave_one_out"

    def validate(self) -> None:
        check_ranges(self, num_samples=at_least(1))
        if self.mode == "sampled" and self.baseline == "leave_one_out" and self.num_samples < 2:
            raise OutOfRange("num_samples", self.num_samples, "at least 2 for the leave-one-out baseline")


def vrag_elbo_exact(log_post: torch.Tensor, log_prior: torch.Tensor, seq_loglik: torch.Tensor
                    ) -> torch.Tensor:
    """sum_k q_k log p_g(y|x,h_k) - KL(q || p_r): [B, K] x 3 -> [B]."""
    return weighted_sum(log_post.exp(), seq_loglik) - kl_categorical(log_post, log_prior)


def leave_one_out_baseline(sample_loglik: torch.Tensor) -> torch.Tensor:
    """b_s = mean of the other draws' log-likelihoods: [B, S] -> [B, S]."""
    S = sample_loglik.shape[-1]
    return (sample_loglik.sum(-1, keepdim=True) - sample_loglik) / (S - 1)


def vrag_surrogate_sampled(log_post_samples: torch.Tensor, sample_loglik: torch.Tensor,
                           baseline: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
    """Surrogate whose value is the sampled ELBO and whose gradient is the score-function estimator.

    [B, S] log q(h_s), [B, S] log p_g(y|x,h_s) (with gradient), [B, S] baseline, [B] KL -> [B].
    """
    advantage = (sample_loglik - baseline).detach()
    score_term = advantage * (log_post_samples - log_post_samples.detach())  # value 0, gradient SF
    return (sample_loglik + score_term).mean(-1) - kl


class VRAG(Stateless):
    name = "vrag"
    options = VRAGConfig
    methods = {"vrag_exact": {"mode": "exact"}, "vrag_sampled": {"mode": "sampled"}}
    panels = (Panel("losses", "VRAG's ELBO terms", {"kl": "KL(q || p_r) over the candidates",
                                                    "expected_loglik": "E_q[log p_g(y|x,h)], exact or sampled"}),)
    trains = frozenset({"prior", "posterior", "passage", "generator"})

    def __init__(self, cfg: VRAGConfig | None = None, top_k: int = 10):
        self.cfg = cfg or VRAGConfig()
        self.top_k = top_k

    @property
    def deterministic(self) -> bool:
        return self.cfg.mode == "exact"

    def __call__(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        retriever = model.retriever
        with record_function("vrag/candidates"):
            # 1. Candidate set: the posterior's top K (or its union with the prior's top K).
            prior_query = retriever.prior_vectors(batch.queries)                          # [B, d]
            post_query = retriever.posterior_vectors(batch.queries, batch.answers)        # [B, d]
            searched = [post_query, prior_query] if self.cfg.candidates == "union" else [post_query]
            row_sets = retriever.search_each(searched, self.top_k)                        # [B, K] each
            rows, mask = candidate_union(row_sets)                                        # [B, K']
            # 2. q and p_r renormalised over the candidates, and the exact KL between them.
            log_post = retriever.log_probs(post_query, rows, mask)                        # [B, K']
            log_prior = retriever.log_probs(prior_query, rows, mask)                      # [B, K']
            kl = kl_categorical(log_post, log_prior)                                      # [B]
        # 3. The expected generator log-likelihood, exactly or by sampling.
        with record_function(f"vrag/expectation_{self.cfg.mode}"):
            if self.cfg.mode == "exact":
                seq_loglik = score_selected(model, batch, rows, mask, "sum")              # [B, K']
                elbo = weighted_sum(log_post.exp(), seq_loglik) - kl
                expected = weighted_sum(log_post.exp().detach(), seq_loglik.detach())
            else:
                samples = sample_candidates(log_post, self.cfg.num_samples)               # [B, S]
                counts = count_states(samples, rows.shape[1])
                seq_loglik = score_selected(model, batch, rows, counts > 0, "sum")        # [B, K']
                sample_loglik = seq_loglik.gather(1, samples)                             # [B, S]
                baseline = (leave_one_out_baseline(sample_loglik.detach())
                            if self.cfg.baseline == "leave_one_out" else torch.zeros_like(sample_loglik))
                elbo = vrag_surrogate_sampled(log_post.gather(1, samples), sample_loglik, baseline, kl)
                expected = sample_loglik.detach().mean(-1)
        loss = -elbo.mean()
        return loss, {"loss": loss.item(), "kl": kl.mean().item(), "expected_loglik": expected.mean().item(),
                      "candidates": mask.sum(-1).float().mean().item()}
