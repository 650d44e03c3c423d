"""Tests for jsarag.eval.metrics; every expected number is derived by hand in a comment."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jsarag.eval.metrics import (
    bleu,
    exact_match,
    generation_metrics,
    mrr_at_k,
    normalize_answer,
    recall_at_k,
    retrieval_metrics,
    rouge,
    token_f1,
)

# --------------------------------------------------------------------------- #
# normalisation
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # case folding
        ("Paris", "paris"),
        # articles removed as whole words only ("another", "theme", "anew" keep theirs)
        ("The cat and a dog ate an apple", "cat and dog ate apple"),
        ("another theme anew", "another theme anew"),
        # punctuation is *deleted* (not replaced by a space): "U.S." -> "us", "it's" -> "its"
        ("U.S.A.!", "usa"),
        ("it's (maybe) true?", "its maybe true"),
        # articles are removed after punctuation, so "the," is still an article
        ("the, end", "end"),
        # whitespace collapsed and stripped (tabs/newlines included)
        ("  hello \t\n  world  ", "hello world"),
        # all of it together
        ("  The  Cat's   HAT!  ", "cats hat"),
        # only articles / punctuation -> empty
        ("The a an", ""),
        ("?!.", ""),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


# --------------------------------------------------------------------------- #
# exact match
# --------------------------------------------------------------------------- #


def test_exact_match_after_normalisation() -> None:
    # "The Eiffel Tower." -> "eiffel tower" == "eiffel tower"
    assert exact_match("The Eiffel Tower.", ["eiffel tower"]) == 1.0
    # "eiffel" != "eiffel tower"
    assert exact_match("Eiffel", ["eiffel tower"]) == 0.0


def test_exact_match_max_over_golds() -> None:
    # first gold differs, second matches after normalisation -> max = 1
    assert exact_match("Barack Obama", ["Obama", "barack obama!"]) == 1.0
    # none matches -> 0
    assert exact_match("Biden", ["Obama", "Barack Obama"]) == 0.0


def test_exact_match_empty_vs_empty_is_one() -> None:
    # both normalise to "" -> strings equal -> 1 (as in the v1.1 script)
    assert exact_match("The", ["!"]) == 1.0


# --------------------------------------------------------------------------- #
# token F1
# --------------------------------------------------------------------------- #


def test_token_f1_partial_overlap() -> None:
    # pred "the cat sat on mat" -> [cat, sat, on, mat]; gold "a cat sat" -> [cat, sat]
    # shared = 2; precision = 2/4, recall = 2/2; F1 = 2*(1/2)*1 / (1/2 + 1) = 2/3
    assert token_f1("the cat sat on mat", ["a cat sat"]) == pytest.approx(2 / 3)


def test_token_f1_counts_multiplicity() -> None:
    # pred [cat, cat, cat] vs gold [cat, dog]: multiset intersection = {cat: 1}
    # precision = 1/3, recall = 1/2; F1 = 2*(1/6)/(5/6) = 2/5
    assert token_f1("cat cat cat", ["cat dog"]) == pytest.approx(0.4)


def test_token_f1_max_over_golds() -> None:
    # vs "cat sat": 2/3 (see above); vs "the cat sat on the mat" -> [cat, sat, on, mat]
    # identical bag -> 1.0; max = 1.0
    assert token_f1("the cat sat on mat", ["a cat sat", "the cat sat on the mat"]) == 1.0
    # vs "dog": 0; vs "cat": precision 1/4, recall 1/1 -> F1 = 2*(1/4)/(5/4) = 2/5
    assert token_f1("the cat sat on mat", ["dog", "cat"]) == pytest.approx(0.4)


def test_token_f1_no_overlap_and_empty_cases() -> None:
    # no shared token -> 0
    assert token_f1("paris", ["london"]) == 0.0
    # SQuAD v1.1: empty-vs-empty has no common token -> 0 (EM is 1 for the same pair)
    assert token_f1("the", ["a"]) == 0.0
    # empty prediction vs non-empty gold -> 0
    assert token_f1("", ["paris"]) == 0.0


def test_em_f1_reject_bad_golds() -> None:
    with pytest.raises(ValueError):
        exact_match("x", [])
    with pytest.raises(ValueError):
        token_f1("x", [])
    # a bare string would silently be iterated character by character
    with pytest.raises(TypeError):
        exact_match("x", "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        token_f1("x", "x")  # type: ignore[arg-type]


_words = st.lists(
    st.sampled_from(["the", "a", "cat", "dog", "Sat", "on", "mat", "mat.", "!", "an"]),
    max_size=8,
).map(" ".join)


@given(pred=_words, gold=_words)
def test_em_f1_properties(pred: str, gold: str) -> None:
    em = exact_match(pred, [gold])
    f1 = token_f1(pred, [gold])
    assert em in (0.0, 1.0)
    assert 0.0 <= f1 <= 1.0
    # EM implies F1 = 1 unless both sides are empty after normalisation (v1.1 rule)
    if em == 1.0 and normalize_answer(pred):
        assert f1 == pytest.approx(1.0)
    # symmetric for a single gold
    assert token_f1(gold, [pred]) == pytest.approx(f1)


# --------------------------------------------------------------------------- #
# BLEU
# --------------------------------------------------------------------------- #


def test_bleu_perfect_match() -> None:
    # identical 5-token sentences (>= 4 tokens so 4-gram precision is defined):
    # all n-gram precisions 1, BP 1 -> 100 for both
    out = bleu(["the cat sat on mats"], [["the cat sat on mats"]])
    assert out["bleu1"] == pytest.approx(100.0)
    assert out["bleu4"] == pytest.approx(100.0)


def test_bleu_no_shared_word() -> None:
    # zero matching unigrams (hence zero n-grams of any order) -> sacrebleu returns 0
    out = bleu(["foo bar baz qux"], [["one two three four"]])
    assert out == {"bleu1": 0.0, "bleu4": 0.0}


def test_bleu_hand_computed() -> None:
    # hyp "the cat sat down" vs ref "the cat sat up" (13a tokens are just the words):
    # lengths 4 vs 4 -> BP = 1.
    # BLEU-1 = unigram precision = 3/4 -> 75.0
    # BLEU-4: p1 = 3/4, p2 = 2/3 (the cat, cat sat), p3 = 1/2 (the cat sat),
    #   p4 = 0/1 -> sacrebleu 'exp' smoothing gives 1/(2*1) = 1/2;
    #   geometric mean = (3/4 * 2/3 * 1/2 * 1/2) ** (1/4) = (1/8) ** (1/4) -> 59.46...
    out = bleu(["the cat sat down"], [["the cat sat up"]])
    assert out["bleu1"] == pytest.approx(75.0)
    assert out["bleu4"] == pytest.approx(100.0 * (1 / 8) ** 0.25)


def test_bleu_variable_number_of_references() -> None:
    # example 1: hyp "a" (1 token), one ref "a b c" (3 tokens); 1/1 unigram match
    # example 2: hyp "p q r" (3 tokens), refs "p q r" / "p q"; closest ref length 3; 3/3 match
    # corpus: hyp length 4, ref length 3 + 3 = 6, unigram precision 4/4
    # BLEU-1 = exp(1 - 6/4) * 1 = exp(-0.5) -> 60.65...
    # (if example 1 were padded with "" instead of dropping the missing ref, the
    #  closest ref length would be 0 and BP would wrongly become 1 -> 100)
    out = bleu(["a", "p q r"], [["a b c"], ["p q r", "p q"]])
    assert out["bleu1"] == pytest.approx(100.0 * math.exp(-0.5))
    # order of examples must not matter
    out2 = bleu(["p q r", "a"], [["p q r", "p q"], ["a b c"]])
    assert out2["bleu1"] == pytest.approx(out["bleu1"])


def test_bleu_multi_reference_takes_clipped_max() -> None:
    # hyp "cat cat" vs refs "cat dog" and "cat cat": max ref count of "cat" = 2
    # -> unigram precision 2/2; closest ref length 2 -> BP 1 -> BLEU-1 = 100
    out = bleu(["cat cat"], [["cat dog", "cat cat"]])
    assert out["bleu1"] == pytest.approx(100.0)


# --------------------------------------------------------------------------- #
# ROUGE
# --------------------------------------------------------------------------- #


def test_rouge_hand_computed_with_stemming() -> None:
    # rouge_score tokens (lowercase, Porter stem for len > 3):
    #   pred "the cats are sitting" -> [the, cat, are, sit]; gold "the cat sat" -> [the, cat, sat]
    # ROUGE-1: overlap {the, cat} = 2; P = 2/4, R = 2/3; F = 2PR/(P+R) = (2/3)/(7/6) = 4/7
    # ROUGE-2: pred bigrams {the cat, cat are, are sit}, gold {the cat, cat sat}; overlap 1
    #   P = 1/3, R = 1/2; F = (1/3)/(5/6) = 2/5
    # ROUGE-L: LCS = "the cat" = 2 -> same as ROUGE-1 = 4/7
    out = rouge(["the cats are sitting"], [["the cat sat"]])
    assert out["rouge1"] == pytest.approx(100 * 4 / 7)
    assert out["rouge2"] == pytest.approx(100 * 2 / 5)
    assert out["rougeL"] == pytest.approx(100 * 4 / 7)


def test_rouge_max_over_golds_and_mean_over_examples() -> None:
    # example 1: pred "the cat sat on the mat" (6 tokens)
    #   vs "the cat sat": R1 overlap 3 -> P 1/2, R 1 -> F 2/3
    #   vs "dog": 0  -> max R1 = 2/3
    #   R2: pred bigrams 5, gold 2, overlap 2 -> P 2/5, R 1 -> F 4/7
    #   RL: LCS 3 -> F 2/3
    # example 2: exact match -> all 1
    # means: R1 = (2/3 + 1)/2 = 5/6; R2 = (4/7 + 1)/2 = 11/14; RL = 5/6
    out = rouge(
        ["the cat sat on the mat", "hello world"],
        [["dog", "the cat sat"], ["hello world"]],
    )
    assert out["rouge1"] == pytest.approx(100 * 5 / 6)
    assert out["rouge2"] == pytest.approx(100 * 11 / 14)
    assert out["rougeL"] == pytest.approx(100 * 5 / 6)


# --------------------------------------------------------------------------- #
# retrieval
# --------------------------------------------------------------------------- #

# A: first positive at rank 2;  B: at rank 3;  C: no positives (excluded);
# D: at rank 1;  E: positive never retrieved.  Counted examples: A, B, D, E (4).
RETRIEVED = [
    ["d1", "d2", "d3"],
    ["d4", "d5", "d6"],
    ["d7", "d8"],
    ["d9", "d10"],
    ["d11"],
]
POSITIVES = [["d2"], ["d6", "zz"], [], ["d9", "d10"], ["x"]]


def test_recall_at_k_hand_computed() -> None:
    # @1: only D -> 1/4; @2: A, D -> 2/4; @3: A, B, D -> 3/4; @10: still 3/4
    assert recall_at_k(RETRIEVED, POSITIVES, 1) == pytest.approx(1 / 4)
    assert recall_at_k(RETRIEVED, POSITIVES, 2) == pytest.approx(2 / 4)
    assert recall_at_k(RETRIEVED, POSITIVES, 3) == pytest.approx(3 / 4)
    assert recall_at_k(RETRIEVED, POSITIVES, 10) == pytest.approx(3 / 4)


def test_mrr_at_k_hand_computed() -> None:
    # @1: D = 1 -> 1/4
    # @2: A = 1/2, D = 1 -> (3/2)/4 = 3/8
    # @3: A = 1/2, B = 1/3, D = 1, E = 0 -> (11/6)/4 = 11/24
    assert mrr_at_k(RETRIEVED, POSITIVES, 1) == pytest.approx(1 / 4)
    assert mrr_at_k(RETRIEVED, POSITIVES, 2) == pytest.approx(3 / 8)
    assert mrr_at_k(RETRIEVED, POSITIVES, 3) == pytest.approx(11 / 24)


def test_retrieval_no_positives_gives_nan() -> None:
    assert math.isnan(recall_at_k([["a"], ["b"]], [[], []], 1))
    assert math.isnan(mrr_at_k([["a"], ["b"]], [[], []], 1))
    assert math.isnan(recall_at_k([], [], 5))


def test_retrieval_metrics_defaults() -> None:
    # recall@1 = 1/4, recall@5 = recall@10 = 3/4 (see above); mrr@10 = 11/24
    out = retrieval_metrics(RETRIEVED, POSITIVES)
    assert list(out) == ["recall@1", "recall@5", "recall@10", "mrr@10"]
    assert out["recall@1"] == pytest.approx(1 / 4)
    assert out["recall@5"] == pytest.approx(3 / 4)
    assert out["recall@10"] == pytest.approx(3 / 4)
    assert out["mrr@10"] == pytest.approx(11 / 24)


def test_retrieval_metrics_custom_ks() -> None:
    # mrr is taken at max(ks) = 2 -> 3/8
    out = retrieval_metrics(RETRIEVED, POSITIVES, ks=(2, 1))
    assert out == pytest.approx({"recall@2": 0.5, "recall@1": 0.25, "mrr@2": 3 / 8})


def test_retrieval_validation() -> None:
    with pytest.raises(ValueError, match="retrieved.*positives"):
        recall_at_k([["a"]], [["a"], ["b"]], 1)
    with pytest.raises(ValueError, match="retrieved.*positives"):
        mrr_at_k([["a"], ["b"]], [["a"]], 1)
    with pytest.raises(ValueError, match="k"):
        recall_at_k([["a"]], [["a"]], 0)
    with pytest.raises(ValueError, match="k"):
        mrr_at_k([["a"]], [["a"]], -1)
    with pytest.raises(ValueError):
        retrieval_metrics([["a"]], [["a"]], ks=())
    with pytest.raises(ValueError):
        retrieval_metrics([["a"]], [["a"]], ks=(1, 0))


# --------------------------------------------------------------------------- #
# aggregate generation metrics
# --------------------------------------------------------------------------- #


def test_generation_metrics_keys_and_em_f1() -> None:
    preds = ["the cat sat on mat", "Paris"]
    refs = [["a cat sat"], ["paris", "Paris, France"]]
    out = generation_metrics(preds, refs)
    assert set(out) == {"em", "f1", "bleu1", "bleu4", "rouge1", "rouge2", "rougeL"}
    # EM: 0 and 1 -> mean 1/2 -> 50
    assert out["em"] == pytest.approx(50.0)
    # F1: 2/3 (hand-computed above) and 1 -> mean 5/6 -> 83.33...
    assert out["f1"] == pytest.approx(100 * 5 / 6)
    # the rest are exactly what bleu()/rouge() return
    assert out["bleu1"] == pytest.approx(bleu(preds, refs)["bleu1"])
    assert out["rougeL"] == pytest.approx(rouge(preds, refs)["rougeL"])


@pytest.mark.parametrize("fn", [bleu, rouge, generation_metrics])
def test_generation_validation(fn) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="predictions.*references"):
        fn(["a", "b"], [["a"]])
    with pytest.raises(ValueError):
        fn([], [])
    with pytest.raises(ValueError):
        fn(["a"], [[]])
