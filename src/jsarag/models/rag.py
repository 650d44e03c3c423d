"""The RAG model: a retriever and a generator, trained together by an estimator.

``RAGModel.forward(batch, estimator)`` only calls ``estimator(self, batch)``. It exists so that the
whole model can be wrapped once by DistributedDataParallel: gradients of every component the
estimator touches are then averaged across processes, whichever estimator runs.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from jsarag.models.generator import Generator
from jsarag.models.retriever import Retriever

COMPONENTS = ("prior", "posterior", "passage", "generator")


class RAGModel(nn.Module):
    def __init__(self, retriever: Retriever, generator: Generator):
        super().__init__()
        self.retriever = retriever
        self.generator = generator

    def forward(self, batch, estimator):
        return estimator(self, batch)

    def component(self, name: str) -> nn.Module:
        """One of COMPONENTS: the module whose parameters form that optimiser group."""
        return self.generator if name == "generator" else getattr(self.retriever, name)

    def set_trainable(self, names) -> None:
        """Freeze every component not in ``names`` (LoRA keeps its base weights frozen inside)."""
        for name in COMPONENTS:
            module = self.component(name)
            if name == "generator" and hasattr(module.model, "peft_config"):
                if name not in names:
                    module.requires_grad_(False)
                continue
            module.requires_grad_(name in names)

    def save_pretrained(self, path: str | Path) -> None:
        self.retriever.save_pretrained(Path(path) / "retriever")
        self.generator.save_pretrained(Path(path) / "generator")
