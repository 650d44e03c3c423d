"""RAG-Token and VRAG: gradients against autograd of their objectives written out here, with K = N.

With the top K the whole knowledge base (N = 5 passages), each objective is enumerable:
- RAG-Token: -sum_t log sum_k p_r(h_k|x) p(y_t | x, h_k, y_<t);
- VRAG: -[ sum_k q(h_k|x,y) log p_g(y|x,h_k) - KL(q || p_r) ], q and p_r over the posterior's top K.
Per-token log-probabilities come from one unpadded forward pass of the language model per passage
(``helpers.hand_token_logprobs``), not from the generator's batched scoring. The deterministic forms
(RAG-Token, VRAG ``exact``) must match to float tolerance (the models compute in float32: relative
error below 1e-4). VRAG ``sampled`` draws passages from q: the mean of its gradient over many draws
must be within 4 standard errors (batch means over blocks of draws) of the exact ELBO gradient.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import hand_token_logprobs, make_model, tiny_examples

from jsarag.data import Batch
from jsarag.estimators import VRAG, RagToken, VRAGConfig

N = 5
REL = 1e-4


@pytest.fixture(scope="module")
def setup():
    model = make_model(n=N)
    model.eval()  # no dropout
    model.set_trainable({"prior", "posterior", "generator"})
    return model


def components(model) -> dict[str, list[torch.nn.Parameter]]:
    return {"prior": list(model.retriever.prior.parameters()),
            "posterior": list(model.retriever.posterior.parameters()),
            "generator": list(model.generator.parameters())}


def loss_and_grads(model, compute) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = compute()
    loss.backward()
    grads = {name: torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in ps])
             for name, ps in components(model).items()}
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


def assert_same_gradients(grads, expected, trained) -> None:
    for name, target in expected.items():
        if name in trained:
            assert target.norm() > 0, name
            assert ((grads[name] - target).norm() / target.norm()).item() < REL, name
        else:
            assert target.abs().max() == 0 and grads[name].abs().max() == 0, name


def token_table(model, batch, rows) -> torch.Tensor:
    """[B, K, L] per-token log-probs (0 beyond each answer's end), from the hand forward passes."""
    passages = model.retriever.passages(rows)
    tables = [[hand_token_logprobs(model.generator, q, batch.kind, [p], a) for p in ps]
              for q, ps, a in zip(batch.queries, passages, batch.answers)]
    length = max(t.shape[0] for row in tables for t in row)
    return torch.stack([torch.stack([torch.nn.functional.pad(t, (0, length - t.shape[0])) for t in row])
                        for row in tables])


def hand_rag_token(model, batch) -> torch.Tensor:
    retriever = model.retriever
    query = retriever.prior_vectors(batch.queries)
    rows = retriever.search(query, N)
    p_r = retriever.log_probs(query, rows).double().exp()                      # [B, K]
    tokens = token_table(model, batch, rows)                                   # [B, K, L]
    answer_len = [len(model.generator.prompts.answer_ids(a)) for a in batch.answers]
    per_token = (p_r[:, :, None] * tokens.exp()).sum(1).log()                 # [B, L]: log sum_k p_r p_t
    return -torch.stack([per_token[b, :n].sum() for b, n in enumerate(answer_len)]).mean()


def hand_neg_elbo(model, batch) -> torch.Tensor:
    retriever = model.retriever
    post_query = retriever.posterior_vectors(batch.queries, batch.answers)
    rows = retriever.search(post_query, N)
    log_q = retriever.log_probs(post_query, rows).double()
    log_p = retriever.log_probs(retriever.prior_vectors(batch.queries), rows).double()
    seq = token_table(model, batch, rows).sum(-1)                              # [B, K]
    q = log_q.exp()
    elbo = (q * seq).sum(-1) - (q * (log_q - log_p)).sum(-1)
    return -elbo.mean()


def test_rag_token_gradient_equals_the_hand_objective(setup):
    model = setup
    batch = Batch.from_examples(tiny_examples()[:2])
    estimator = RagToken(top_k=N)
    loss, grads = loss_and_grads(model, lambda: estimator(model, batch)[0])
    expected, expected_grads = loss_and_grads(model, lambda: hand_rag_token(model, batch))
    assert loss == pytest.approx(expected, rel=REL)
    assert_same_gradients(grads, expected_grads, {"prior", "generator"})


def test_vrag_exact_gradient_equals_the_hand_elbo(setup):
    model = setup
    batch = Batch.from_examples(tiny_examples()[:2])
    estimator = VRAG(VRAGConfig(mode="exact"), top_k=N)
    loss, grads = loss_and_grads(model, lambda: estimator(model, batch)[0])
    expected, expected_grads = loss_and_grads(model, lambda: hand_neg_elbo(model, batch))
    assert loss == pytest.approx(expected, rel=REL)
    assert_same_gradients(grads, expected_grads, {"prior", "posterior", "generator"})


def test_vrag_sampled_gradient_is_unbiased_for_the_exact_one(setup):
    """The score-function estimator with the leave-one-out baseline is unbiased; the KL is exact (the
    prior's gradient is then exact at every draw). 4 standard errors from 20 blocks of draws."""
    model = setup
    batch = Batch.from_examples(tiny_examples()[:1])
    _, exact = loss_and_grads(model, lambda: hand_neg_elbo(model, batch))
    estimator = VRAG(VRAGConfig(mode="sampled", num_samples=2), top_k=N)
    torch.manual_seed(0)
    blocks, per_block = 20, 6
    block_means = {name: torch.zeros(blocks, target.numel(), dtype=torch.float64) for name, target in exact.items()}
    for t in range(blocks * per_block):
        _, grads = loss_and_grads(model, lambda: estimator(model, batch)[0])
        for name, g in grads.items():
            block_means[name][t // per_block] += g.double() / per_block
    for name, target in exact.items():
        se = block_means[name].std(0) / math.sqrt(blocks)  # per-coordinate standard error of the mean
        error = (block_means[name].mean(0) - target.double()).norm().item()
        scale = target.norm().item()
        assert error < 4 * se.norm().item() + 1e-6 * scale, \
            f"{name}: error {error / scale:.3f} of the norm, beyond 4 s.e. ({4 * se.norm().item() / scale:.3f})"
