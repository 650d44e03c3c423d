"""Prior and posterior retrievers: bi-encoders sharing one passage encoder and one index.

    score(x, h) = e_q(x) . e_p(h)
    log p_r(h | x)    = log_softmax_{h in C}(score(x, h) / tau)            prior, over candidates C
    log q(h | x, y)   = log_softmax_{h in C}(score_post(x + sep + y, h) / tau)   posterior

Candidates C are rows of the corpus, given as a [B, K] index tensor with an optional [B, K] mask
(the JSA union has a different size per example). When the passage encoder is frozen, candidate
vectors are read from the index's vector store: the exact vectors that were indexed, no re-encoding,
whatever compression the FAISS index uses. When it trains, candidates are re-encoded with gradient, and
the cosine between their stored and fresh vectors is recorded (how stale the index has become).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from jsarag.data import Corpus, Passage
from jsarag.models.encoder import Encoder

if TYPE_CHECKING:
    from jsarag.config import RetrieverConfig
    from jsarag.index.faiss_index import PassageIndex

PARTS = ("prior", "posterior", "passage")


def passage_text(passage: Passage) -> str:
    """What the passage encoder reads."""
    return f"{passage.title}: {passage.text}" if passage.title else passage.text


def masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """log_softmax over the last dim; masked-out entries get -inf. [B, K] -> [B, K]."""
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return torch.log_softmax(logits, dim=-1)


class Retriever(nn.Module):
    def __init__(self, prior: Encoder, posterior: Encoder, passage: Encoder, *, temperature: float = 0.1,
                 separator: str = " [SEP] ", train_passage_encoder: bool = False):
        super().__init__()
        self.prior = prior
        self.posterior = posterior
        self.passage = passage
        self.temperature = temperature
        self.separator = separator
        self.train_passage_encoder = train_passage_encoder
        self.passage.requires_grad_(train_passage_encoder)
        self.index: "PassageIndex | None" = None
        self.corpus: Corpus | None = None
        self._stale_cosines: list[float] = []

    @classmethod
    def from_config(cls, cfg: "RetrieverConfig", checkpoint: str | Path | None = None) -> "Retriever":
        """Load the three encoders from ``cfg`` or, when given, from a saved retriever folder."""
        def load(name: str, max_length: int, side: str) -> Encoder:
            return Encoder.from_pretrained(name, pooling=cfg.pooling, normalize=cfg.normalize,
                                           max_length=max_length, truncation_side=side)

        # Long queries keep their end: the turn to answer in a dialogue, the answer after [SEP].
        query_side = cfg.query_truncation
        if checkpoint is not None:
            root = Path(checkpoint)
            prior = load(str(root / "prior"), cfg.max_query_length, query_side)
            posterior = load(str(root / "posterior"), cfg.max_query_length, query_side)
            passage = load(str(root / "passage"), cfg.max_passage_length, "right")
        else:
            prior = load(cfg.model, cfg.max_query_length, query_side)
            posterior = load(cfg.posterior_model or cfg.model, cfg.max_query_length, query_side)
            passage = load(cfg.model, cfg.max_passage_length, "right")
        return cls(prior, posterior, passage, temperature=cfg.temperature, separator=cfg.posterior_separator,
                   train_passage_encoder=cfg.train_passage_encoder)

    def save_pretrained(self, path: str | Path) -> None:
        for part in PARTS:
            getattr(self, part).save_pretrained(Path(path) / part)

    def attach(self, index: "PassageIndex", corpus: Corpus) -> None:
        """Use ``index`` (built over ``corpus`` by this passage encoder) for search and vectors."""
        index.check(corpus.fingerprint(), None if self.train_passage_encoder else self.passage.identity())
        self.index, self.corpus = index, corpus

    # ---- query side ---------------------------------------------------------------------------
    def posterior_text(self, query: str, answer: str) -> str:
        return f"{query}{self.separator}{answer}"

    def prior_vectors(self, queries: Sequence[str]) -> torch.Tensor:
        return self.prior(queries)  # [B, d]

    def posterior_vectors(self, queries: Sequence[str], answers: Sequence[str]) -> torch.Tensor:
        return self.posterior([self.posterior_text(q, a) for q, a in zip(queries, answers)])  # [B, d]

    # ---- candidate side -----------------------------------------------------------------------
    def _require_index(self) -> "PassageIndex":
        if self.index is None:
            raise RuntimeError("the retriever has no index: call retriever.attach(index, corpus) first")
        return self.index

    @torch.no_grad()
    def search(self, vectors: torch.Tensor, k: int) -> torch.Tensor:
        """Top-``k`` corpus rows for each query vector: [B, d] -> [B, k] (long, best first)."""
        return self.search_each([vectors], k)[0]

    @torch.no_grad()
    def search_each(self, queries: list[torch.Tensor], k: int) -> list[torch.Tensor]:
        """:meth:`search` for several [B_i, d] query sets in one index search: [B_i, k] each.

        A Flat search reads the whole index once per call however many queries it carries (a scan of
        1.5 GB at 1M x 384), so a step's prior and posterior queries go together."""
        vectors = torch.cat([q.detach().float() for q in queries])
        finite = torch.isfinite(vectors).all(-1, keepdim=True)
        # A diverged encoder's non-finite vector finds no rows; it gets k arbitrary ones (those of a zero
        # query) so that the step still completes, with a non-finite loss, which the training loop skips.
        vectors = torch.where(finite, vectors, torch.zeros_like(vectors))
        _, rows = self._require_index().search(vectors.cpu().numpy(), k)
        return list(torch.from_numpy(rows).to(vectors.device).split([len(q) for q in queries]))

    def candidate_vectors(self, rows: torch.Tensor) -> torch.Tensor:
        """[B, K] rows -> [B, K, d] passage vectors (with gradient only if the passage encoder trains)."""
        index = self._require_index()
        if not self.train_passage_encoder:
            return torch.from_numpy(index.vectors(rows.cpu().numpy())).to(rows.device)
        unique, inverse = torch.unique(rows, return_inverse=True)
        texts = [passage_text(self.corpus[int(r)]) for r in unique.tolist()]
        fresh = self.passage(texts)  # [U, d]
        stored = torch.from_numpy(index.vectors(unique.cpu().numpy())).to(fresh.device)
        cosine = torch.nn.functional.cosine_similarity(fresh.detach().float(), stored, dim=-1)
        self._stale_cosines.append(cosine.mean().item())
        return fresh[inverse]

    def pop_staleness(self) -> dict[str, float]:
        """Mean cosine between the stored and the freshly encoded vectors of the candidates scored since
        the last call (1.0: the index is up to date), for the run log; empty when none were re-encoded."""
        cosines, self._stale_cosines = self._stale_cosines, []
        return {"index/candidate_cosine": sum(cosines) / len(cosines)} if cosines else {}

    def log_probs(self, vectors: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor | None = None
                  ) -> torch.Tensor:
        """log softmax(score / tau) over each row's candidates: [B, d], [B, K] -> [B, K]."""
        cand = self.candidate_vectors(rows).float()  # [B, K, d]
        scores = torch.einsum("bd,bkd->bk", vectors.float(), cand)
        return masked_log_softmax(scores / self.temperature, mask)

    def log_prior(self, queries: Sequence[str], rows: torch.Tensor, mask: torch.Tensor | None = None
                  ) -> torch.Tensor:
        return self.log_probs(self.prior_vectors(queries), rows, mask)

    def log_posterior(self, queries: Sequence[str], answers: Sequence[str], rows: torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.log_probs(self.posterior_vectors(queries, answers), rows, mask)

    def passages(self, rows: torch.Tensor) -> list[list[Passage]]:
        """[B, K] rows -> the passages themselves, for the generator."""
        return [[self.corpus[int(r)] for r in row] for row in rows.tolist()]
