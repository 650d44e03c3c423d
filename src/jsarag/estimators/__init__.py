"""Estimators of the RAG training gradient, by name. One file per estimator.

``ESTIMATORS`` is the single list of them: the config's ``estimator`` section (``name`` and one section of
options per entry), the study's methods, the command line's defaults and the plots are all read from it.
Adding an estimator is a new file here and one entry below (see docs/method.md, "Adding an estimator").
"""

from __future__ import annotations

from jsarag.estimators.base import Estimator, Panel
from jsarag.estimators.emdr2 import EMDR2, EMDR2Config
from jsarag.estimators.jsa import JSA, JSAConfig
from jsarag.estimators.loop import LOOP, LOOPConfig
from jsarag.estimators.lsr import LSR, LSRConfig
from jsarag.estimators.pdist import PDist, PDistConfig
from jsarag.estimators.rag_sequence import RagSequence, RagSequenceConfig
from jsarag.estimators.rag_token import RagToken, RagTokenConfig
from jsarag.estimators.stochastic_rag import StochasticRAG, StochasticRAGConfig
from jsarag.estimators.vrag import VRAG, VRAGConfig

ESTIMATORS: dict[str, type[Estimator]] = {
    RagSequence.name: RagSequence,
    RagToken.name: RagToken,
    VRAG.name: VRAG,
    JSA.name: JSA,
    EMDR2.name: EMDR2,
    PDist.name: PDist,
    LOOP.name: LOOP,
    LSR.name: LSR,
    StochasticRAG.name: StochasticRAG,
}


def build_estimator(cfg) -> Estimator:
    """The estimator named by an ``EstimatorConfig``, with its own options and the shared top K."""
    return ESTIMATORS[cfg.name](cfg.options(), top_k=cfg.top_k)


__all__ = ["ESTIMATORS", "Estimator", "Panel", "build_estimator", "EMDR2", "EMDR2Config", "JSA", "JSAConfig",
           "LOOP", "LOOPConfig", "LSR", "LSRConfig", "PDist", "PDistConfig", "RagSequence", "RagSequenceConfig",
           "RagToken", "RagTokenConfig", "StochasticRAG", "StochasticRAGConfig", "VRAG", "VRAGConfig"]
