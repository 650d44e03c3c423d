"""What every estimator shares: the contract, candidate sets, sampling, and selective scoring.

An estimator is a callable ``estimator(model, batch) -> (loss, metrics)``: it owns no model, returns a
scalar loss to minimise and a dict of detached floats. ``trains`` names the components whose
parameters it produces gradients for (see ``jsarag.models.rag.COMPONENTS``). Estimators with state
across steps (the JSA chain cache) expose ``state_dict`` / ``load_state_dict`` for checkpoints, and
``pop_updates`` / ``apply_updates`` so that data-parallel processes keep the same state.

Each class also describes itself, so that the rest of the package needs no edit when one is added
(``jsarag.estimators.ESTIMATORS`` lists them): ``name`` (the value of ``estimator.name``), ``options`` (the
dataclass of its section ``estimator.<name>``), ``methods`` (the option settings a study compares),
``panels`` (the metrics it logs, for plots and reports) and ``deterministic`` (whether its gradient is a
function of the parameters and the batch alone, given its options).

Notation: B examples, K candidates, M proposals; rows are corpus row numbers; SG = stop-gradient.

Shared by the distillation-style estimators (EMDR2, PDist, LOOP, LSR): the KL to the retriever
(``kl_categorical``, ``distillation_kl``) and "the generator's own loss" (``generator_nll``), one option
``generator_loss`` in each of their sections:

    concat            -log p_g(y | x, h_1 .. h_K read together in one prompt)   (1 pass, prompt K passages long)
    per_passage_mean  (1/K) sum_k -log p_g(y | x, h_k)                          (the K passes the estimator
                                                                                 already runs, with gradient)

Each estimator runs its numbered steps inside ``torch.profiler.record_function`` ranges named
"ESTIMATOR/STEP" (e.g. "jsa/chain"): a profiler, if one runs, reports time per step (benchmarks/profile_jsa.py);
without one a range costs a few microseconds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

import torch

from jsarag.data import Batch

GeneratorLoss = Literal["concat", "per_passage_mean"]
MethodOptions = Mapping[str, str | int | float | bool]  # option -> value, as an override would set it


@dataclass(frozen=True)
class Panel:
    """Metrics an estimator logs that belong together (keys of the dict its ``__call__`` returns).

    ``jsarag plot`` draws a panel as one PNG, a line per metric (a panel named like one of its own, e.g.
    ``losses``, joins it). ``jsarag compare`` reports it as a table, a row per method, with the
    descriptions as its legend, and draws each metric in ``compared`` as one PNG, a line per method; the
    training progress bar shows those too.
    """
    name: str
    title: str
    metrics: Mapping[str, str]  # metric key -> what it measures, one phrase
    compared: tuple[str, ...] = ()  # its headline metrics


class Estimator(Protocol):
    name: ClassVar[str]
    options: ClassVar[type]  # a dataclass whose every field has a default
    methods: ClassVar[Mapping[str, MethodOptions]]  # study method name -> options that differ from the defaults
    panels: ClassVar[tuple[Panel, ...]]
    trains: frozenset[str]
    deterministic: bool

    def __call__(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def pop_updates(self) -> dict: ...

    def apply_updates(self, updates: dict) -> None: ...


class Stateless:
    """Mixin for estimators without state across steps."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None

    def pop_updates(self) -> dict:
        return {}

    def apply_updates(self, updates: dict) -> None:
        return None


@contextlib.contextmanager
def scoring_mode(module: torch.nn.Module):
    """Dropout off inside the block (eval mode), the previous mode restored after it."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def candidate_union(row_sets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example ordered union of several [B, k_i] row tensors (entries < 0 are ignored).

    Returns rows [B, K'] (K' = the largest union; padding repeats a valid row) and mask [B, K'].
    """
    unions: list[list[int]] = []
    for parts in zip(*(r.tolist() for r in row_sets)):
        seen: dict[int, None] = {}
        for part in parts:
            for row in part:
                if row >= 0:
                    seen.setdefault(row, None)
        unions.append(list(seen))
    width = max(map(len, unions))
    device = row_sets[0].device
    rows = torch.tensor([u + [u[0]] * (width - len(u)) for u in unions], dtype=torch.long, device=device)
    mask = torch.tensor([[True] * len(u) + [False] * (width - len(u)) for u in unions], device=device)
    return rows, mask


def prior_top_k(retriever, queries, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The prior's top-``k`` rows [B, K] and log p_r renormalised over them [B, K] (with gradient)."""
    query = retriever.prior_vectors(queries)    # [B, d]
    rows = retriever.search(query, k)           # [B, K]
    return rows, retriever.log_probs(query, rows)


def weighted_sum(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """sum_k w_k v_k over the last dim, with 0 * (-inf) taken as 0 (masked candidates): [B, K] -> [B]."""
    return (weights * values.masked_fill(weights == 0, 0.0)).sum(-1)


def sample_candidates(log_probs: torch.Tensor, num: int, generator: torch.Generator | None = None
                      ) -> torch.Tensor:
    """``num`` i.i.d. draws (with replacement) from each row's categorical: [B, K] -> [B, num].

    A row that is not a distribution (a diverged model's NaN) draws uniformly, so that the step completes
    with a non-finite loss, which the training loop skips.
    """
    probs = log_probs.detach().exp()
    valid = torch.isfinite(probs).all(-1, keepdim=True) & (probs.sum(-1, keepdim=True) > 0)
    probs = torch.where(valid, probs, torch.ones_like(probs))
    return torch.multinomial(probs, num, replacement=True, generator=generator)


def count_states(states: torch.Tensor, num_candidates: int) -> torch.Tensor:
    """How often each candidate occurs in each row of ``states``: [B, M] -> [B, K] (float)."""
    counts = torch.zeros(states.shape[0], num_candidates, device=states.device)
    return counts.scatter_add_(1, states, torch.ones_like(states, dtype=counts.dtype))


def score_selected(model, batch: Batch, rows: torch.Tensor, selected: torch.Tensor, reduction: str
                   ) -> torch.Tensor:
    """log p_g(y | x, h) only where ``selected`` [B, K] is True, as one batched generator call.

    Returns [B, K] with 0 where not selected; gradient flows unless the caller disables it.
    """
    b_idx, k_idx = selected.nonzero(as_tuple=True)
    corpus = model.retriever.corpus
    picked = rows[b_idx, k_idx].tolist()
    b_list = b_idx.tolist()
    values = model.generator.pair_logprob([batch.queries[b] for b in b_list], batch.kind,
                                          [corpus[r] for r in picked], [batch.answers[b] for b in b_list],
                                          reduction)
    out = torch.zeros(selected.shape, device=values.device, dtype=values.dtype)
    return out.index_put((b_idx.to(values.device), k_idx.to(values.device)), values)


def score_picks(model, batch: Batch, rows: torch.Tensor, picks: torch.Tensor, reduction: str) -> torch.Tensor:
    """log p_g(y | x, h) for every picked candidate, duplicates included: [B, M] indices -> [B, M]."""
    B, M = picks.shape
    chosen = rows.gather(1, picks).reshape(-1).tolist()
    corpus = model.retriever.corpus
    values = model.generator.pair_logprob([q for q in batch.queries for _ in range(M)], batch.kind,
                                          [corpus[r] for r in chosen], [a for a in batch.answers for _ in range(M)],
                                          reduction)
    return values.view(B, M)


def kl_categorical(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """KL(q || p) = sum_k q_k (log q_k - log p_k), masked entries (-inf in both) ignored: [B, K] -> [B]."""
    return weighted_sum(log_q.exp(), log_q - log_p.masked_fill(torch.isinf(log_q), 0.0))


def distillation_kl(log_target: torch.Tensor, log_retriever: torch.Tensor) -> torch.Tensor:
    """KL(SG[target] || p_r): the retriever is pulled toward a fixed target, [B, K] x 2 -> [B]."""
    return kl_categorical(log_target.detach(), log_retriever)


def sequence_logprobs(generator, batch: Batch, contexts: list[list], with_grad: bool
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """log p_g(y | x, context) summed and averaged over answer tokens, from one generator call.

    ``contexts[b][k]`` is a passage or a list of passages read together. Returns ([B, K], [B, K]).
    A call without gradient computes a stop-gradient target (PDist's, LOOP's, LSR's, EMDR2's weights): it runs
    with dropout off, as Atlas scores its targets (``reader.eval()``) and JSA its proposals, so that the target is
    the generator's likelihood, not a draw of its dropout masks. A call with gradient (``per_passage_mean``, whose
    one pass gives both the generator's loss and the target) runs in the generator's own mode.
    """
    grad = with_grad and torch.is_grad_enabled()
    with torch.set_grad_enabled(grad), contextlib.nullcontext() if grad else scoring_mode(generator):
        token_loglik, answer_mask = generator.token_logprobs(batch.queries, batch.kind, contexts, batch.answers)
    total = token_loglik.sum(-1)
    return total, total / answer_mask.sum(-1, keepdim=True).to(total.dtype)


def generator_nll(generator, batch: Batch, passages: list[list], how: GeneratorLoss,
                  seq_loglik: torch.Tensor | None = None) -> torch.Tensor:
    """The generator's own loss over the top-K ``passages`` [B][K] (see the module docstring): [B].

    ``per_passage_mean`` reads ``seq_loglik`` [B, K] (log p_g(y|x,h_k), summed over tokens, with gradient)
    when the caller has already computed it, and scores the passages otherwise.
    """
    if how == "concat":
        together = [[list(ps)] for ps in passages]                                      # [B][1] contexts
        return -generator.sequence_logprob(batch.queries, batch.kind, together, batch.answers)[:, 0]
    if how == "per_passage_mean":
        if seq_loglik is None:
            seq_loglik = generator.sequence_logprob(batch.queries, batch.kind, passages, batch.answers)
        return -seq_loglik.mean(-1)
    raise ValueError(f"generator_loss must be 'concat' or 'per_passage_mean', got {how!r}")


def retriever_plus_generator(retriever_loss: torch.Tensor, generator_loss: torch.Tensor, log_prior: torch.Tensor
                             ) -> tuple[torch.Tensor, dict[str, float]]:
    """The step's loss, mean_b (retriever term + the generator's own loss) ([B] each), and its metrics: both
    terms (the ``LOSSES`` panel) and the prior's top-1 probability over the top K (``log_prior`` [B, K])."""
    loss = (retriever_loss + generator_loss).mean()
    return loss, {"loss": loss.item(), "retriever_loss": retriever_loss.mean().item(),
                  "generator_loss": generator_loss.mean().item(),
                  "prior_top1": log_prior.exp().max(-1).values.mean().item()}


LOSSES = Panel("losses", "Retriever and generator terms", {
    "retriever_loss": "the retriever's term (marginal NLL or KL to its target), over the top K",
    "generator_loss": "the generator's own loss (concat or per-passage mean NLL)"})
