"""RAG-Token: marginalise over the top-K passages at every answer token (Lewis et al., 2020).

    log p(y | x) ~= sum_t log sum_{h in topK(x)} p_r(h | x) p_g(y_t | x, h, y_<t)
    loss = -mean_b of that                                   [B, K], [B, K, L] -> [B, L] -> [B]

Deviations from the paper:
1. The paper interleaves the marginalisation with decoding for generation; here RAG-Token is a
   training objective only, and evaluation decodes like every other estimator (per passage or
   concatenated), so that the comparison isolates the training signal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.profiler import record_function

from jsarag.data import Batch
from jsarag.estimators.base import Stateless, prior_top_k


@dataclass
class RagTokenConfig:
    """RAG-Token has no options beyond the shared ``estimator.top_k``."""


def rag_token_nll(log_prior: torch.Tensor, token_loglik: torch.Tensor, answer_mask: torch.Tensor
                  ) -> torch.Tensor:
    """-sum_t log sum_k p_r(h_k|x) p(y_t|x,h_k,y_<t): [B, K], [B, K, L], [B, L] -> [B]."""
    per_token = torch.logsumexp(log_prior.unsqueeze(-1) + token_loglik, dim=1)  # [B, L]
    return -(per_token * answer_mask).sum(-1)


class RagToken(Stateless):
    name = "rag_token"
    options = RagTokenConfig
    methods = {"rag_token": {}}
    panels = ()
    trains = frozenset({"prior", "passage", "generator"})
    deterministic = True

    def __init__(self, cfg: RagTokenConfig | None = None, top_k: int = 10):
        self.cfg = cfg or RagTokenConfig()
        self.top_k = top_k

    def __call__(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        retriever, generator = model.retriever, model.generator
        # 1. Retrieve the prior's top K and renormalise p_r over them (with gradient).
        with record_function("rag_token/retrieve"):
            rows, log_prior = prior_top_k(retriever, batch.queries, self.top_k)  # [B, K], [B, K]
        # 2. Per-token log-likelihoods of the answer under every passage.
        with record_function("rag_token/score"):
            token_loglik, answer_mask = generator.token_logprobs(batch.queries, batch.kind,
                                                                 retriever.passages(rows), batch.answers)
        # 3. Marginalise over passages at each token, then sum over tokens.
        with record_function("rag_token/marginalise"):
            loss = rag_token_nll(log_prior, token_loglik, answer_mask.to(log_prior.dtype)).mean()
        return loss, {"loss": loss.item(), "prior_top1": log_prior.exp().max(-1).values.mean().item()}
