"""LOOP: leave-one-out perplexity distillation (Atlas; Izacard et al., JMLR 2023, arXiv 2208.03299).

    H = topK(x) = (h_1 .. h_K), read together in one prompt; H \\ h_k = the other K-1, in the same order
    target(h_k) = softmax_k( SG[-log p_g(y | x, H \\ h_k)] / tau )                           [B, K]
    retriever:  L_r = KL( target || p_r(. | x) )                                             [B]
    generator:  L_g = the generator's own loss (``generator_loss``, see ``base``)               [B]
    loss = mean_b (L_r + L_g)

The passage whose removal hurts the answer most (the largest NLL without it) gets the most weight.
The target is stop-gradient: only the retriever gets L_r's gradient; the generator gets gradient from
L_g only. Cost: K extra generator passes without gradient, each over a prompt of K-1 passages.

Deviations from the paper:
1. Atlas's reader is FiD (the K-1 passages encoded apart, fused in the decoder); a decoder-only generator
   reads them concatenated in one prompt, in the prior's order.
2. The brief this was written from spelled the target softmax_k(SG[-(-log p_g(y|x,H\\h_k))]/tau), i.e. of
   +log p_g, which gives the most weight to the passage whose removal hurts LEAST; the paper's
   p_LOOP(h_k) ∝ exp(-log p_g(y | x, H \\ h_k)) and the stated intent are what is implemented.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from jsarag.data import Batch
from jsarag.estimators.base import (
    LOSSES,
    Stateless,
    distillation_kl,
    generator_nll,
    prior_top_k,
    retriever_plus_generator,
    sequence_logprobs,
)
from jsarag.estimators.pdist import PDistConfig


@dataclass
class LOOPConfig(PDistConfig):
    """PDist's options: the target's reduction over answer tokens and temperature, the generator's own loss."""


def leave_one_out_contexts(passages: list[list]) -> list[list[list]]:
    """[B][K] passages -> [B][K] contexts, the k-th being every passage but the k-th (order kept)."""
    return [[ps[:k] + ps[k + 1:] for k in range(len(ps))] for ps in passages]


def loop_target(loo_loglik: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax_k(SG[-log p_g(y|x,H\\h_k)] / tau): [B, K] -> [B, K]."""
    return torch.log_softmax(-loo_loglik.detach() / temperature, dim=-1)


class LOOP(Stateless):
    name = "loop"
    options = LOOPConfig
    methods = {"loop": {}}
    panels = (LOSSES,)
    trains = frozenset({"prior", "passage", "generator"})
    deterministic = True

    def __init__(self, cfg: LOOPConfig | None = None, top_k: int = 10):
        self.cfg = cfg or LOOPConfig()
        self.top_k = top_k

    def __call__(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        retriever, generator = model.retriever, model.generator
        # 1. Retrieve the prior's top K and renormalise p_r over them (with gradient).
        rows, log_prior = prior_top_k(retriever, batch.queries, self.top_k)           # [B, K], [B, K]
        passages = retriever.passages(rows)
        # 2. Score the answer with each passage left out of the K read together (no gradient).
        loo_sum, loo_mean = sequence_logprobs(generator, batch, leave_one_out_contexts(passages), with_grad=False)
        # 3. The target, and the retriever's KL to it.
        log_target = loop_target(loo_mean if self.cfg.reduction == "mean" else loo_sum, self.cfg.temperature)
        retriever_loss = distillation_kl(log_target, log_prior)                       # [B]
        # 4. The generator's own loss.
        generator_loss = generator_nll(generator, batch, passages, self.cfg.generator_loss)
        return retriever_plus_generator(retriever_loss, generator_loss, log_prior)
