"""Embed a corpus with the passage encoder and index it."""

from __future__ import annotations

from jsarag.data import Corpus
from jsarag.index.faiss_index import PassageIndex
from jsarag.models.encoder import Encoder
from jsarag.models.retriever import passage_text


def build_index(corpus: Corpus, encoder: Encoder, *, factory: str = "Flat", search_params: str = "",
                batch_size: int = 64, progress: bool = True) -> PassageIndex:
    """Encode every passage (batched, with a progress bar) and build a FAISS index over the vectors."""
    vectors = encoder.encode([passage_text(p) for p in corpus], batch_size=batch_size, progress=progress,
                             desc="indexing passages")
    return PassageIndex.from_vectors(vectors, factory=factory, search_params=search_params,
                                     corpus_hash=corpus.fingerprint(), corpus_source=corpus.source,
                                     encoder=encoder.identity())
