"""Datasets: the passage corpus and the question/dialogue examples, with validation and stores."""

from jsarag.data.batch import Batch
from jsarag.data.schema import DataError, Example, Passage, load_examples
from jsarag.data.store import Corpus, Examples, open_corpus, open_split

__all__ = ["Batch", "Corpus", "DataError", "Example", "Examples", "Passage", "load_examples", "open_corpus",
           "open_split"]
