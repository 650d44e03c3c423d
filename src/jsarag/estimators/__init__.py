"""Estimators of the RAG training gradient, by name. One file per estimator.

``ESTIMATORS`` is the single list of them: the config's ``estimator`` section (``name`` and one section of
options per entry), the study's methods, the command line's defaults and the plots are all read from it.
Adding an estimator is a new file here and one entry below (see docs/method.md, "Adding an estimator").
"""

from __future__ import annotations

from jsarag.estimators.base import Estimator, Panel
from jsarag.estimators.jsa import JSA, JSAConfig
from jsarag.estimators.rag_sequence import RagSequence, RagSequenceConfig
from jsarag.estimators.rag_token import RagToken, RagTokenConfig
from jsarag.estimators.vrag import VRAG, VRAGConfig

ESTIMATORS: dict[str, type[Estimator]] = {
    RagSequence.name: RagSequence,
    RagToken.name: RagToken,
    VRAG.name: VRAG,
    JSA.name: JSA,
}


def build_estimator(cfg) -> Estimator:
    """The estimator named by an ``EstimatorConfig``, with its own options and the shared top K."""
    return ESTIMATORS[cfg.name](cfg.options(), top_k=cfg.top_k)


__all__ = ["ESTIMATORS", "Estimator", "Panel", "build_estimator", "JSA", "JSAConfig", "RagSequence",
           "RagSequenceConfig", "RagToken", "RagTokenConfig", "VRAG", "VRAGConfig"]
