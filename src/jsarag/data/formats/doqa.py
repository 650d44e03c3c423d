"""DoQA v2.1 (Campos et al., ACL 2020, "DoQA - Accessing Domain-Specific FAQs via Conversational QA").

Files (the release's README; ``doqa_dataset/doqa-{cooking,travel,movies}-{train,dev,test}-v2.1.json``;
cooking has all three splits, travel and movies only test). Each file is one JSON object in the QuAC
layout: ``{"data": [{"title", "background", "paragraphs": [{"id", "context", "qas": [{"id",
"question", "answers": [{"text", "answer_start"}], "orig_answer": {"text", "answer_start"},
"yesno", "followup"}]}]}]}``; one dialogue per paragraph, the ``context`` being the Stack Exchange
answer the expert quoted from, with ``CANNOTANSWER`` appended.

DoQA has no separate knowledge base: as in the JSA-RAG release's DoQA preparation, the passages are
the paragraphs' contexts of every file given, without the trailing ``CANNOTANSWER``, and a context
seen before (same text) is one passage, under the id of the paragraph that first had it. A passage
keeps the topic's ``title`` (JSA-RAG left titles empty; the forum title helps a retriever).

Each question turn becomes a dialogue example (id = the turn's ``id``): ``context`` = the earlier
turns of its dialogue as ``User: question`` / ``Agent: answer`` lines, then ``User: question``;
``answers`` = the distinct texts of ``answers`` (``orig_answer`` when that list is empty), the first
one being the answer shown in later turns' history; ``positive_ids`` = the passage of its paragraph.
Turns answered ``CANNOTANSWER`` are skipped (there is nothing to generate from the passage); later
turns keep them in their history as written.

Streaming. A file is read one dialogue at a time with ``ijson``, so record numbers are not line
numbers: a passage is numbered by the paragraph's position in the file, an example by the turn's
(1-based). The first read of the files collects one digest per distinct context (DoQA has a few
thousand), the price of merging repeated contexts.

Roles. ``ROLE=PATH`` with role ``train``, ``dev`` or ``test``; otherwise the word ``train``, ``dev`` or
``test`` in the file name. Every file also feeds the corpus.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path

from jsarag.data.formats import Converted, Source
from jsarag.data.formats._io import DOTTED_PARTS, SPLITS, json_stream, require_object, require_text, split_from_name
from jsarag.data.schema import DataError, _describe

__all__ = ["read"]

UNANSWERABLE = "CANNOTANSWER"


def read(sources: list[tuple[str | None, Path]]) -> Converted:
    labeled = []
    for role, path in sources:
        split = role or split_from_name(path, str(path), DOTTED_PARTS)
        if split not in SPLITS:
            problem = f"unknown role {role!r}; name it as train=PATH, dev=PATH or test=PATH"
            raise DataError(str(path), None, None, problem)
        labeled.append((split, str(path)))
    passages = _PassageIds([label for _, label in labeled])
    converted = Converted(corpus=[Source(label, _passages(label, passages)) for _, label in labeled])
    for split, label in labeled:
        converted.splits.setdefault(split, []).append(Source(label, _examples(label, passages)))
    return converted


class _PassageIds:
    """Passage id of each distinct context, the id of the first paragraph (over all files) that has it."""

    def __init__(self, labels: list[str]):
        self.labels = labels
        self._first: dict[bytes, str] | None = None

    def of(self, text: str) -> str:
        if self._first is None:
            self._first = {}
            for label in self.labels:
                for _, _, paragraph_id, context in _paragraphs(label):
                    self._first.setdefault(_digest(context), paragraph_id)
        return self._first[_digest(text)]


def _passages(label: str, passages: _PassageIds) -> Iterator[tuple[int, dict]]:
    for number, title, paragraph_id, context in _paragraphs(label):
        # Only the paragraph that first had this context gives the passage; the writer rejects a
        # second record with the same id, should one file be given twice.
        if passages.of(context) == paragraph_id:
            yield number, {"id": paragraph_id, "title": title, "text": context}


def _examples(label: str, passages: _PassageIds) -> Iterator[tuple[int, dict]]:
    number = 0
    for _, _, paragraph_id, context, qas in _paragraphs(label, with_qas=True):
        positive_ids = [passages.of(context)]
        history: list[str] = []
        for index, qa in enumerate(qas):
            number += 1
            field = f"paragraph {paragraph_id!r}: qas[{index}]"
            qa = require_object(qa, label, number, field)
            question = require_text(qa.get("question"), label, number, f"{field}.question")
            answers = _answers(qa, label, number, field)
            if answers[0] != UNANSWERABLE:
                context_lines = [*history, f"User: {question}"]
                example = {
                    "id": require_text(qa.get("id"), label, number, f"{field}.id"),
                    "context": "\n".join(context_lines),
                    "answers": [answer for answer in answers if answer != UNANSWERABLE],
                    "positive_ids": positive_ids,
                }
                yield number, example
            history += [f"User: {question}", f"Agent: {answers[0]}"]


def _paragraphs(label: str, with_qas: bool = False) -> Iterator[tuple]:
    """(number, title, id, context without CANNOTANSWER[, qas]) of every paragraph, streamed."""
    number = 0
    for dialogue in json_stream(label, label, "data.item"):
        dialogue = require_object(dialogue, label, number + 1, "data[]")
        title = dialogue.get("title") or ""
        paragraphs = dialogue.get("paragraphs")
        if not isinstance(paragraphs, list):
            raise DataError(label, number + 1, "paragraphs", f"expected a list, got {_describe(paragraphs)}")
        for paragraph in paragraphs:
            number += 1
            paragraph = require_object(paragraph, label, number, "paragraphs[]")
            paragraph_id = require_text(paragraph.get("id"), label, number, "paragraph id")
            context = require_text(paragraph.get("context"), label, number, f"paragraph {paragraph_id!r}: context")
            context = context.removesuffix(UNANSWERABLE).strip()
            if not context:
                raise DataError(label, number, f"paragraph {paragraph_id!r}: context", "only CANNOTANSWER")
            if not with_qas:
                yield number, title, paragraph_id, context
                continue
            qas = paragraph.get("qas")
            if not isinstance(qas, list):
                problem = f"expected a list, got {_describe(qas)}"
                raise DataError(label, number, f"paragraph {paragraph_id!r}: qas", problem)
            yield number, title, paragraph_id, context, qas


def _answers(qa: Mapping, label: str, number: int, field: str) -> list[str]:
    """Distinct answer texts, the dialogue's own answer first."""
    references = qa.get("answers") or [qa.get("orig_answer")]
    if not isinstance(references, list):
        raise DataError(label, number, f"{field}.answers", f"expected a list, got {_describe(references)}")
    answers: list[str] = []
    for reference in references:
        reference = require_object(reference, label, number, f"{field}.answers[]")
        text = require_text(reference.get("text"), label, number, f"{field}.answers[].text")
        if text not in answers:
            answers.append(text)
    return answers


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
