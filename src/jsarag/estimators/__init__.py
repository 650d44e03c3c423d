"""Estimators of the RAG training gradient, by name. One file per estimator."""

from __future__ import annotations

from jsarag.estimators.base import Estimator
from jsarag.estimators.jsa import JSA, JSAConfig
from jsarag.estimators.rag_sequence import RagSequence, RagSequenceConfig
from jsarag.estimators.rag_token import RagToken, RagTokenConfig
from jsarag.estimators.vrag import VRAG, VRAGConfig

ESTIMATORS = {
    "rag_sequence": RagSequence,
    "rag_token": RagToken,
    "vrag": VRAG,
    "jsa": JSA,
}


def build_estimator(cfg) -> Estimator:
    """The estimator named by an ``EstimatorConfig``, with its own options and the shared top K."""
    return ESTIMATORS[cfg.name](cfg.options(), top_k=cfg.top_k)


__all__ = ["ESTIMATORS", "Estimator", "build_estimator", "JSA", "JSAConfig", "RagSequence", "RagSequenceConfig",
           "RagToken", "RagTokenConfig", "VRAG", "VRAGConfig"]
