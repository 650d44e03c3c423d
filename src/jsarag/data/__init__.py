"""Datasets: the passage corpus and the question/dialogue examples, with validation."""

from jsarag.data.batch import Batch
from jsarag.data.schema import Corpus, DataError, Example, Passage, load_examples

__all__ = ["Batch", "Corpus", "DataError", "Example", "Passage", "load_examples"]
