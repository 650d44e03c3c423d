"""Evaluation metrics for retrieval-augmented generation.

Everything here is a pure function: no I/O, no torch, no global mutable state
(apart from a cached, read-only ROUGE scorer).

Generation metrics
------------------
* :func:`normalize_answer`, :func:`exact_match`, :func:`token_f1` follow the
  official SQuAD v1.1 evaluation script semantics (reimplemented here):
  lowercase, strip ASCII punctuation, drop the articles ``a``/``an``/``the``,
  collapse whitespace; F1 is computed over the bag (multiset) of normalised
  tokens; both metrics take the maximum over the gold answers.
* :func:`bleu` wraps ``sacrebleu`` (corpus-level BLEU-1 and BLEU-4, default
  ``13a`` tokenisation, case-sensitive, default ``exp`` smoothing).
* :func:`rouge` wraps ``rouge_score`` (ROUGE-1/2/L F-measure with the Porter
  stemmer, max over golds, averaged over examples).

Retrieval metrics
-----------------
* :func:`recall_at_k` and :func:`mrr_at_k` operate on ranked lists of passage
  ids; examples without any positive passage are excluded from the mean.

Scales: EM, F1, BLEU and ROUGE are reported on a 0-100 scale by the aggregate
functions (:func:`generation_metrics`, :func:`bleu`, :func:`rouge`);
:func:`exact_match` and :func:`token_f1` return per-example values in [0, 1];
recall and MRR are in [0, 1].
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

from sacrebleu.metrics import BLEU

__all__ = [
    "normalize_answer",
    "exact_match",
    "token_f1",
    "bleu",
    "rouge",
    "recall_at_k",
    "mrr_at_k",
    "generation_metrics",
    "retrieval_metrics",
]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
_BLEU_TOKENIZER = "13a"


# --------------------------------------------------------------------------- #
# validation helpers
# --------------------------------------------------------------------------- #


def _check_golds(golds: Sequence[str], what: str = "golds") -> None:
    """Reject a bare string (a common mistake) and an empty list of golds."""
    if isinstance(golds, str):
        raise TypeError(f"{what} must be a sequence of strings, not a single str")
    if len(golds) == 0:
        raise ValueError(f"{what} must contain at least one gold answer")


def _check_same_length(a: Sequence[object], b: Sequence[object], name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(
            f"length mismatch: {name_a} has {len(a)} items but {name_b} has {len(b)}"
        )


def _check_references(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    """Validate a (predictions, references) pair for the corpus-level metrics."""
    if isinstance(predictions, str):
        raise TypeError("predictions must be a sequence of strings, not a single str")
    _check_same_length(predictions, references, "predictions", "references")
    if len(predictions) == 0:
        raise ValueError("predictions and references must be non-empty")
    for i, golds in enumerate(references):
        _check_golds(golds, what=f"references[{i}]")


def _check_k(k: int, name: str = "k") -> None:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"{name} must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"{name} must be >= 1, got {k}")


# --------------------------------------------------------------------------- #
# SQuAD-style EM / F1
# --------------------------------------------------------------------------- #


def normalize_answer(s: str) -> str:
    """Normalise an answer string the way the SQuAD v1.1 script does.

    Steps, in order: lowercase; delete every ASCII punctuation character
    (``string.punctuation``; deleted, not replaced by a space, so ``"U.S."``
    becomes ``"us"``); replace the whole words ``a``, ``an`` and ``the`` by a
    space; collapse runs of whitespace to single spaces and strip the ends.

    >>> normalize_answer("The  Cat's   hat!")
    'cats hat'
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES_RE.sub(" ", s)
    return " ".join(s.split())


def _f1_single(prediction_tokens: list[str], gold_tokens: list[str]) -> float:
    """Bag-of-tokens F1 between two token lists (SQuAD v1.1 semantics)."""
    common = Counter(prediction_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        # v1.1 behaviour: no shared token -> 0, *including* the case where
        # both sides normalise to the empty string.
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(gold_tokens)
    return 2.0 * precision * recall / (precision + recall)


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """Exact match after :func:`normalize_answer`, maximised over the golds.

    Returns 1.0 if the normalised prediction equals any normalised gold and 0.0
    otherwise. Two strings that both normalise to ``""`` (e.g. ``"The"`` and
    ``"!"``) count as an exact match, as in the official SQuAD v1.1 script.

    Raises:
        TypeError: if ``golds`` is a single ``str``.
        ValueError: if ``golds`` is empty.
    """
    _check_golds(golds)
    pred = normalize_answer(prediction)
    return 1.0 if any(pred == normalize_answer(g) for g in golds) else 0.0


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """Token-level F1 (bag of normalised tokens), maximised over the golds.

    Tokens are the whitespace-separated tokens of :func:`normalize_answer`.
    Shared tokens are counted with multiplicity (multiset intersection);
    precision = shared / len(prediction tokens), recall = shared / len(gold
    tokens), F1 = their harmonic mean.

    Empty handling follows the official SQuAD **v1.1** script: whenever the two
    sides share no token the score is 0, which includes the case where both the
    prediction and the gold normalise to the empty string (so, unlike
    :func:`exact_match`, empty-vs-empty scores 0.0 here; the v2.0 script would
    give 1.0).

    Raises:
        TypeError: if ``golds`` is a single ``str``.
        ValueError: if ``golds`` is empty.
    """
    _check_golds(golds)
    pred_tokens = normalize_answer(prediction).split()
    return max(_f1_single(pred_tokens, normalize_answer(g).split()) for g in golds)


# --------------------------------------------------------------------------- #
# BLEU (sacrebleu)
# --------------------------------------------------------------------------- #


def _transpose_references(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """Turn per-example gold lists into sacrebleu's reference *streams*.

    sacrebleu expects ``refs[j][i]`` = the j-th reference of example i, with all
    streams as long as the hypotheses. Examples with fewer golds are padded with
    ``None``, which sacrebleu drops (an empty string would instead be kept as a
    length-0 reference and distort the brevity penalty).
    """
    n_streams = max(len(golds) for golds in references)
    streams: list[list[str | None]] = []
    for j in range(n_streams):
        streams.append([golds[j] if j < len(golds) else None for golds in references])
    return streams


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus-level BLEU-1 and BLEU-4 computed with sacrebleu, on a 0-100 scale.

    ``references[i]`` is the list of gold strings for ``predictions[i]``; the
    number of golds may vary between examples. BLEU-1 is
    ``sacrebleu.metrics.BLEU(max_ngram_order=1)``; BLEU-4 is the standard
    ``BLEU()`` (4-gram, ``exp`` smoothing). Both use sacrebleu's default
    ``13a`` tokeniser, are case-sensitive and are computed at corpus level
    (n-gram counts and lengths summed over the corpus before the geometric mean
    and brevity penalty are applied). Note that when no hypothesis in the
    corpus has 4 tokens, BLEU-4 is (essentially) 0 by construction.

    Returns:
        ``{"bleu1": float, "bleu4": float}``.

    Raises:
        ValueError: on a length mismatch, an empty corpus or an example with no
            gold reference.
    """
    _check_references(predictions, references)
    hyps = list(predictions)
    refs = _transpose_references(references)
    bleu1 = BLEU(tokenize=_BLEU_TOKENIZER, max_ngram_order=1).corpus_score(hyps, refs)
    bleu4 = BLEU(tokenize=_BLEU_TOKENIZER).corpus_score(hyps, refs)
    return {"bleu1": float(bleu1.score), "bleu4": float(bleu4.score)}


# --------------------------------------------------------------------------- #
# ROUGE (rouge-score)
# --------------------------------------------------------------------------- #


@lru_cache(maxsize=1)
def _rouge_scorer():
    # Imported here: rouge_score imports nltk, which imports scipy and scikit-learn (~3 s of every command's
    # start on a slow CPU); only the commands that compute ROUGE pay for it.
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(_ROUGE_TYPES), use_stemmer=True)


def rouge(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures (0-100), averaged over examples.

    Uses ``rouge_score.rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"],
    use_stemmer=True)``; its tokeniser lowercases, keeps only ``[a-z0-9]``
    runs and Porter-stems tokens longer than 3 characters. For each example and
    each ROUGE type independently, the F-measure is maximised over the golds;
    the per-example values are then averaged.

    Returns:
        ``{"rouge1": float, "rouge2": float, "rougeL": float}``.

    Raises:
        ValueError: on a length mismatch, an empty corpus or an example with no
            gold reference.
    """
    _check_references(predictions, references)
    scorer = _rouge_scorer()
    totals = dict.fromkeys(_ROUGE_TYPES, 0.0)
    for pred, golds in zip(predictions, references):
        best = dict.fromkeys(_ROUGE_TYPES, 0.0)
        for gold in golds:
            scores = scorer.score(gold, pred)  # signature: score(target, prediction)
            for rt in _ROUGE_TYPES:
                best[rt] = max(best[rt], scores[rt].fmeasure)
        for rt in _ROUGE_TYPES:
            totals[rt] += best[rt]
    n = len(predictions)
    return {rt: 100.0 * totals[rt] / n for rt in _ROUGE_TYPES}


# --------------------------------------------------------------------------- #
# retrieval
# --------------------------------------------------------------------------- #


def _first_positive_rank(retrieved: Sequence[str], positives: set[str], k: int) -> int | None:
    """1-based rank of the first positive id among the first ``k``, or ``None``."""
    for rank, doc_id in enumerate(retrieved[:k], start=1):
        if doc_id in positives:
            return rank
    return None


def _retrieval_ranks(
    retrieved: Sequence[Sequence[str]], positives: Sequence[Sequence[str]], k: int
) -> list[int | None]:
    """First-positive ranks (cut at ``k``) for every example that has a positive."""
    _check_same_length(retrieved, positives, "retrieved", "positives")
    _check_k(k)
    ranks: list[int | None] = []
    for ids, pos in zip(retrieved, positives):
        pos_set = set(pos)
        if not pos_set:
            continue  # examples without positives are excluded from the mean
        ranks.append(_first_positive_rank(ids, pos_set, k))
    return ranks


def recall_at_k(
    retrieved: Sequence[Sequence[str]], positives: Sequence[Sequence[str]], k: int
) -> float:
    """Fraction of examples with at least one positive among the first ``k`` ids.

    ``retrieved[i]`` is the ranked list of passage ids for example i (best
    first) and ``positives[i]`` its set of positive ids. Examples with no
    positives are excluded from the mean; if no example has a positive the
    result is ``nan``. Value in [0, 1].

    Raises:
        ValueError: on a length mismatch or ``k < 1``.
    """
    ranks = _retrieval_ranks(retrieved, positives, k)
    if not ranks:
        return math.nan
    return sum(1 for r in ranks if r is not None) / len(ranks)


def mrr_at_k(
    retrieved: Sequence[Sequence[str]], positives: Sequence[Sequence[str]], k: int
) -> float:
    """Mean reciprocal rank of the first positive within the first ``k`` ids.

    An example contributes ``1 / rank`` (1-based) of its first positive if that
    lies within the first ``k`` ids and 0 otherwise. Same exclusion rule as
    :func:`recall_at_k` (``nan`` if no example has a positive). Value in [0, 1].

    Raises:
        ValueError: on a length mismatch or ``k < 1``.
    """
    ranks = _retrieval_ranks(retrieved, positives, k)
    if not ranks:
        return math.nan
    return sum(1.0 / r for r in ranks if r is not None) / len(ranks)


# --------------------------------------------------------------------------- #
# aggregates
# --------------------------------------------------------------------------- #


def generation_metrics(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> dict[str, float]:
    """All generation metrics on a 0-100 scale.

    Returns ``{"em", "f1", "bleu1", "bleu4", "rouge1", "rouge2", "rougeL"}``
    where ``em`` / ``f1`` are the means over examples of :func:`exact_match` /
    :func:`token_f1` times 100, and the rest come from :func:`bleu` and
    :func:`rouge`.

    Raises:
        ValueError: on a length mismatch, an empty corpus or an example with no
            gold reference.
    """
    _check_references(predictions, references)
    n = len(predictions)
    em = sum(exact_match(p, g) for p, g in zip(predictions, references)) / n
    f1 = sum(token_f1(p, g) for p, g in zip(predictions, references)) / n
    out: dict[str, float] = {"em": 100.0 * em, "f1": 100.0 * f1}
    out.update(bleu(predictions, references))
    out.update(rouge(predictions, references))
    return out


def retrieval_metrics(
    retrieved: Sequence[Sequence[str]],
    positives: Sequence[Sequence[str]],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Recall@k for every ``k`` in ``ks`` plus MRR@max(ks), all on a 0-1 scale.

    Returns e.g. ``{"recall@1", "recall@5", "recall@10", "mrr@10"}`` for the
    default ``ks``. Values are ``nan`` if no example has a positive.

    Raises:
        ValueError: on a length mismatch, an empty ``ks`` or any ``k < 1``.
    """
    if len(ks) == 0:
        raise ValueError("ks must contain at least one cutoff")
    for k in ks:
        _check_k(k, name="each k in ks")
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = recall_at_k(retrieved, positives, k)
    k_max = max(ks)
    out[f"mrr@{k_max}"] = mrr_at_k(retrieved, positives, k_max)
    return out
