"""JSA-RAG: joint stochastic approximation with a Metropolis independence sampler.

Cao, Wu, Cai, Zhao, Ou, "Improving End-to-End Training of Retrieval-Augmented Generation Models via
Joint Stochastic Approximation", arXiv 2508.18168 (2025); JSA: Ou & Song, UAI 2020, arXiv 2005.14001.

Target: the posterior of the joint model over a candidate set U,  p(h | x, y) ∝ p_r(h|x) p_g(y|x,h).
Proposal: the posterior retriever q(h | x, y). Per example:

1. U = topK prior ∪ topK posterior (∪ the cached state); log p_r and log q renormalised over U.
2. Draw m proposals h'_1..h'_m ~ q, i.i.d., with replacement.
3. Score log p_g(y|x,h') without gradient, once per DISTINCT proposal (at most |U| passes; with
   ``scoring: one_pass``, with gradient, the graph kept for step 5).
4. MIS in log space, with  log w(h) = log p_r(h|x) + log p_g(y|x,h) - log q(h|x,y):
       h_1 = h'_1 (or h_0 = the cached state and proposals start at i = 1)
       accept h'_i with probability min(1, w(h'_i) / w(h_{i-1})), else h_i = h_{i-1}.
5. loss = (1/m) sum_i [ -log p_g(y|x,h_i) - log p_r(h_i|x) - log q(h_i|x,y) ]
   computed as a count-weighted sum over distinct chain states; the generator runs with gradient
   once per distinct state. The three terms touch disjoint parameters: the generator and the prior
   climb log p(y|x) (Fisher identity at stationarity), the posterior descends KL(p(.|x,y) || q).

Switches (default = textbook JSA, exact):
- ``reduction``: ``sum`` over answer tokens (exact posterior), or ``mean`` (the released code; the
  chain then targets the tempered posterior p_r * p_g^(1/|y|)), in both the acceptance ratio and the
  generator loss.
- ``chain_cache``: off (the released code: a fresh chain every step) or on (the JSA paper: the last
  state per example is kept and starts the next chain; saved with checkpoints).
- ``candidates``: ``union`` (released code) or ``posterior`` top K only (an earlier prototype).
- ``scoring``: ``two_pass`` (steps 3 and 5 as written: the distinct proposals without gradient, then
  the distinct chain states again with gradient), ``one_pass`` (step 3 runs WITH gradient and keeps
  the graph; the sampler reads the detached values and step 5 back-propagates through that same
  graph, where only the kept states carry weight), or ``auto`` (one pass on CUDA, two elsewhere).
  Same chain, same loss, same gradients, when the generator has no active dropout (see deviation 4).
  Costs: one pass saves the forward pass of the kept states but runs its forward with gradient and
  its backward over every distinct proposal (the proposals the chain left get zero gradient, yet the
  batched backward still computes them). Memory: it holds the generator activations of all distinct
  proposals until the backward, not only those of the kept states (~11 against ~4 sequences per
  question with the pretrained models of benchmarks/step_cost.py); ``score_batch_size`` still
  chunks the forward, but every chunk keeps its graph, so it no longer bounds that memory. When
  each mode wins, and what ``auto`` rests on: ``resolve_scoring``.

Scoring is injected: ``JSA(cfg, top_k, scorer=...)`` takes the function that computes log p_g for the
candidates a row of picks names (``Scorer``); the default, ``score_distinct``, runs each distinct one once.
benchmarks/step_cost.py passes one that scores every pick, duplicates included, to time the released
code's cost profile with the same estimator.

Deviations from the paper:
1. Distinct proposals and distinct states are scored once each (the released code scores all m).
2. With the cache on, the cached passage joins U even when neither retriever ranks it in its top K,
   so that p_r, q and w are defined for it.
3. The scoring pass of step 3 runs with dropout off: the acceptance ratio then uses the model's
   likelihood rather than a dropout-perturbed draw of it (which moved log p_g by ~0.5 nat with LoRA
   dropout 0.05), and the pass is ~20% faster. The gradient pass of step 5 keeps dropout.
4. With ``scoring: one_pass`` the scoring pass is also the gradient pass, so it keeps deviation 3:
   the generator trains without dropout (the retrievers keep theirs), and without activation
   checkpointing, which transformers applies in training mode only. two_pass is the choice for a
   run that relies on generator dropout; ``auto`` keeps two passes for a generator that checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch.profiler import record_function

from jsarag.configtools import at_least, check_ranges
from jsarag.data import Batch
from jsarag.estimators.base import (
    Panel,
    candidate_union,
    count_states,
    sample_candidates,
    score_selected,
    scoring_mode,
    weighted_sum,
)


@dataclass
class JSAConfig:
    num_proposals: int = 50
    reduction: Literal["sum", "mean"] = "sum"
    chain_cache: bool = False
    candidates: Literal["union", "posterior"] = "union"
    scoring: Literal["auto", "two_pass", "one_pass"] = "auto"

    def validate(self) -> None:
        check_ranges(self, num_proposals=at_least(1))


def resolve_scoring(cfg: JSAConfig, device: torch.device, checkpointing: bool = False
                    ) -> Literal["two_pass", "one_pass"]:
    """The scoring mode a step runs: ``cfg.scoring``, with ``auto`` decided by the device (and two
    passes whenever the generator uses activation checkpointing: deviation 4).

    Per distinct proposal, one pass costs a forward with gradient and a backward (F + B); two passes
    cost a forward without gradient (F0) per distinct proposal plus F + B per distinct state. On CPU
    F0 is ~0.4 (F + B), so one pass wins only where the chain keeps over ~60% of the distinct
    proposals, and it keeps fewer: 40-46% at the initial weights, 31% in training (K=10, m=50).
    Measured (benchmarks/step_cost.py --quick, SmolLM2-135M + LoRA, bf16 autocast, AVX512 with
    avx512_bf16, 1 thread, two seeds): one_pass / two_pass = 1.18 and 1.25 per step (0.74-0.89 on
    questions keeping 70-90%, 1.39-1.76 on those keeping 10-25%). Hence two passes on CPU. On CUDA a
    small micro-batch costs its kernel launches more than its rows, and one pass saves a whole
    forward pass: one pass there. Measured on an H200 (benchmarks/gpu_checks.sh, random weights whose
    chain was shaped like trained weights', 29-49% kept): one_pass / two_pass = 0.77 with micro-batches
    of 1, 0.96 and 1.14 with micro-batches of 4 (about even: steps of ~0.25 s); 0.72-0.90 where the
    chain kept 65% or more.
    """
    if cfg.scoring != "auto":
        return cfg.scoring
    return "one_pass" if device.type == "cuda" and not checkpointing else "two_pass"


def activation_checkpointing(module: torch.nn.Module) -> bool:
    """Whether any submodule checkpoints its activations (transformers' own test, version-proof)."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in module.modules())


def log_importance_weights(log_prior: torch.Tensor, seq_loglik: torch.Tensor, log_post: torch.Tensor
                           ) -> torch.Tensor:
    """log w(h) = log p_r(h|x) + log p_g(y|x,h) - log q(h|x,y): [B, K] x 3 -> [B, K]."""
    return log_prior + seq_loglik - log_post


def mis_chain(log_w: torch.Tensor, proposals: torch.Tensor, log_u: torch.Tensor,
              init: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Metropolis independence sampler over candidate indices, vectorised over the batch.

    log_w [B, K] importance weights; proposals [B, M] candidate indices drawn from q; log_u [B, M]
    log-uniforms; init [B] the previous state (chain cache) or None, in which case the chain starts
    at the first proposal, counted as accepted. Returns states [B, M] and accepted [B, M] (bool).
    """
    B, M = proposals.shape
    states = torch.empty_like(proposals)
    accepted = torch.zeros(B, M, dtype=torch.bool, device=proposals.device)
    if init is None:
        current, start = proposals[:, 0], 1
        states[:, 0], accepted[:, 0] = current, True
    else:
        current, start = init, 0
    current_log_w = log_w.gather(1, current[:, None]).squeeze(1)
    proposal_log_w = log_w.gather(1, proposals)  # [B, M]
    for i in range(start, M):
        accept = log_u[:, i] < proposal_log_w[:, i] - current_log_w
        current = torch.where(accept, proposals[:, i], current)
        current_log_w = torch.where(accept, proposal_log_w[:, i], current_log_w)
        states[:, i], accepted[:, i] = current, accept
    return states, accepted


def jsa_losses(state_weights: torch.Tensor, seq_loglik: torch.Tensor, log_prior: torch.Tensor,
               log_post: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example generator, prior and posterior losses, averaged over the chain states.

    state_weights [B, K]: fraction of the m chain states at each candidate (rows sum to 1).
    Returns three [B] tensors: -E[log p_g], -E[log p_r], -E[log q] under the chain's states.
    """
    return (-weighted_sum(state_weights, seq_loglik), -weighted_sum(state_weights, log_prior),
            -weighted_sum(state_weights, log_post))


class Scorer(Protocol):
    def __call__(self, model, batch: Batch, rows: torch.Tensor, picks: torch.Tensor, reduction: str
                 ) -> torch.Tensor:
        """log p_g(y|x,h) at every candidate that a row of ``picks`` [B, M] names, 0 elsewhere: -> [B, K].
        Gradient flows unless the caller disables it."""


def score_distinct(model, batch: Batch, rows: torch.Tensor, picks: torch.Tensor, reduction: str) -> torch.Tensor:
    """The library's scorer: each distinct candidate among ``picks`` [B, M] scored once -> [B, K]."""
    return score_selected(model, batch, rows, count_states(picks, rows.shape[1]) > 0, reduction)


class JSA:
    name = "jsa"
    options = JSAConfig
    methods = {"jsa_sum": {"reduction": "sum"}, "jsa_mean": {"reduction": "mean"}}
    panels = (
        Panel("losses", "JSA's losses", {"loss_gen": "-log p_g(y|x,h) over the chain states",
                                         "loss_prior": "-log p_r(h|x) over them",
                                         "loss_post": "-log q(h|x,y) over them"}),
        Panel("acceptance", "JSA's sampler", {
            "accept_rate": "the share of the m proposals accepted",
            "distinct_states": "the distinct passages the chain visited (these get generator gradients)",
            "distinct_proposals": "the distinct passages proposed (scored once without gradient)",
            "candidates": "the candidate set the posterior and prior are normalised over (`union`: the prior's "
                          "top K with the posterior's top K)"}, compared=("accept_rate",)),
    )
    trains = frozenset({"prior", "posterior", "passage", "generator"})
    deterministic = False

    def __init__(self, cfg: JSAConfig | None = None, top_k: int = 10, scorer: Scorer = score_distinct):
        self.cfg = cfg or JSAConfig()
        self.top_k = top_k
        self.scorer = scorer
        self.cache: dict[str, str] = {}  # example id -> passage id of its last chain state
        self._updates: dict[str, str] = {}  # cache entries written since the last pop_updates()

    def state_dict(self) -> dict:
        return {"cache": dict(self.cache)}

    def load_state_dict(self, state: dict) -> None:
        self.cache = dict(state.get("cache", {}))

    def pop_updates(self) -> dict[str, str]:
        """Cache entries written since the last call. Under DDP each process sees other examples, so
        the training loop exchanges these after every step to keep all caches equal."""
        updates, self._updates = self._updates, {}
        return updates

    def apply_updates(self, updates: dict[str, str]) -> None:
        self.cache.update(updates)

    def _cached_rows(self, batch: Batch, corpus, device) -> torch.Tensor | None:
        if not self.cfg.chain_cache:
            return None
        rows = [corpus.row(self.cache[i]) if i in self.cache else -1 for i in batch.ids]
        return torch.tensor(rows, dtype=torch.long, device=device)[:, None]  # [B, 1]

    def __call__(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        retriever, cfg = model.retriever, self.cfg
        M = cfg.num_proposals
        scoring = resolve_scoring(cfg, model.generator.device, activation_checkpointing(model.generator))
        # 1. Candidate set U and both retrievers' log-probabilities over it (with gradient).
        with record_function("jsa/candidates"):
            prior_query = retriever.prior_vectors(batch.queries)                           # [B, d]
            post_query = retriever.posterior_vectors(batch.queries, batch.answers)         # [B, d]
            searched = [prior_query, post_query] if cfg.candidates == "union" else [post_query]
            row_sets = retriever.search_each(searched, self.top_k)                         # [B, K] each
            cached = self._cached_rows(batch, retriever.corpus, prior_query.device)
            if cached is not None:
                row_sets.append(cached)
            rows, mask = candidate_union(row_sets)                                         # [B, K']
            log_prior = retriever.log_probs(prior_query, rows, mask)                       # [B, K']
            log_post = retriever.log_probs(post_query, rows, mask)                         # [B, K']
        K = rows.shape[1]
        # 2. m proposals from q; the cached state (if any) is scored with them and starts the chain.
        with record_function("jsa/propose"):
            proposals = sample_candidates(log_post, M)                                     # [B, M]
            init = None
            if cached is not None and (cached >= 0).any():
                has = cached[:, 0] >= 0
                init = torch.where(has, (rows == cached).long().argmax(1), proposals[:, 0])
            picks = proposals if init is None else torch.cat([init[:, None], proposals], 1)
        # 3. Generator log-likelihood of the proposals, dropout off: without gradient (two_pass), or
        #    with it and the graph kept for step 5 (one_pass).
        with record_function("jsa/score_proposals"), torch.inference_mode(scoring == "two_pass"), \
                scoring_mode(model.generator):
            seq_loglik = self.scorer(model, batch, rows, picks, cfg.reduction)             # [B, K']
        # 4. Metropolis independence sampling in log space.
        with record_function("jsa/chain"):
            log_w = log_importance_weights(log_prior.detach(), seq_loglik.detach(), log_post.detach())
            log_u = torch.rand(proposals.shape, device=proposals.device).log()
            states, accepted = mis_chain(log_w, proposals, log_u, init)                    # [B, M]
            weights = count_states(states, K) / M                                          # [B, K']
        # 5. Loss averaged over chain states; the generator runs with gradient on the chain's states
        #    (one_pass: back-propagates through step 3's graph, where the proposals the chain left weigh 0).
        with record_function("jsa/states_forward"):
            seq_loglik_grad = (seq_loglik if scoring == "one_pass"
                               else self.scorer(model, batch, rows, states, cfg.reduction))  # [B, K']
            loss_gen, loss_prior, loss_post = jsa_losses(weights, seq_loglik_grad, log_prior, log_post)
            loss = (loss_gen + loss_prior + loss_post).mean()
        if cfg.chain_cache:
            last = rows.gather(1, states[:, -1:]).squeeze(1).tolist()
            self._updates.update({i: retriever.corpus[r].id for i, r in zip(batch.ids, last)})
            self.cache.update(self._updates)
        # 6. Diagnostics. A chain's first step is a real transition only from a cached state.
        is_transition = torch.ones_like(accepted)
        is_transition[:, 0] = False if init is None else cached[:, 0] >= 0
        transitions = accepted[is_transition]
        return loss, {
            "loss": loss.item(),
            "loss_gen": loss_gen.mean().item(),
            "loss_prior": loss_prior.mean().item(),
            "loss_post": loss_post.mean().item(),
            "accept_rate": transitions.float().mean().item() if transitions.numel() else float("nan"),
            "distinct_states": (weights > 0).sum(-1).float().mean().item(),
            "distinct_proposals": (count_states(picks, K) > 0).sum(-1).float().mean().item(),
            "candidates": mask.sum(-1).float().mean().item(),
        }
