"""jsarag: end-to-end training of retrieval-augmented generation models (JSA-RAG, RAG, VRAG).

The names below load on first use (PEP 562), so that ``import jsarag`` and ``jsarag --help`` do not
import torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "Config": "jsarag.config", "load_config": "jsarag.config", "save_config": "jsarag.config",
    "Batch": "jsarag.data", "Corpus": "jsarag.data", "DataError": "jsarag.data", "Example": "jsarag.data",
    "Examples": "jsarag.data", "Passage": "jsarag.data", "load_examples": "jsarag.data",
    "open_corpus": "jsarag.data", "open_split": "jsarag.data",
    "ESTIMATORS": "jsarag.estimators", "build_estimator": "jsarag.estimators",
    "evaluate": "jsarag.eval.evaluate",
    "PassageIndex": "jsarag.index", "build_index": "jsarag.index",
    "Generator": "jsarag.models.generator", "RAGModel": "jsarag.models.rag", "Retriever": "jsarag.models.retriever",
    "Run": "jsarag.pipeline", "build_model": "jsarag.pipeline", "load_corpus": "jsarag.pipeline",
    "load_run": "jsarag.pipeline", "load_split": "jsarag.pipeline", "prepare_index": "jsarag.pipeline",
    "train": "jsarag.train.loop",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jsarag' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
