"""EMDR2, PDist, LOOP, LSR and Stochastic RAG against objectives written out here, independently.

Deterministic estimators: on tiny random models with K = N (the top K is the whole knowledge base), the
loss must equal the objective computed by hand in this file, and the gradient w.r.t. the prior query
encoder and the generator must equal autograd of that hand objective. The hand objective does not call
the estimators' functions or the generator's batched scoring: every log p_g(y | x, passages) comes from
one unpadded forward pass of the language model over ``prompt_ids(x, passages) + answer_ids(y)``, so the
concatenated prompts of ``generator_loss: concat`` and LOOP's leave-one-out prompts are checked too.
The models compute in float32, so "equal" is a relative error below 1e-4 (summation order only).

Stochastic RAG: the forward loss and the straight-through gradient are checked on mocked retrieval and
scoring (fixed p_r and p_g per passage), where draws cost microseconds.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from helpers import hand_token_logprobs, make_model, tiny_examples

import jsarag.estimators.stochastic_rag as srag
from jsarag.data import Batch
from jsarag.estimators import (
    EMDR2,
    LOOP,
    LSR,
    EMDR2Config,
    LOOPConfig,
    LSRConfig,
    PDist,
    PDistConfig,
    StochasticRAG,
    StochasticRAGConfig,
)
from jsarag.estimators.lsr import lsr_kl, lsr_lm_target, rescale_temperature

N = 5
REL = 1e-4


@pytest.fixture(scope="module")
def setup():
    model = make_model(n=N)
    model.eval()  # no dropout: the hand objective and the estimator see the same function
    model.set_trainable({"prior", "generator"})
    batch = Batch.from_examples(tiny_examples()[:2])
    return model, batch


def params(model) -> dict[str, list[torch.nn.Parameter]]:
    return {"prior": list(model.retriever.prior.parameters()), "generator": list(model.generator.parameters())}


def flat_grads(model) -> dict[str, torch.Tensor]:
    return {name: torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in ps])
            for name, ps in params(model).items()}


def loss_and_grads(model, compute) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = compute()
    loss.backward()
    grads = flat_grads(model)
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


def hand_logprob(generator, query: str, kind: str, passages, answer: str) -> tuple[torch.Tensor, int]:
    """log p_g(y | x, passages read together) summed over answer tokens, and the number of tokens."""
    token_logprobs = hand_token_logprobs(generator, query, kind, passages, answer)
    return token_logprobs.sum(), len(token_logprobs)


class Hand:
    """Everything the objectives need, computed afresh (with gradient) for one batch, in top-K order
    (the K leave-one-out prompts only when asked: they are the costly part)."""

    def __init__(self, model, batch, leave_one_out: bool):
        retriever, generator = model.retriever, model.generator
        query = retriever.prior_vectors(batch.queries)
        self.rows = retriever.search(query, N)                                   # the top K = N, best first
        self.log_prior = retriever.log_probs(query, self.rows).double()          # [B, K]
        self.passages = retriever.passages(self.rows)
        self.tau = retriever.temperature
        self.per_sum, self.per_mean, self.concat, self.loo_sum, self.loo_mean = [], [], [], [], []
        for q, ps, answers in zip(batch.queries, self.passages, batch.answers):
            pairs = [hand_logprob(generator, q, batch.kind, [p], answers) for p in ps]
            self.per_sum.append(torch.stack([s for s, _ in pairs]))
            self.per_mean.append(torch.stack([s / n for s, n in pairs]))
            self.concat.append(hand_logprob(generator, q, batch.kind, ps, answers)[0])
            loo = [hand_logprob(generator, q, batch.kind, ps[:k] + ps[k + 1:], answers) if leave_one_out
                   else (torch.zeros((), dtype=torch.float64), 1) for k in range(len(ps))]
            self.loo_sum.append(torch.stack([s for s, _ in loo]))
            self.loo_mean.append(torch.stack([s / n for s, n in loo]))
        self.per_sum, self.per_mean = torch.stack(self.per_sum), torch.stack(self.per_mean)     # [B, K]
        self.concat = torch.stack(self.concat)                                                    # [B]
        self.loo_sum, self.loo_mean = torch.stack(self.loo_sum), torch.stack(self.loo_mean)     # [B, K]

    def generator_loss(self, how: str) -> torch.Tensor:
        return -self.concat if how == "concat" else -self.per_sum.mean(-1)


def kl(p: torch.Tensor, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """sum_k p_k (log p_k - log q_k), written out: [B, K] -> [B]."""
    return (p * (log_p - log_q)).sum(-1)


def hand_emdr2(h: Hand, cfg: EMDR2Config) -> torch.Tensor:
    weights = h.log_prior.exp() * h.per_sum.detach().exp()                  # p_r(h) SG[p_g(y|x,h)]
    return (-weights.sum(-1).log() + h.generator_loss(cfg.generator_loss)).mean()


def hand_pdist(h: Hand, cfg: PDistConfig) -> torch.Tensor:
    scores = (h.per_mean if cfg.reduction == "mean" else h.per_sum).detach() / cfg.temperature
    target = scores.exp() / scores.exp().sum(-1, keepdim=True)
    return (kl(target, target.log(), h.log_prior) + h.generator_loss(cfg.generator_loss)).mean()


def hand_loop(h: Hand, cfg: LOOPConfig) -> torch.Tensor:
    # The passage whose removal raises the NLL most gets the most weight: exp(NLL_without_k / tau).
    nll_without = -(h.loo_mean if cfg.reduction == "mean" else h.loo_sum).detach()
    target = (nll_without / cfg.temperature).exp()
    target = target / target.sum(-1, keepdim=True)
    return (kl(target, target.log(), h.log_prior) + h.generator_loss(cfg.generator_loss)).mean()


def hand_lsr(h: Hand, cfg: LSRConfig) -> torch.Tensor:
    gamma = cfg.retriever_temperature or h.tau
    scores = h.log_prior * h.tau / gamma                        # s / gamma, up to a per-example constant
    p_r = scores.exp() / scores.exp().sum(-1, keepdim=True)
    lm = ((h.per_mean if cfg.reduction == "mean" else h.per_sum).detach() / cfg.beta).exp()
    q = lm / lm.sum(-1, keepdim=True)
    retriever = kl(p_r, p_r.log(), q.log()) if cfg.direction == "paper" else kl(q, q.log(), p_r.log())
    loss = retriever.mean()
    return loss + h.generator_loss(cfg.generator_loss).mean() if cfg.train_generator else loss


CASES = {
    "emdr2_concat": (EMDR2, EMDR2Config(), hand_emdr2),
    "emdr2_per_passage": (EMDR2, EMDR2Config(generator_loss="per_passage_mean"), hand_emdr2),
    "pdist_mean": (PDist, PDistConfig(temperature=0.5), hand_pdist),
    "pdist_sum_per_passage": (PDist, PDistConfig(reduction="sum", temperature=2.0,
                                                 generator_loss="per_passage_mean"), hand_pdist),
    "loop": (LOOP, LOOPConfig(temperature=0.5), hand_loop),
    "loop_sum_per_passage": (LOOP, LOOPConfig(reduction="sum", generator_loss="per_passage_mean"), hand_loop),
    "lsr_paper_frozen": (LSR, LSRConfig(beta=2.0, retriever_temperature=0.05), hand_lsr),
    "lsr_forward_trained": (LSR, LSRConfig(direction="forward", reduction="mean", train_generator=True,
                                           generator_loss="per_passage_mean"), hand_lsr),
    "lsr_paper_trained_concat": (LSR, LSRConfig(train_generator=True), hand_lsr),
}


@pytest.mark.parametrize("case", list(CASES))
def test_loss_and_gradient_equal_the_hand_objective(case, setup):
    model, batch = setup
    cls, cfg, objective = CASES[case]
    estimator = cls(cfg, top_k=N)
    loss, grads = loss_and_grads(model, lambda: estimator(model, batch)[0])
    expected, expected_grads = loss_and_grads(model, lambda: objective(Hand(model, batch, cls is LOOP), cfg))
    assert loss == pytest.approx(expected, rel=REL)
    for name, target in expected_grads.items():
        if name in estimator.trains:
            assert target.norm() > 0, f"{name}: the hand objective gives no gradient"
            assert ((grads[name] - target).norm() / target.norm()).item() < REL, name
        else:
            assert target.abs().max() == 0 and grads[name].abs().max() == 0, name


def test_lsr_directions_on_a_hand_computed_example():
    # P_R = (1/2, 1/4, 1/4), Q = (1/8, 1/8, 3/4); Q enters as log-likelihoods 2 log Q with beta = 2.
    # KL(P_R || Q) = 1/2 ln(4) + 1/4 ln(2) + 1/4 ln(1/3) = 1.25 ln 2 - 0.25 ln 3  = 0.5917809035
    # KL(Q || P_R) = 1/8 ln(1/4) + 1/8 ln(1/2) + 3/4 ln 3 = -0.375 ln 2 + 0.75 ln 3 = 0.5640290238
    log_p_r = torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64).log()
    seq_loglik = 2.0 * torch.tensor([[1 / 8, 1 / 8, 3 / 4]], dtype=torch.float64).log()
    log_q = lsr_lm_target(seq_loglik, beta=2.0)
    log_retriever = rescale_temperature(log_p_r, tau=0.1, gamma=None)
    assert lsr_kl(log_retriever, log_q, "paper").item() == pytest.approx(0.5917809035, abs=1e-9)
    assert lsr_kl(log_retriever, log_q, "forward").item() == pytest.approx(0.5640290238, abs=1e-9)
    # gamma = tau / 2 squares the retriever's odds: P_R ∝ (1/4, 1/16, 1/16) = (2/3, 1/6, 1/6).
    rescaled = rescale_temperature(log_p_r, tau=0.1, gamma=0.05).exp()
    assert rescaled.tolist()[0] == pytest.approx([2 / 3, 1 / 6, 1 / 6], abs=1e-12)


TARGETS = {  # each estimator's stop-gradient target pass, and its pass with gradient where it has one
    "emdr2": (EMDR2, EMDR2Config()), "pdist": (PDist, PDistConfig()), "loop": (LOOP, LOOPConfig()),
    "lsr": (LSR, LSRConfig()), "lsr_trained_concat": (LSR, LSRConfig(train_generator=True)),
}


def generator_passes(estimator, monkeypatch) -> tuple[object, list[tuple[bool, bool, bool]]]:
    """The model after one ``estimator`` call in training mode (dropout on), and for each generator pass: gradient
    on, the generator in train mode, any of its modules in train mode."""
    model = make_model(n=N)
    model.train()
    model.set_trainable({"prior", "generator"})
    calls, real = [], model.generator.token_logprobs

    def spy(*args, **kwargs):
        calls.append((torch.is_grad_enabled(), model.generator.training,
                      any(m.training for m in model.generator.modules())))
        return real(*args, **kwargs)

    monkeypatch.setattr(model.generator, "token_logprobs", spy)
    estimator(model, Batch.from_examples(tiny_examples()[:2]))
    return model, calls


@pytest.mark.parametrize("case", list(TARGETS))
def test_targets_are_scored_with_dropout_off_and_the_training_mode_comes_back(case, monkeypatch):
    """In training (dropout on), every generator pass without gradient (the target) runs in eval mode, as Atlas's
    targets; a pass with gradient (the generator's own loss; per_passage_mean's shared pass) runs in train mode."""
    cls, cfg = TARGETS[case]
    model, calls = generator_passes(cls(cfg, top_k=N), monkeypatch)
    assert (False, False, False) in calls  # the target: no gradient, no module in train mode
    assert all(training == any_training for _, training, any_training in calls)
    assert [grad for grad, training, _ in calls] == [training for _, training, _ in calls]
    assert model.generator.training and all(m.training for m in model.generator.modules())


def test_a_per_passage_target_shares_the_generators_pass_with_gradient_in_train_mode(monkeypatch):
    """per_passage_mean: one pass gives the generator's loss and the target, so the target sees dropout (the
    option's documented cost; concat, the default, scores the target apart)."""
    _, calls = generator_passes(PDist(PDistConfig(generator_loss="per_passage_mean"), top_k=N), monkeypatch)
    assert [(grad, training) for grad, training, _ in calls] == [(True, True)]


def test_lsr_trains_the_generator_only_when_asked():
    assert "generator" not in LSR(LSRConfig()).trains
    assert "generator" in LSR(LSRConfig(train_generator=True)).trains


# =========================================================================== #
# Stochastic RAG on mocked retrieval and scoring
# =========================================================================== #

P_R = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
SEQ_LOGLIK = torch.tensor([-1.0, -3.0, -0.5, -6.0], dtype=torch.float64)   # log p_g(y | x, h_k)


@pytest.fixture
def mocked(monkeypatch):
    """Stochastic RAG over 4 candidates with p_r = P_R (a leaf with gradient) and p_g = exp(SEQ_LOGLIK)."""
    log_prior = P_R.log().clone().requires_grad_(True)
    scored = []

    def prior_top_k(retriever, queries, k):
        return torch.arange(4)[None, :], log_prior[None, :]

    def score_picks(model, batch, rows, picks, reduction):
        scored.append(picks.clone())
        return SEQ_LOGLIK[picks]

    monkeypatch.setattr(srag, "prior_top_k", prior_top_k)
    monkeypatch.setattr(srag, "score_picks", score_picks)
    return SimpleNamespace(model=SimpleNamespace(retriever=None), batch=SimpleNamespace(queries=["x"]),
                           log_prior=log_prior, scored=scored)


def draw_losses(mocked, num_draws: int, draws: int) -> torch.Tensor:
    estimator = StochasticRAG(StochasticRAGConfig(num_draws=num_draws), top_k=4)
    torch.manual_seed(0)
    with torch.no_grad():
        return torch.tensor([estimator(mocked.model, mocked.batch)[0].item() for _ in range(draws)])


def within_four_standard_errors(values: torch.Tensor, expected: float) -> None:
    se = values.std().item() / math.sqrt(len(values))
    assert abs(values.mean().item() - expected) < 4 * se, (values.mean().item(), expected, se)


def test_stochastic_rag_forward_is_unbiased_for_the_expected_nll(mocked):
    # One draw (m = 1): the Gumbel-max draw is distributed as p_r, so E[loss] = sum_k p_r(h_k) (-log p_g(y|x,h_k))
    #   = 0.4*1 + 0.3*3 + 0.2*0.5 + 0.1*6 = 0.4 + 0.9 + 0.1 + 0.6 = 2.0
    losses = draw_losses(mocked, num_draws=1, draws=4000)
    within_four_standard_errors(losses, 2.0)
    assert all(p.shape == (1, 1) for p in mocked.scored)  # only the drawn passage is scored


def test_stochastic_rag_two_draws_are_without_replacement_and_plackett_luce(mocked):
    # m = 2: the ordered pair (i, j) has probability p_i p_j / (1 - p_i); the loss is (L_i + L_j) / 2.
    nll = (-SEQ_LOGLIK).tolist()
    p = P_R.tolist()
    expected = sum(p[i] * p[j] / (1 - p[i]) * (nll[i] + nll[j]) / 2
                   for i in range(4) for j in range(4) if i != j)
    losses = draw_losses(mocked, num_draws=2, draws=4000)
    within_four_standard_errors(losses, expected)
    assert all(len(set(picks[0].tolist())) == 2 for picks in mocked.scored)


def test_stochastic_rag_straight_through_gradient(mocked, monkeypatch):
    """What the retriever's gradient is, and is not.

    It IS the straight-through estimate at this draw's Gumbel noise g: with m = 1, drawn passage j and the
    relaxation y = softmax((log p_r + g) / lambda), the gradient of the loss w.r.t. log p_r(h_i) is
        SG[L_j] * d y_j / d log p_r(h_i) = L_j * y_j (delta_ij - y_i) / lambda,    L_j = -log p_g(y|x,h_j)
    (and the forward loss is L_j itself: the hard draw). It is NOT the gradient of the expected loss
    E_{h ~ p_r}[L(h)], sum_i L_i grad p_r(h_i), which needs the losses of passages that were not drawn
    (never scored, they enter as 0): it is biased, and its bias depends on lambda.
    """
    gumbel = torch.tensor([[0.3, -0.2, 1.5, 0.0]], dtype=torch.float64)  # perturbed: log p_r + g, argmax 2
    monkeypatch.setattr(srag, "gumbel_noise", lambda shape, device=None: gumbel)
    lam = 0.5
    estimator = StochasticRAG(StochasticRAGConfig(num_draws=1, relaxation_temperature=lam), top_k=4)
    loss, _ = estimator(mocked.model, mocked.batch)
    loss.backward()
    perturbed = (P_R.log() + gumbel[0]) / lam
    y = perturbed.exp() / perturbed.exp().sum()
    j, L_j = 2, 0.5                                          # drawn: passage 2, L_2 = -log p_g = 0.5
    expected = torch.tensor([L_j * y[j] * (float(i == j) - y[i]) / lam for i in range(4)], dtype=torch.float64)
    assert loss.item() == pytest.approx(L_j, abs=1e-12)
    assert torch.allclose(mocked.log_prior.grad, expected, atol=1e-12)
    exact = P_R * (-SEQ_LOGLIK - 2.0)  # d/d log p_r(h_i) of E_{p_r}[L] = p_i (L_i - E[L]), E[L] = 2.0: not it
    assert not torch.allclose(mocked.log_prior.grad, exact, atol=1e-3)
