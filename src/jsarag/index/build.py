"""Embed a corpus with the passage encoder and index it."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from jsarag.data import Corpus
from jsarag.index.faiss_index import PassageIndex
from jsarag.models.encoder import Encoder
from jsarag.models.retriever import passage_text

# Passages read from the corpus store and length-sorted together: enough that sorting within a chunk
# pads as little as sorting the whole corpus (the quickstart's 10,882 snippets are one chunk), few enough
# that the texts of a large corpus never sit in memory at once (about 10 MB of DPR passages).
CHUNK = 16_384


def encode_corpus(corpus: Corpus, encoder: Encoder, *, batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """[N, d] float32 vectors of every passage, read from the corpus a chunk at a time."""
    vectors = np.empty((len(corpus), encoder.dim), dtype=np.float32)
    with tqdm(total=len(corpus), desc="indexing passages", unit=" passages", disable=not progress) as bar:
        for start in range(0, len(corpus), CHUNK):
            texts = [passage_text(p) for part in corpus.iter_chunks(start, start + CHUNK) for p in part]
            vectors[start:start + len(texts)] = encoder.encode(texts, batch_size=batch_size, progress=bar)
    return vectors


def build_index(corpus: Corpus, encoder: Encoder, *, factory: str = "Flat", search_params: str = "",
                batch_size: int = 64, progress: bool = True) -> PassageIndex:
    """Encode every passage (batched, with a progress bar) and build a FAISS index over the vectors."""
    vectors = encode_corpus(corpus, encoder, batch_size=batch_size, progress=progress)
    return PassageIndex.from_vectors(vectors, factory=factory, search_params=search_params,
                                     corpus_hash=corpus.fingerprint(), corpus_source=corpus.source,
                                     encoder=encoder.identity())
