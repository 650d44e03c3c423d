"""EMDR2: end-to-end training of a multi-document reader and retriever (Sachan et al., NeurIPS 2021).

    retriever:  L_r = -log sum_{h in topK(x)} p_r(h | x) SG[p_g(y | x, h)]        [B, K] x 2 -> [B]
    generator:  L_g = the generator's own loss (``generator_loss``, see ``base``)       -> [B]
    loss = mean_b (L_r + L_g)

p_r is renormalised over the prior's top K. L_r is RAG-Sequence's marginal with the generator held
fixed: the retriever gets the gradient of log p(y | x) (the posterior-weighted score gradient
sum_k p(h_k | x, y) grad log p_r(h_k | x)); p_g(y | x, h_k) is stop-gradient in L_r. The generator gets
gradient only from L_g.

Deviations from the paper:
1. The paper's reader is FiD (all K passages in the encoder); a decoder-only generator here reads them
   concatenated in one prompt (``generator_loss: concat``) or one at a time (``per_passage_mean``).
   The per-passage p_g(y | x, h_k) of L_r is read with one passage in the prompt, as in the paper.
2. p_g is summed over answer tokens (the paper's sequence likelihood); no asynchronous index refresh
   (the passage encoder is frozen unless it is trained, as for every estimator here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from jsarag.data import Batch
from jsarag.estimators.base import (
    LOSSES,
    GeneratorLoss,
    Stateless,
    generator_nll,
    prior_top_k,
    retriever_plus_generator,
    sequence_logprobs,
)


@dataclass
class EMDR2Config:
    generator_loss: GeneratorLoss = "concat"


def emdr2_retriever_nll(log_prior: torch.Tensor, seq_loglik: torch.Tensor) -> torch.Tensor:
    """-log sum_k p_r(h_k|x) SG[p_g(y|x,h_k)]: [B, K], [B, K] -> [B]."""
    return -torch.logsumexp(log_prior + seq_loglik.detach(), dim=-1)


class EMDR2(Stateless):
    name = "emdr2"
    options = EMDR2Config
    methods = {"emdr2": {}}
    panels = (LOSSES,)
    trains = frozenset({"prior", "passage", "generator"})
    deterministic = True

    def __init__(self, cfg: EMDR2Config | None = None, top_k: int = 10):
        self.cfg = cfg or EMDR2Config()
        self.top_k = top_k

    def __call__(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        retriever, generator = model.retriever, model.generator
        per_passage = self.cfg.generator_loss == "per_passage_mean"
        # 1. Retrieve the prior's top K and renormalise p_r over them (with gradient).
        rows, log_prior = prior_top_k(retriever, batch.queries, self.top_k)        # [B, K], [B, K]
        passages = retriever.passages(rows)
        # 2. Score the answer under every passage (with gradient only if the generator's loss reuses it).
        seq_loglik, _ = sequence_logprobs(generator, batch, passages, with_grad=per_passage)  # [B, K]
        # 3. The retriever's loss: the marginal with the generator held fixed.
        retriever_loss = emdr2_retriever_nll(log_prior, seq_loglik)               # [B]
        # 4. The generator's own loss.
        generator_loss = generator_nll(generator, batch, passages, self.cfg.generator_loss, seq_loglik)
        return retriever_plus_generator(retriever_loss, generator_loss, log_prior)
