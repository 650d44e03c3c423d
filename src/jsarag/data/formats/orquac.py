"""OR-QuAC (Qu et al., SIGIR 2020, "Open-Retrieval Conversational Question Answering"): the ORConvQA release.

Files (prdwb/orconvqa-release ``README.md``; fields as read by its ``utils.py``, ``retriever_utils.py``
and ``train_pipeline.py``):

- ``all_blocks.txt``: JSON Lines, one passage per line, ``{"id", "title", "text", "aid", "bid"}``.
- ``qrels.txt``: one JSON object ``{qid: {block id: 1, ...}, ...}``, the gold passages (derived from
  QuAC; the release calls them partial relevance).
- ``preprocessed/train.txt``, ``dev.txt``, ``test.txt``: JSON Lines, one question per line,
  ``{"qid", "question", "rewrite", "answer": {"text", "answer_start"}, "history": [{"question",
  "answer": {"text", ...}}, ...], "evidences": [passage text, ...], "retrieval_labels": [0/1, ...]}``.
  ``evidences`` hold texts, not block ids, so the gold ids come from ``qrels.txt``.

Passages are the blocks as they are (``aid``/``bid`` ignored). Each question becomes one dialogue
example: ``context`` = the history turns as ``User: question`` / ``Agent: answer`` lines, then
``User: question`` (the original, context-dependent ``question``; the CANARD ``rewrite`` is not used);
``answers`` = ``[answer.text]``; ``positive_ids`` = the blocks ``qrels.txt`` gives for the ``qid``
(none if it has no entry). Questions answered ``CANNOTANSWER`` or ``NOTRECOVERED`` are skipped, the
turns the reference code treats as impossible; in the history their answer is kept as written, as
the reference code prepends it. ``qrels.txt`` is held in memory as a dict (one entry per question,
about 40k, a few MB); blocks and questions stream.

Roles. ``ROLE=PATH`` with role ``corpus``, ``qrels``, ``train``, ``dev`` or ``test``; otherwise a
file whose name contains ``blocks`` is the corpus, one containing ``qrels`` the qrels, and one whose
name has the word ``train``, ``dev`` or ``test`` that split.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from jsarag.data.formats import Converted, Source
from jsarag.data.formats._io import (
    DOTTED_PARTS,
    SPLITS,
    json_objects,
    json_stream,
    require_object,
    require_text,
    split_in_name,
)
from jsarag.data.schema import DataError, _describe

__all__ = ["read"]

UNANSWERABLE = ("CANNOTANSWER", "NOTRECOVERED")


def read(sources: list[tuple[str | None, Path]]) -> Converted:
    converted = Converted(corpus=[])
    qrels_paths: list[str] = []
    split_paths: list[tuple[str, str]] = []
    for role, path in sources:
        role = role or _infer_role(path)
        if role == "corpus":
            converted.corpus.append(Source(str(path), _blocks(str(path))))
        elif role == "qrels":
            qrels_paths.append(str(path))
        elif role in SPLITS:
            split_paths.append((role, str(path)))
        else:
            problem = f"unknown role {role!r} for OR-QuAC: use corpus, qrels, train, dev or test"
            raise DataError(str(path), None, None, problem)
    if split_paths and len(qrels_paths) != 1:
        problem = f"give one qrels.txt with the question files, got {len(qrels_paths)}: it names the gold blocks"
        raise DataError(split_paths[0][1], None, None, problem)
    qrels = _LazyQrels(qrels_paths[0]) if qrels_paths else None
    for split, label in split_paths:
        converted.splits.setdefault(split, []).append(Source(label, _examples(label, qrels)))
    return converted


def _infer_role(path: Path) -> str:
    name = path.name.lower()
    if "blocks" in name:
        return "corpus"
    if "qrels" in name:
        return "qrels"
    split = split_in_name(path.name, word=DOTTED_PARTS)
    if split:
        return split
    problem = "cannot tell what this file is; name it as ROLE=PATH (corpus, qrels, train, dev or test)"
    raise DataError(str(path), None, None, problem)


def _blocks(label: str) -> Iterator[tuple[int, dict]]:
    for line, block in json_objects(label):
        yield line, {key: block[key] for key in ("id", "title", "text") if key in block}


class _LazyQrels:
    """qid -> gold block ids, read from ``qrels.txt`` on first use (streamed, so a bad entry is named)."""

    def __init__(self, label: str):
        self.label = label
        self._by_qid: dict[str, list[str]] | None = None

    def __getitem__(self, qid: str) -> list[str]:
        if self._by_qid is None:
            self._by_qid = dict(self._read())
        return self._by_qid.get(qid, [])

    def _read(self) -> Iterator[tuple[str, list[str]]]:
        for qid, relevant in json_stream(self.label, self.label, "", pairs=True):
            if not isinstance(relevant, Mapping):
                raise DataError(self.label, None, qid, f"expected an object of block ids, got {_describe(relevant)}")
            yield qid, [pid for pid, grade in relevant.items() if grade]


def _examples(label: str, qrels: _LazyQrels) -> Iterator[tuple[int, dict]]:
    for line, turn in json_objects(label):
        answer = _answer_text(turn, label, line, "answer")
        if answer.strip() in UNANSWERABLE:
            continue
        qid = require_text(turn.get("qid"), label, line, "qid")
        question = require_text(turn.get("question"), label, line, "question")
        history = turn.get("history")
        if not isinstance(history, list):
            raise DataError(label, line, "history", f"expected a list of turns, got {_describe(history)}")
        lines = []
        for index, past in enumerate(history):
            past = require_object(past, label, line, f"history[{index}]")
            lines.append(f"User: {require_text(past.get('question'), label, line, f'history[{index}].question')}")
            lines.append(f"Agent: {_answer_text(past, label, line, f'history[{index}].answer')}")
        lines.append(f"User: {question}")
        yield line, {"id": qid, "context": "\n".join(lines), "answers": [answer], "positive_ids": qrels[qid]}


def _answer_text(turn: Mapping, label: str, line: int, field: str) -> str:
    answer = turn.get("answer")
    if not isinstance(answer, Mapping):
        raise DataError(label, line, field, f"expected an object with 'text', got {_describe(answer)}")
    return require_text(answer.get("text"), label, line, f"{field}.text")
