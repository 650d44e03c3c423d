"""A mini-batch of examples as the estimators and the evaluator see it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from jsarag.data.schema import Example
from jsarag.data.store import Corpus


@dataclass
class Batch:
    ids: list[str]
    queries: list[str]        # x: questions or dialogue histories
    answers: list[str]        # y: the training target (each example's first gold answer)
    all_answers: list[tuple[str, ...]]
    positive_ids: list[tuple[str, ...]]
    kind: str                 # "question" or "context": which prompt the generator uses

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_examples(cls, examples: Sequence[Example]) -> "Batch":
        kinds = {e.kind for e in examples}
        if len(kinds) != 1:
            raise ValueError(f"a batch mixes example kinds {sorted(kinds)}")
        return cls(ids=[e.id for e in examples], queries=[e.query for e in examples],
                   answers=[e.answers[0] for e in examples], all_answers=[e.answers for e in examples],
                   positive_ids=[e.positive_ids for e in examples], kind=kinds.pop())

    def positive_rows(self, corpus: Corpus) -> list[list[int]]:
        return [[corpus.row(pid) for pid in pids] for pids in self.positive_ids]
