"""PDist: perplexity distillation (Atlas; Izacard et al., JMLR 2023, arXiv 2208.03299).

    target(h_k) = softmax_k( SG[log p_g(y | x, h_k)] / tau )       over the prior's top K   [B, K]
    retriever:  L_r = KL( target || p_r(. | x) )                                             [B]
    generator:  L_g = the generator's own loss (``generator_loss``, see ``base``)               [B]
    loss = mean_b (L_r + L_g)

log p_g(y | x, h_k) is the mean over answer tokens (``reduction: mean``, Atlas) or the sum (then with
tau = 1 the target is the posterior p(h | x, y) under a uniform prior over the K). The target is
stop-gradient: only the retriever (prior query encoder, passage encoder if it trains) gets L_r's
gradient, sum_k (p_r(h_k) - target_k) grad s(x, h_k)/tau_r; the generator gets gradient from L_g only.

Deviations from the paper:
1. Atlas's reader is FiD; a decoder-only generator reads the K passages concatenated (``concat``) or
   one at a time (``per_passage_mean``). The distillation scores use one passage per prompt, as Atlas.
2. Atlas divides the retriever scores by their own temperature; here p_r keeps the retriever's tau.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from jsarag.configtools import check_ranges, positive
from jsarag.data import Batch
from jsarag.estimators.base import (
    LOSSES,
    GeneratorLoss,
    Stateless,
    distillation_kl,
    generator_nll,
    prior_top_k,
    retriever_plus_generator,
    sequence_logprobs,
)


@dataclass
class PDistConfig:
    reduction: Literal["mean", "sum"] = "mean"  # of log p_g over answer tokens, in the target
    temperature: float = 1.0                    # tau of the target
    generator_loss: GeneratorLoss = "concat"

    def validate(self) -> None:
        check_ranges(self, temperature=positive())


def pdist_target(seq_loglik: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax_k(SG[log p_g(y|x,h_k)] / tau): [B, K] -> [B, K]."""
    return torch.log_softmax(seq_loglik.detach() / temperature, dim=-1)


class PDist(Stateless):
    name = "pdist"
    options = PDistConfig
    methods = {"pdist": {}}
    panels = (LOSSES,)
    trains = frozenset({"prior", "passage", "generator"})
    deterministic = True

    def __init__(self, cfg: PDistConfig | None = None, top_k: int = 10):
        self.cfg = cfg or PDistConfig()
        self.top_k = top_k

    def __call__(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        retriever, generator = model.retriever, model.generator
        per_passage = self.cfg.generator_loss == "per_passage_mean"
        # 1. Retrieve the prior's top K and renormalise p_r over them (with gradient).
        rows, log_prior = prior_top_k(retriever, batch.queries, self.top_k)           # [B, K], [B, K]
        passages = retriever.passages(rows)
        # 2. Score the answer under every passage (with gradient only if the generator's loss reuses it).
        seq_sum, seq_mean = sequence_logprobs(generator, batch, passages, with_grad=per_passage)
        # 3. The target from the generator's likelihoods, and the retriever's KL to it.
        log_target = pdist_target(seq_mean if self.cfg.reduction == "mean" else seq_sum, self.cfg.temperature)
        retriever_loss = distillation_kl(log_target, log_prior)                       # [B]
        # 4. The generator's own loss.
        generator_loss = generator_nll(generator, batch, passages, self.cfg.generator_loss, seq_sum)
        return retriever_plus_generator(retriever_loss, generator_loss, log_prior)
