"""jsarag: end-to-end training of retrieval-augmented generation models (JSA-RAG, RAG, VRAG)."""

from jsarag.config import Config, load_config, save_config
from jsarag.data import Batch, Corpus, DataError, Example, Examples, Passage, load_examples, open_corpus, open_split
from jsarag.estimators import ESTIMATORS, build_estimator
from jsarag.eval.evaluate import evaluate
from jsarag.index import PassageIndex, build_index
from jsarag.models.generator import Generator
from jsarag.models.rag import RAGModel
from jsarag.models.retriever import Retriever
from jsarag.pipeline import Run, build_model, load_corpus, load_run, load_split, prepare_index
from jsarag.train.loop import train

__version__ = "0.1.0"

__all__ = ["Batch", "Config", "Corpus", "DataError", "ESTIMATORS", "Example", "Examples", "Generator", "Passage",
           "PassageIndex", "RAGModel", "Retriever", "Run", "build_estimator", "build_index", "build_model", "evaluate",
           "load_config", "load_corpus", "load_examples", "load_run", "load_split", "open_corpus", "open_split",
           "prepare_index", "save_config", "train"]
