"""LSR: LM-supervised retrieval (REPLUG; Shi et al., NAACL 2024, arXiv 2301.12652).

    P_R(h_k | x) = softmax_k( s(x, h_k) / gamma )             over the prior's top K          [B, K]
    Q(h_k | x, y) = softmax_k( SG[log p_g(y | x, h_k)] / beta )                                [B, K]
    direction paper:    L_r = KL( P_R || Q ) = sum_k P_R (log P_R - log Q)                    [B]
    direction forward:  L_r = KL( Q || P_R ) = sum_k Q (log Q - log P_R)                      [B]
    loss = mean_b L_r  (+ mean_b L_g when ``train_generator``)

Q is stop-gradient: the retriever alone gets L_r's gradient. The generator is frozen (the paper's
black-box LM: ``trains`` then omits it) or, with ``train_generator``, trains on its own loss L_g
(``generator_loss``, see ``base``), never through Q.

``direction``: the paper writes KL(P_R || Q) (mode-seeking in P_R: the retriever may put all its mass
on one passage Q likes and ignore the rest); every public implementation calls
``F.kl_div(log P_R, Q)``, which is KL(Q || P_R) (mass-covering; the gradient is then PDist's). Default:
the paper's.

Deviations from the paper:
1. The paper's retriever scores the whole top K from a periodically refreshed index, as here; it uses
   gamma as the only retriever temperature. Here p_r already divides the scores by the retriever's tau,
   so ``retriever_temperature`` gamma rescales: log P_R = log_softmax(log p_r * tau / gamma) (None: gamma
   = tau, P_R = p_r).
2. log p_g is summed over answer tokens by default (``reduction``), the LM's likelihood of y.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from jsarag.configtools import check_ranges, positive
from jsarag.data import Batch
from jsarag.estimators.base import (
    GeneratorLoss,
    Panel,
    Stateless,
    generator_nll,
    kl_categorical,
    prior_top_k,
    sequence_logprobs,
)


@dataclass
class LSRConfig:
    direction: Literal["paper", "forward"] = "paper"
    beta: float = 1.0                           # temperature of Q
    retriever_temperature: float | None = None  # gamma; None: the retriever's own tau
    reduction: Literal["sum", "mean"] = "sum"   # of log p_g over answer tokens, in Q
    train_generator: bool = False
    generator_loss: GeneratorLoss = "concat"    # when the generator trains

    def validate(self) -> None:
        check_ranges(self, beta=positive(), retriever_temperature=positive())


def lsr_lm_target(seq_loglik: torch.Tensor, beta: float) -> torch.Tensor:
    """log Q = log softmax_k(SG[log p_g(y|x,h_k)] / beta): [B, K] -> [B, K]."""
    return torch.log_softmax(seq_loglik.detach() / beta, dim=-1)


def rescale_temperature(log_prior: torch.Tensor, tau: float, gamma: float | None) -> torch.Tensor:
    """log softmax(s / gamma) from log p_r = log softmax(s / tau): [B, K] -> [B, K]."""
    return log_prior if gamma is None else torch.log_softmax(log_prior * (tau / gamma), dim=-1)


def lsr_kl(log_retriever: torch.Tensor, log_lm: torch.Tensor, direction: str) -> torch.Tensor:
    """KL(P_R || SG[Q]) (``paper``) or KL(SG[Q] || P_R) (``forward``): [B, K] x 2 -> [B]."""
    if direction == "paper":
        return kl_categorical(log_retriever, log_lm.detach())
    if direction == "forward":
        return kl_categorical(log_lm.detach(), log_retriever)
    raise ValueError(f"direction must be 'paper' or 'forward', got {direction!r}")


class LSR(Stateless):
    name = "lsr"
    options = LSRConfig
    methods = {"lsr": {}, "lsr_forward": {"direction": "forward"}}
    panels = (Panel("losses", "Retriever and generator terms", {
        "retriever_loss": "the retriever's term: KL between P_R and the LM's Q, over the top K"}),)
    trains = frozenset({"prior", "passage", "generator"})  # at most; an instance drops a frozen generator
    deterministic = True

    def __init__(self, cfg: LSRConfig | None = None, top_k: int = 10):
        self.cfg = cfg or LSRConfig()
        self.top_k = top_k
        self.trains = frozenset({"prior", "passage"} | ({"generator"} if self.cfg.train_generator else set()))

    def __call__(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        retriever, generator = model.retriever, model.generator
        cfg = self.cfg
        per_passage = cfg.train_generator and cfg.generator_loss == "per_passage_mean"
        # 1. Retrieve the prior's top K; P_R over them at temperature gamma (with gradient).
        rows, log_prior = prior_top_k(retriever, batch.queries, self.top_k)            # [B, K], [B, K]
        log_retriever = rescale_temperature(log_prior, retriever.temperature, cfg.retriever_temperature)
        passages = retriever.passages(rows)
        # 2. The LM's likelihood of the answer under every passage, and Q from it (stop-gradient).
        seq_sum, seq_mean = sequence_logprobs(generator, batch, passages, with_grad=per_passage)
        log_lm = lsr_lm_target(seq_mean if cfg.reduction == "mean" else seq_sum, cfg.beta)
        # 3. The retriever's KL, in the chosen direction.
        retriever_loss = lsr_kl(log_retriever, log_lm, cfg.direction)                 # [B]
        loss = retriever_loss.mean()
        metrics = {"retriever_loss": loss.item()}
        # 4. The generator's own loss, when it trains.
        if cfg.train_generator:
            generator_loss = generator_nll(generator, batch, passages, cfg.generator_loss, seq_sum)
            loss = loss + generator_loss.mean()
            metrics["generator_loss"] = generator_loss.mean().item()
        return loss, {"loss": loss.item(), **metrics, "prior_top1": log_prior.exp().max(-1).values.mean().item()}
