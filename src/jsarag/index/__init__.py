"""FAISS indexes over a corpus, saved with the identity of the corpus and the encoder."""

from jsarag.index.build import build_index
from jsarag.index.faiss_index import IndexMeta, IndexMismatchError, PassageIndex

__all__ = ["IndexMeta", "IndexMismatchError", "PassageIndex", "build_index"]
