"""Hand-checked tests for the pure maths of the estimators.

Every expected number is derived by hand in a comment next to it: small probabilities (1/2, 1/4, 3/4,
...) so that the logs are logs of simple fractions. Nothing here computes an expected value by calling
the function under test or a copy of its formula. float64 tensors throughout (tolerance 1e-6).
"""

from __future__ import annotations

import math

import pytest
import torch

from jsarag.estimators.base import candidate_union, count_states, sample_candidates, weighted_sum
from jsarag.estimators.jsa import jsa_losses, log_importance_weights, mis_chain
from jsarag.estimators.rag_sequence import rag_sequence_nll
from jsarag.estimators.rag_token import rag_token_nll
from jsarag.estimators.vrag import (
    kl_categorical,
    leave_one_out_baseline,
    vrag_elbo_exact,
    vrag_surrogate_sampled,
)
from jsarag.models.retriever import masked_log_softmax

TOL = 1e-6
INF = float("inf")
LOG2 = math.log(2.0)


def logs(*rows) -> torch.Tensor:
    """float64 tensor of natural logs of the given probabilities (0 -> -inf)."""
    return torch.tensor([[math.log(p) if p > 0 else -INF for p in row] for row in rows], dtype=torch.float64)


def f64(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def assert_close(actual: torch.Tensor, expected, tol: float = TOL) -> None:
    expected = torch.as_tensor(expected, dtype=torch.float64)
    actual = actual.detach().to(torch.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    # equal infinities compare equal; everything else within tol
    same_inf = torch.isinf(actual) & torch.isinf(expected) & (torch.sign(actual) == torch.sign(expected))
    diff = torch.where(same_inf, torch.zeros_like(actual), (actual - expected).abs())
    assert not torch.isnan(actual).any(), actual
    assert (diff <= tol).all(), f"actual {actual.tolist()} expected {expected.tolist()}"


def tv(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * (p.double() - q.double()).abs().sum().item()


# =========================================================================== #
# base.candidate_union
# =========================================================================== #


def test_candidate_union_order_dedup_negatives_padding_mask():
    prior_top = torch.tensor([[3, 1, -1],
                              [5, 5, 2]])
    post_top = torch.tensor([[1, 4],
                             [-1, 5]])
    rows, mask = candidate_union([prior_top, post_top])
    # example 0: 3, 1, (-1 skipped), then 1 (dup, dropped), 4            -> [3, 1, 4]
    # example 1: 5, 5 (dup), 2, then -1 (skipped), 5 (dup)               -> [5, 2], padded to width 3
    assert rows.dtype == torch.long and mask.dtype == torch.bool
    assert rows.shape == (2, 3) and mask.shape == (2, 3)
    assert rows[0].tolist() == [3, 1, 4]
    assert rows[1, :2].tolist() == [5, 2]
    assert mask.tolist() == [[True, True, True], [True, True, False]]
    # padding repeats a valid row of the same example (so it can be looked up safely)
    assert rows[1, 2].item() in {5, 2}


def test_candidate_union_three_sets_with_missing_cache_column():
    # JSA appends a [B, 1] cached-row column with -1 where nothing is cached.
    a = torch.tensor([[7, 8], [9, 10]])
    b = torch.tensor([[8, 11], [10, 9]])
    cached = torch.tensor([[12], [-1]])
    rows, mask = candidate_union([a, b, cached])
    # example 0: 7, 8, (8 dup), 11, 12 -> [7, 8, 11, 12]
    # example 1: 9, 10, (10, 9 dup), (-1 skipped) -> [9, 10] + 2 pads
    assert rows[0].tolist() == [7, 8, 11, 12]
    assert rows[1, :2].tolist() == [9, 10]
    assert set(rows[1, 2:].tolist()) <= {9, 10}
    assert mask.tolist() == [[True] * 4, [True, True, False, False]]


def test_candidate_union_single_set_is_identity_when_distinct():
    r = torch.tensor([[4, 0, 2]])
    rows, mask = candidate_union([r])
    assert rows.tolist() == [[4, 0, 2]]
    assert mask.all()


# =========================================================================== #
# base.weighted_sum
# =========================================================================== #


def test_weighted_sum_value():
    w = f64([0.5, 0.25, 0.25], [1.0, 0.0, 0.0])
    v = f64([2.0, 4.0, 8.0], [3.0, 100.0, -5.0])
    # row 0: 1/2*2 + 1/4*4 + 1/4*8 = 1 + 1 + 2 = 4 ; row 1: 1*3 = 3
    assert_close(weighted_sum(w, v), [4.0, 3.0])


def test_weighted_sum_minus_inf_under_zero_weight_is_finite_with_finite_grad():
    w = f64([0.5, 0.5, 0.0]).requires_grad_(True)
    v = f64([2.0, 4.0, -INF]).requires_grad_(True)
    out = weighted_sum(w, v)
    # 1/2*2 + 1/2*4 + (0 * -inf taken as 0) = 3
    assert_close(out, [3.0])
    out.sum().backward()
    # d/dw_k = v_k where w_k != 0, and 0 for the masked entry (its value was replaced by 0)
    assert_close(w.grad, [[2.0, 4.0, 0.0]])
    # d/dv_k = w_k
    assert_close(v.grad, [[0.5, 0.5, 0.0]])


def test_weighted_sum_grad_through_exp_of_minus_inf_log_weight():
    # the way the estimators call it: weights = exp(log q) with a masked (-inf) candidate
    log_q = logs([0.5, 0.5, 0.0]).requires_grad_(True)
    v = f64([2.0, 4.0, -INF])
    out = weighted_sum(log_q.exp(), v)
    assert_close(out, [3.0])
    out.sum().backward()
    # d/dlog q_k = q_k v_k : [1/2*2, 1/2*4, 0] = [1, 2, 0]
    assert_close(log_q.grad, [[1.0, 2.0, 0.0]])


# =========================================================================== #
# base.count_states / sample_candidates
# =========================================================================== #


def test_count_states():
    states = torch.tensor([[0, 2, 2, 1],
                           [1, 1, 1, 1]])
    counts = count_states(states, 3)
    # row 0: index 0 once, 1 once, 2 twice ; row 1: index 1 four times
    assert counts.dtype.is_floating_point
    assert counts.tolist() == [[1.0, 1.0, 2.0], [0.0, 4.0, 0.0]]


def test_count_states_with_unused_candidates():
    counts = count_states(torch.tensor([[3, 3]]), 5)
    assert counts.tolist() == [[0.0, 0.0, 0.0, 2.0, 0.0]]


def test_sample_candidates_shape_and_degenerate_row():
    log_p = logs([0.25, 0.25, 0.25, 0.25],
                 [0.0, 1.0, 0.0, 0.0])            # row 1: all mass on index 1
    g = torch.Generator().manual_seed(0)
    draws = sample_candidates(log_p, 7, generator=g)
    assert draws.shape == (2, 7) and draws.dtype == torch.long
    assert ((draws >= 0) & (draws < 4)).all()
    assert draws[1].tolist() == [1] * 7            # the single support point, every time


def test_sample_candidates_never_draws_masked_and_matches_distribution():
    # q = [1/2, 1/4, 1/4, 0 (masked)]; 200k draws -> empirical frequencies within 0.01 TV
    log_q = logs([0.5, 0.25, 0.25, 0.0])
    g = torch.Generator().manual_seed(1)
    draws = sample_candidates(log_q, 200_000, generator=g)
    freq = torch.bincount(draws[0], minlength=4).double() / draws.shape[1]
    assert freq[3].item() == 0.0
    assert tv(freq, torch.tensor([0.5, 0.25, 0.25, 0.0])) < 0.01


def test_sample_candidates_generator_is_reproducible():
    log_q = logs([0.5, 0.25, 0.25])
    a = sample_candidates(log_q, 50, generator=torch.Generator().manual_seed(3))
    b = sample_candidates(log_q, 50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


# =========================================================================== #
# retriever.masked_log_softmax
# =========================================================================== #


def test_masked_log_softmax_values():
    logits = f64([0.0, LOG2, 0.0, 100.0])
    mask = torch.tensor([[True, True, True, False]])
    out = masked_log_softmax(logits, mask)
    # exp over the unmasked: [1, 2, 1] / 4 -> [1/4, 1/2, 1/4]; masked -> -inf (the 100 is ignored)
    assert_close(out, logs([0.25, 0.5, 0.25, 0.0]))


def test_masked_log_softmax_without_mask_and_shift_invariance():
    logits = f64([0.0, math.log(3.0)], [10.0, 10.0])
    out = masked_log_softmax(logits, None)
    # row 0: [1, 3] / 4 ; row 1: equal logits -> [1/2, 1/2]
    assert_close(out, logs([0.25, 0.75], [0.5, 0.5]))


def test_masked_log_softmax_grad_is_finite_on_valid_entries():
    logits = f64([0.0, LOG2, 0.0, 7.0]).requires_grad_(True)
    mask = torch.tensor([[True, True, True, False]])
    out = masked_log_softmax(logits, mask)
    # d/dz_j of log p_0 = [j == 0] - p_j = [1 - 1/4, -1/2, -1/4, 0]
    out[0, 0].backward()
    assert_close(logits.grad, [[0.75, -0.5, -0.25, 0.0]])


# =========================================================================== #
# rag_sequence_nll
# =========================================================================== #


def test_rag_sequence_nll_value():
    log_prior = logs([0.5, 0.5], [0.25, 0.75])
    seq = logs([0.25, 0.75], [0.5, 1.0 / 3.0])
    # row 0: 1/2*1/4 + 1/2*3/4 = 1/8 + 3/8 = 1/2         -> -log(1/2) = log 2
    # row 1: 1/4*1/2 + 3/4*1/3 = 1/8 + 1/4 = 3/8         -> -log(3/8) = log(8/3)
    assert_close(rag_sequence_nll(log_prior, seq), [LOG2, math.log(8.0 / 3.0)])


def test_rag_sequence_nll_gradient_is_minus_posterior():
    log_prior = logs([0.5, 0.5], [0.25, 0.75]).requires_grad_(True)
    seq = logs([0.25, 0.75], [0.5, 1.0 / 3.0]).requires_grad_(True)
    rag_sequence_nll(log_prior, seq).sum().backward()
    # posterior = joint / marginal:
    #   row 0: [1/8, 3/8] / (1/2) = [1/4, 3/4] ; row 1: [1/8, 1/4] / (3/8) = [1/3, 2/3]
    # d(-log sum_k exp(a_k + b_k)) / da_k = -posterior_k (same for b)
    expected = [[-0.25, -0.75], [-1.0 / 3.0, -2.0 / 3.0]]
    assert_close(log_prior.grad, expected)
    assert_close(seq.grad, expected)


def test_rag_sequence_nll_masked_candidate_ignored():
    log_prior = logs([0.5, 0.5, 0.0]).requires_grad_(True)   # third candidate masked (-inf)
    seq = logs([0.25, 0.75, 1.0])
    out = rag_sequence_nll(log_prior, seq)
    assert_close(out, [LOG2])                                 # same as without it: 1/8 + 3/8 = 1/2
    out.sum().backward()
    assert_close(log_prior.grad, [[-0.25, -0.75, 0.0]])


# =========================================================================== #
# rag_token_nll
# =========================================================================== #


@pytest.mark.parametrize("pad", [0.0, math.log(1.0 / 8.0)])
def test_rag_token_nll_two_tokens_two_passages_padded_third(pad):
    # B = 2, K = 2, L = 3.
    log_prior = logs([0.5, 0.5], [0.25, 0.75])
    # example 0: passage 0 gives tokens [1/2, 1/4], passage 1 gives [1/4, 3/4]; third token is padding
    # example 1: a 1-token answer: passage 0 gives [1], passage 1 gives [1/3]; tokens 2, 3 padding
    tok = torch.tensor([
        [[math.log(0.5), math.log(0.25), pad], [math.log(0.25), math.log(0.75), pad]],
        [[0.0, pad, pad], [math.log(1.0 / 3.0), pad, pad]],
    ], dtype=torch.float64)
    answer_mask = f64([1.0, 1.0, 0.0], [1.0, 0.0, 0.0])
    out = rag_token_nll(log_prior, tok, answer_mask)
    # example 0: token 1: 1/2*1/2 + 1/2*1/4 = 3/8 ; token 2: 1/2*1/4 + 1/2*3/4 = 1/2
    #            nll = -log(3/8) - log(1/2) = log(8/3 * 2) = log(16/3)
    # example 1: token 1: 1/4*1 + 3/4*1/3 = 1/2  -> nll = log 2
    # (with the junk pad log(1/8), an unmasked pad would add log 8 to each)
    assert_close(out, [math.log(16.0 / 3.0), LOG2])


def test_rag_token_nll_differs_from_rag_sequence_and_grad_ignores_padding():
    log_prior = logs([0.5, 0.5])
    tok = torch.tensor([[[math.log(0.5), math.log(0.25), -5.0],
                         [math.log(0.25), math.log(0.75), -5.0]]], dtype=torch.float64, requires_grad=True)
    mask = f64([1.0, 1.0, 0.0])
    out = rag_token_nll(log_prior, tok, mask)
    out.sum().backward()
    # per-token posterior over passages:
    #   token 1: [1/4, 1/8] / (3/8) = [2/3, 1/3] ; token 2: [1/8, 3/8] / (1/2) = [1/4, 3/4]
    # gradient of -log(marginal) w.r.t. token log-probs = -posterior ; padding gets 0
    assert_close(tok.grad, [[[-2.0 / 3.0, -0.25, 0.0], [-1.0 / 3.0, -0.75, 0.0]]])
    # RAG-Sequence on the same numbers: p_g = [1/8, 3/16]; 1/2*1/8 + 1/2*3/16 = 5/32 -> log(32/5) != log(16/3)
    assert abs(out.item() - math.log(32.0 / 5.0)) > 0.1


# =========================================================================== #
# vrag
# =========================================================================== #


def test_kl_categorical_known_values():
    log_q = logs([0.5, 0.5], [1.0, 0.0], [0.25, 0.75])
    log_p = logs([0.25, 0.75], [0.5, 0.5], [0.5, 0.5])
    # row 0: 1/2 log(1/2 / 1/4) + 1/2 log(1/2 / 3/4) = 1/2 log 2 + 1/2 log(2/3) = 1/2 log(4/3)
    # row 1: 1 * log(1 / 1/2) + 0 = log 2            (q_k = 0 contributes 0)
    # row 2: 1/4 log(1/4 / 1/2) + 3/4 log(3/4 / 1/2) = -1/4 log 2 + 3/4 log(3/2)   (argument order matters:
    #        this differs from row 0, which is the same pair of distributions swapped)
    expected = [0.5 * math.log(4.0 / 3.0), LOG2, -0.25 * LOG2 + 0.75 * math.log(1.5)]
    assert_close(kl_categorical(log_q, log_p), expected)


def test_kl_categorical_zero_for_equal_and_masked_entries_ignored():
    log_q = logs([0.25, 0.5, 0.25], [0.5, 0.5, 0.0]).requires_grad_(True)
    log_p = logs([0.25, 0.5, 0.25], [0.25, 0.75, 0.0]).requires_grad_(True)   # third entry masked in row 1
    kl = kl_categorical(log_q, log_p)
    # row 0: identical -> 0 ; row 1: masked entry ignored -> 1/2 log(4/3)
    assert_close(kl, [0.0, 0.5 * math.log(4.0 / 3.0)])
    kl.sum().backward()
    assert not torch.isnan(log_q.grad).any() and not torch.isnan(log_p.grad).any()
    # dKL/dlog p_k = -q_k ; masked entry 0
    assert_close(log_p.grad, [[-0.25, -0.5, -0.25], [-0.5, -0.5, 0.0]])
    # dKL/dlog q_k (log q treated as free coordinates) = q_k (log q_k - log p_k + 1):
    #   row 0: q_k * 1 = [1/4, 1/2, 1/4]
    #   row 1: 1/2 (log 2 + 1), 1/2 (log(2/3) + 1), 0
    assert_close(log_q.grad, [[0.25, 0.5, 0.25],
                              [0.5 * (LOG2 + 1), 0.5 * (math.log(2.0 / 3.0) + 1), 0.0]])


def test_vrag_elbo_exact_hand_value_and_bound():
    log_q = logs([0.5, 0.5])
    log_prior = logs([0.25, 0.75])
    seq = logs([0.5, 0.25])
    elbo = vrag_elbo_exact(log_q, log_prior, seq)
    # E_q[log p_g] = 1/2 log(1/2) + 1/2 log(1/4) = log(1/(2*sqrt2))... = 1/2 log(1/8)
    # KL(q||p_r) = 1/2 log(4/3)  (see test above)
    # ELBO = 1/2 log(1/8) - 1/2 log(4/3) = 1/2 log(3/32)
    assert_close(elbo, [0.5 * math.log(3.0 / 32.0)])
    # log marginal = log(1/4*1/2 + 3/4*1/4) = log(1/8 + 3/16) = log(5/16);  sqrt(3/32) ~ 0.306 < 0.3125
    assert elbo.item() < math.log(5.0 / 16.0)


def test_vrag_elbo_exact_equals_log_marginal_at_exact_posterior():
    # p_r = [1/4, 3/4, masked], p_g = [1/2, 1/6, 1]: joint = [1/8, 1/8, 0], marginal 1/4,
    # exact posterior over the candidates = [1/2, 1/2, 0]; with q = that, ELBO = log p(y|x) = log(1/4).
    log_prior = logs([0.25, 0.75, 0.0])
    seq = logs([0.5, 1.0 / 6.0, 1.0])
    log_q = logs([0.5, 0.5, 0.0])
    assert_close(vrag_elbo_exact(log_q, log_prior, seq), [math.log(0.25)])


def test_vrag_elbo_exact_lower_bound_random():
    g = torch.Generator().manual_seed(0)
    log_prior = torch.log_softmax(torch.randn(200, 6, generator=g, dtype=torch.float64) * 2, -1)
    log_q = torch.log_softmax(torch.randn(200, 6, generator=g, dtype=torch.float64) * 2, -1)
    seq = -torch.rand(200, 6, generator=g, dtype=torch.float64) * 10
    elbo = vrag_elbo_exact(log_q, log_prior, seq)
    log_marginal = torch.logsumexp(log_prior + seq, -1)   # reference: log sum_k p_r p_g
    assert (elbo <= log_marginal + 1e-9).all()
    assert (elbo < log_marginal - 1e-6).any()


def test_leave_one_out_baseline():
    x = f64([1.0, 2.0, 3.0, 6.0], [5.0, -1.0, 0.0, 0.0])
    # row 0: sum 12 -> [(12-1)/3, (12-2)/3, (12-3)/3, (12-6)/3] = [11/3, 10/3, 3, 2]
    # row 1: sum 4  -> [(4-5)/3, (4+1)/3, 4/3, 4/3] = [-1/3, 5/3, 4/3, 4/3]
    assert_close(leave_one_out_baseline(x), [[11 / 3, 10 / 3, 3.0, 2.0], [-1 / 3, 5 / 3, 4 / 3, 4 / 3]])
    # S = 2: each baseline is the other draw
    assert_close(leave_one_out_baseline(f64([-1.5, -4.0])), [[-4.0, -1.5]])


def test_vrag_surrogate_sampled_value_and_score_function_gradient():
    log_q_s = logs([0.5, 0.25, 0.5, 0.125]).requires_grad_(True)     # log q(h_s), a leaf
    loglik = f64([-1.0, -2.0, -3.0, -6.0]).requires_grad_(True)     # log p_g(y|x,h_s)
    # leave-one-out by hand: sum -12 -> b = [-11/3, -10/3, -3, -2]
    baseline = f64([-11 / 3, -10 / 3, -3.0, -2.0])
    kl = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    out = vrag_surrogate_sampled(log_q_s, loglik, baseline, kl)
    # value: plain sampled ELBO = mean(-1, -2, -3, -6) - 0.5 = -3 - 0.5 = -3.5
    assert_close(out, [-3.5])
    out.sum().backward()
    # d/dlog q(h_s) = (loglik_s - b_s) / S = [(-1+11/3), (-2+10/3), 0, (-6+2)] / 4 = [2/3, 1/3, 0, -1]
    assert_close(log_q_s.grad, [[2 / 3, 1 / 3, 0.0, -1.0]])
    # d/dloglik_s = 1/S ; d/dKL = -1
    assert_close(loglik.grad, [[0.25] * 4])
    assert_close(kl.grad, [-1.0])


def test_vrag_surrogate_sampled_no_baseline_and_duplicate_samples_accumulate():
    # full log q over K = 3 candidates as the leaf; samples [0, 2, 0] (candidate 0 drawn twice)
    log_q = logs([0.5, 0.25, 0.25]).requires_grad_(True)
    samples = torch.tensor([[0, 2, 0]])
    loglik_k = f64([-1.0, -7.0, -4.0])
    loglik_s = loglik_k.gather(1, samples)                         # [-1, -4, -1]
    out = vrag_surrogate_sampled(log_q.gather(1, samples), loglik_s, torch.zeros_like(loglik_s),
                                 torch.zeros(1, dtype=torch.float64))
    # value: (-1 - 4 - 1) / 3 = -2
    assert_close(out, [-2.0])
    out.sum().backward()
    # zero baseline: each draw contributes loglik_s / S to its candidate:
    #   candidate 0: (-1 + -1)/3 = -2/3 ; candidate 1: never drawn -> 0 ; candidate 2: -4/3
    assert_close(log_q.grad, [[-2 / 3, 0.0, -4 / 3]])


def test_vrag_surrogate_gradient_does_not_leak_through_undetached_baseline():
    loglik = f64([-1.0, -2.0, -3.0, -6.0]).requires_grad_(True)
    log_q_s = logs([0.5, 0.25, 0.5, 0.125]).requires_grad_(True)
    baseline = leave_one_out_baseline(loglik)      # NOT detached on purpose
    out = vrag_surrogate_sampled(log_q_s, loglik, baseline, torch.zeros(1, dtype=torch.float64))
    out.sum().backward()
    assert_close(loglik.grad, [[0.25] * 4])         # the baseline only enters the (detached) advantage
    assert_close(log_q_s.grad, [[2 / 3, 1 / 3, 0.0, -1.0]])


# =========================================================================== #
# jsa: importance weights, losses, the chain
# =========================================================================== #


def test_log_importance_weights():
    log_prior = logs([0.5, 0.25, 0.25])
    seq = logs([0.5, 0.25, 1.0])
    log_q = logs([0.25, 0.5, 0.25])
    # w = p_r p_g / q = [1/2*1/2*4, 1/4*1/4*2, 1/4*1*4] = [1, 1/8, 1]
    assert_close(log_importance_weights(log_prior, seq, log_q), logs([1.0, 0.125, 1.0]))


def test_jsa_losses_hand_values_and_gradients():
    # 4 candidates, the 4th masked; chain of m = 4 states: candidate 0 three times, candidate 2 once.
    weights = f64([0.75, 0.0, 0.25, 0.0])
    # candidate 1 was never a state (never scored: any value, even -inf, must be ignored)
    seq = torch.tensor([[math.log(0.5), -INF, math.log(0.25), 0.0]], dtype=torch.float64, requires_grad=True)
    log_prior = logs([0.25, 0.25, 0.5, 0.0]).requires_grad_(True)
    log_post = logs([0.25, 0.5, 0.25, 0.0]).requires_grad_(True)
    gen, prior, post = jsa_losses(weights, seq, log_prior, log_post)
    # gen   = -(3/4 log 1/2 + 1/4 log 1/4) = 3/4 log 2 + 2/4 log 2 = 5/4 log 2
    # prior = -(3/4 log 1/4 + 1/4 log 1/2) = 6/4 log 2 + 1/4 log 2 = 7/4 log 2
    # post  = -(3/4 log 1/4 + 1/4 log 1/4) = log 4 = 2 log 2
    assert_close(gen, [1.25 * LOG2])
    assert_close(prior, [1.75 * LOG2])
    assert_close(post, [2.0 * LOG2])
    (gen + prior + post).sum().backward()
    # each loss is -sum_k w_k x_k: gradient -w, zero on never-visited / masked entries, no NaN
    for g in (seq.grad, log_prior.grad, log_post.grad):
        assert_close(g, [[-0.75, 0.0, -0.25, 0.0]])


def test_jsa_losses_accept_float32_counts_from_count_states():
    # the estimator passes count_states(...) / M (default float dtype) with float64 log-probs
    weights = count_states(torch.tensor([[0, 0, 2, 0]]), 3) / 4     # [3/4, 0, 1/4]
    gen, prior, post = jsa_losses(weights, logs([0.5, 0.3, 0.25]), logs([0.25, 0.25, 0.5]),
                                  logs([0.25, 0.5, 0.25]))
    assert_close(gen, [1.25 * LOG2])
    assert_close(prior, [1.75 * LOG2])
    assert_close(post, [2.0 * LOG2])


# log w = log [1, 1/2, 1/4] = [0, -log 2, -log 4]
CHAIN_LOG_W = logs([1.0, 0.5, 0.25])


def test_mis_chain_without_init_traced_by_hand():
    proposals = torch.tensor([[1, 2, 0, 2, 1, 1, 1]])
    log_u = torch.tensor([[
        -5.0,               # i=0: ignored: the chain starts at proposal 0 (= 1), counted accepted
        math.log(0.4),      # i=1: 1 -> 2: log w diff = -log4 + log2 = -log2 ~ -0.693; -0.916 < -0.693 accept
        0.0,                # i=2: 2 -> 0: diff = +log 4 > 0 = log_u: accept (uphill always accepted)
        math.log(0.3),      # i=3: 0 -> 2: diff = -log 4 ~ -1.386; -1.204 > -1.386: reject, stay at 0
        math.log(0.6),      # i=4: 0 -> 1: diff = -log 2 ~ -0.693; -0.511 > -0.693: reject, stay at 0
        math.log(0.45),     # i=5: 0 -> 1: diff = -log 2; -0.799 < -0.693: accept -> 1
        math.log(0.99),     # i=6: 1 -> 1: diff = 0; -0.01 < 0: accept (stays 1)
    ]], dtype=torch.float64)
    states, accepted = mis_chain(CHAIN_LOG_W, proposals, log_u)
    assert states.tolist() == [[1, 2, 0, 0, 0, 1, 1]]
    assert accepted.tolist() == [[True, True, True, False, False, True, True]]
    assert accepted.dtype == torch.bool


def test_mis_chain_with_init_traced_by_hand():
    # chain 0: starts at cached state 2 (log w = -log 4)
    # chain 1: starts at cached state 0 (log w = 0) and rejects its first proposal
    log_w = torch.cat([CHAIN_LOG_W, CHAIN_LOG_W])
    proposals = torch.tensor([[0, 1, 1, 2],
                              [2, 1, 0, 2]])
    log_u = torch.tensor([
        # chain 0
        [math.log(0.5),      # 2 -> 0: diff = +log 4: accept -> 0
         math.log(0.75),     # 0 -> 1: diff = -log 2 ~ -0.693; -0.288 > -0.693: reject, stay 0
         math.log(0.25),     # 0 -> 1: -1.386 < -0.693: accept -> 1
         math.log(0.6)],     # 1 -> 2: diff = -log 4 + log 2 = -log 2; -0.511: reject, stay 1
        # chain 1
        [math.log(0.5),      # 0 -> 2: diff = -log 4 ~ -1.386; -0.693: reject, stay at init 0
         math.log(0.4),      # 0 -> 1: diff = -log 2; -0.916 < -0.693: accept -> 1
         math.log(0.9),      # 1 -> 0: diff = +log 2: accept -> 0
         math.log(0.2)],     # 0 -> 2: diff = -log 4 ~ -1.386; log 0.2 ~ -1.609 < -1.386: accept -> 2
    ], dtype=torch.float64)
    init = torch.tensor([2, 0])
    states, accepted = mis_chain(log_w, proposals, log_u, init)
    assert states.tolist() == [[0, 0, 1, 1], [0, 1, 0, 2]]
    assert accepted.tolist() == [[True, False, True, False], [False, True, True, True]]


def test_mis_chain_acceptance_is_strict_inequality():
    # current state 0 (log w = 0), proposal 1 (log w = -log 2): diff is exactly -log 2.
    log_w = CHAIN_LOG_W
    proposals = torch.tensor([[1, 1]])
    init = torch.tensor([0])
    diff = log_w[0, 1].item() - log_w[0, 0].item()                   # = -log 2 exactly (minus 0)
    # log_u == diff -> reject (u < ratio is required), log_u just below -> accept
    tie = torch.tensor([[diff, diff]], dtype=torch.float64)
    states, accepted = mis_chain(log_w, proposals, tie, init)
    assert states.tolist() == [[0, 0]] and accepted.tolist() == [[False, False]]
    below = torch.nextafter(torch.tensor(diff, dtype=torch.float64), torch.tensor(-INF, dtype=torch.float64))
    states, accepted = mis_chain(log_w, proposals, torch.stack([below, below])[None], init)
    assert states.tolist() == [[1, 1]] and accepted.tolist() == [[True, True]]


# --------------------------------------------------------------------------- #
# sampler correctness (statistical): the chain's states follow the target, not the proposal
# --------------------------------------------------------------------------- #

# 8 candidates. p_r and q are proper distributions; q is deliberately unlike the target.
P_R = torch.tensor([0.30, 0.20, 0.15, 0.10, 0.10, 0.05, 0.05, 0.05], dtype=torch.float64)
Q = torch.tensor([0.25, 0.20, 0.15, 0.12, 0.10, 0.08, 0.06, 0.04], dtype=torch.float64)
P_G = torch.tensor([0.01, 0.02, 0.05, 0.10, 0.20, 0.40, 0.60, 0.30], dtype=torch.float64)
# exact posterior: p_r * p_g = [0.003, 0.004, 0.0075, 0.01, 0.02, 0.02, 0.03, 0.015], Z = 0.1095
EXACT_POSTERIOR = torch.tensor([0.003, 0.004, 0.0075, 0.01, 0.02, 0.02, 0.03, 0.015],
                               dtype=torch.float64) / 0.1095

# tempered case: each answer has |y| = 4 tokens; candidate k's token probabilities are
# g_k * [1.1, 0.9, 1, 1/0.99] (the factors multiply to 1), so the per-token geometric mean is g_k and
# p_g(y|h_k) = g_k^4.
G = torch.tensor([0.1, 0.2, 0.3, 0.5, 0.6, 0.8, 0.9, 0.4], dtype=torch.float64)
TOKEN_FACTORS = torch.tensor([1.1, 0.9, 1.0, 1.0 / 0.99], dtype=torch.float64)
# tempered target p_r * p_g^(1/4) = p_r * g = [0.03, 0.04, 0.045, 0.05, 0.06, 0.04, 0.045, 0.02], Z = 0.33
TEMPERED_POSTERIOR = torch.tensor([0.03, 0.04, 0.045, 0.05, 0.06, 0.04, 0.045, 0.02],
                                  dtype=torch.float64) / 0.33
# the untempered posterior for the same answer: p_r * g^4 / Z (the WRONG target for reduction=mean)
_untempered = P_R * G ** 4
UNTEMPERED_POSTERIOR = _untempered / _untempered.sum()

CHAINS, STEPS, BURN_IN = 2000, 200, 50   # 2000 * 150 = 300k kept states; runs in well under a second


def _empirical_chain_distribution(log_w_row: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    K = log_w_row.shape[-1]
    proposals = torch.multinomial(Q.expand(CHAINS, K), STEPS, replacement=True, generator=g)   # ~ q
    log_u = torch.rand(CHAINS, STEPS, generator=g, dtype=torch.float64).log()
    states, accepted = mis_chain(log_w_row.expand(CHAINS, K), proposals, log_u)
    assert states.shape == (CHAINS, STEPS)
    kept = states[:, BURN_IN:].reshape(-1)
    return torch.bincount(kept, minlength=K).double() / kept.numel()


def test_mis_chain_samples_exact_posterior_reduction_sum():
    torch.manual_seed(0)
    log_w = log_importance_weights(P_R.log()[None], P_G.log()[None], Q.log()[None])
    freq = _empirical_chain_distribution(log_w, seed=1234)
    assert tv(EXACT_POSTERIOR, Q) > 0.3 and tv(EXACT_POSTERIOR, P_R) > 0.3   # the toy is not trivial
    assert tv(freq, EXACT_POSTERIOR) < 0.02, (freq.tolist(), EXACT_POSTERIOR.tolist())
    # a sampler that ignored the weights would reproduce q (or p_r): must be far from both
    assert tv(freq, Q) > 0.05
    assert tv(freq, P_R) > 0.05


def test_mis_chain_samples_tempered_posterior_reduction_mean():
    torch.manual_seed(0)
    token_logp = (G[:, None] * TOKEN_FACTORS[None, :]).log()        # [K, |y|]
    assert (token_logp < 0).all()                                   # valid token probabilities
    seq_sum = token_logp.sum(-1)                                     # log p_g(y|h), reduction "sum"
    seq_mean = seq_sum / token_logp.shape[1]                         # reduction "mean": / |y|
    log_w = log_importance_weights(P_R.log()[None], seq_mean[None], Q.log()[None])
    freq = _empirical_chain_distribution(log_w, seed=4321)
    assert tv(TEMPERED_POSTERIOR, UNTEMPERED_POSTERIOR) > 0.3
    assert tv(freq, TEMPERED_POSTERIOR) < 0.02, (freq.tolist(), TEMPERED_POSTERIOR.tolist())
    assert tv(freq, UNTEMPERED_POSTERIOR) > 0.05
    assert tv(freq, Q) > 0.05


def test_mis_chain_with_init_also_converges():
    # cached start (every chain starts at candidate 0, far from the target's mode): same stationary law
    g = torch.Generator().manual_seed(7)
    K = 8
    log_w = log_importance_weights(P_R.log()[None], P_G.log()[None], Q.log()[None]).expand(CHAINS, K)
    proposals = torch.multinomial(Q.expand(CHAINS, K), STEPS, replacement=True, generator=g)
    log_u = torch.rand(CHAINS, STEPS, generator=g, dtype=torch.float64).log()
    states, _ = mis_chain(log_w, proposals, log_u, torch.zeros(CHAINS, dtype=torch.long))
    kept = states[:, BURN_IN:].reshape(-1)
    freq = torch.bincount(kept, minlength=K).double() / kept.numel()
    assert tv(freq, EXACT_POSTERIOR) < 0.02
    assert tv(freq, Q) > 0.05
