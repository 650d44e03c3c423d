"""MS MARCO passage ranking (Nguyen et al., 2016; github.com/microsoft/MSMARCO-Passage-Ranking, README).

What each file becomes:

- ``collection.tsv`` (``pid	passage``) -> the corpus, titles empty, ids the pids as written.
- ``queries.{train,dev,eval}.tsv`` (``qid	query``; also ``queries.dev.small.tsv``) -> a split; ``eval`` is
  the ``test`` split. The example id is the qid.
- ``qrels.{train,dev}.tsv`` (TREC qrels ``qid 0 pid 1``, tab- or space-separated; ``qrels.dev.small.tsv``
  too) -> ``positive_ids``: the pids of rows with relevance > 0, in file order, without repeats. A query
  without qrels rows gets no ``positive_ids``.
- The MS MARCO QnA v2.1 files ``train_v2.1.json`` / ``dev_v2.1.json`` (github.com/microsoft/
  MSMARCO-Question-Answering, README) -> the answers. Passage ranking has none and the schema needs them,
  so each query takes the ``answers`` of the QnA row with the same ``query_id`` (the ranking qids are the
  QnA query ids), less the placeholder ``No Answer Present.``. ``wellFormedAnswers`` (rewrites of the same
  answers for ~18% of queries) are not used. **A query without an answer is skipped**: the count is printed
  to stderr when its file is done, and a split left with no query at all is an error (MS MARCO's eval
  answers are not public, so ``queries.eval.tsv`` is best left out).

Roles: a ``ROLE=PATH`` argument names the role: ``corpus``, ``train`` / ``dev`` / ``test`` (a queries file;
``queries.train`` etc. also accepted), ``qrels.train`` / ``qrels.dev`` / ``qrels.test``, or ``answers``.
Otherwise: a ``.json`` file is an answers file; a name containing ``collection`` the corpus, ``queries`` a
queries file, ``qrels`` a qrels file, whose split is the one word ``train``, ``dev``, ``test`` or ``eval`` in
the name (``msmarco-test2019-queries.tsv`` is ``test``).

Memory: the corpus and the queries stream. The qrels of a split are read into a dict qid -> pids when the
split's stream starts (MS MARCO train: 533k rows, tens of MB). The QnA files are column-oriented JSON (a
pandas ``DataFrame.to_json``: ``{"answers": {row: [...]}, ..., "query_id": {row: qid}}``), so a row's
answers and its query id are in different places of a multi-GB file. They are read with ``ijson`` in two
passes over each file: the ``answers`` column into row -> answers (answered rows only), then the
``query_id`` column to rekey those rows by qid. The passages are skipped in C and never held, so memory is
bounded by the answers dict (qid -> answers, ~550k answered queries in train), built once on first use.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jsarag.data.formats import Converted, Source
from jsarag.data.formats._io import add_judgement, json_stream, require_file, split_in_name, text_lines
from jsarag.data.schema import DataError

__all__ = ["read"]

SPLIT_WORDS = {"train": "train", "dev": "dev", "test": "test", "eval": "test"}
NO_ANSWER = "No Answer Present."


def read(sources: list[tuple[str | None, Path]]) -> Converted:
    corpus: list[Source] = []
    queries: dict[str, list[tuple[Path, str]]] = {}
    qrels: dict[str, list[tuple[Path, str]]] = {}
    answer_files: list[tuple[Path, str]] = []
    for role, path in sources:
        label = require_file(path)
        kind, split = role_of(role, path, label)
        if kind == "corpus":
            corpus.append(Source(label, read_collection(path, label)))
        elif kind == "answers":
            answer_files.append((path, label))
        else:
            (queries if kind == "queries" else qrels).setdefault(split, []).append((path, label))
    if not corpus:
        raise DataError("msmarco", None, None, "no corpus file: give collection.tsv (or corpus=PATH)")
    for split, files in qrels.items():
        if split not in queries:
            raise DataError(files[0][1], None, None, f"qrels for split {split!r} but no queries file for it")
    if queries and not answer_files:
        problem = "passage ranking has no answers: give the QnA v2.1 file(s) train_v2.1.json / dev_v2.1.json"
        raise DataError("msmarco", None, None, problem)
    answers = AnswerTable(answer_files)
    splits = {
        split: [Source(label, read_queries(path, label, qrels.get(split, []), answers)) for path, label in files]
        for split, files in queries.items()
    }
    return Converted(corpus=corpus, splits=splits)


def role_of(role: str | None, path: Path, label: str) -> tuple[str, str | None]:
    """(kind, split) with kind one of corpus, queries, qrels, answers."""
    if role in ("corpus", "answers"):
        return role, None
    if role is not None:
        kind, _, split = role.rpartition(".")
        if kind in ("", "queries", "qrels") and split in SPLIT_WORDS:
            return kind or "queries", SPLIT_WORDS[split]
        problem = f"unknown role {role!r} for msmarco; use corpus, answers, train/dev/test or qrels.train/dev/test"
        raise DataError(label, None, None, problem)
    name = path.name.lower()
    if path.suffix == ".json":
        return "answers", None
    if "collection" in name:
        return "corpus", None
    for kind in ("queries", "qrels"):
        if kind in name:
            split = split_in_name(path.name, SPLIT_WORDS)
            if split is None:
                name_it = "name it as ROLE=PATH, e.g. dev=PATH or qrels.dev=PATH"
                raise DataError(label, None, None, f"cannot tell the split from the file name; {name_it}")
            return kind, split
    problem = "cannot tell what this file is; name it as corpus=, train=, qrels.train=, answers= (or dev, test)"
    raise DataError(label, None, None, problem)


# --- TSV files -----------------------------------------------------------------------------------


def tsv_pairs(path: Path, label: str, names: tuple[str, str]) -> Iterator[tuple[int, str, str]]:
    for line, text in text_lines(path, label):
        fields = text.split("\t")
        if len(fields) != 2:
            problem = f"expected 2 tab-separated fields ({', '.join(names)}), got {len(fields)}"
            raise DataError(label, line, None, problem)
        yield line, fields[0], fields[1]


def read_collection(path: Path, label: str) -> Iterator[tuple[int, dict[str, str]]]:
    for line, pid, passage in tsv_pairs(path, label, ("pid", "passage")):
        yield line, {"id": pid, "title": "", "text": passage}


def read_qrels(files: list[tuple[Path, str]]) -> dict[str, list[str]]:
    """qid -> relevant pids from TREC qrels rows ``qid iteration pid relevance``."""
    positives: dict[str, list[str]] = {}
    for path, label in files:
        for line, text in text_lines(path, label):
            fields = text.split()
            if len(fields) != 4:
                raise DataError(label, line, None, f"expected 4 fields (qid 0 pid relevance), got {len(fields)}")
            qid, _, pid, relevance = fields
            add_judgement(positives, qid, pid, relevance, label, line, "relevance")
    return positives


def read_queries(
    path: Path, label: str, qrels_files: list[tuple[Path, str]], answers: AnswerTable
) -> Iterator[tuple[int, dict[str, Any]]]:
    positives = read_qrels(qrels_files)
    table = answers.table()
    kept = skipped = 0
    for line, qid, query in tsv_pairs(path, label, ("qid", "query")):
        query_answers = table.get(qid)
        if query_answers is None:
            skipped += 1
            continue
        kept += 1
        yield line, {"id": qid, "question": query, "answers": query_answers, "positive_ids": positives.get(qid, [])}
    print(f"msmarco: {label}: {kept} queries kept, {skipped} without an answer skipped", file=sys.stderr)
    if not kept:
        problem = f"none of its {skipped} queries has an answer in {', '.join(answers.labels)}"
        raise DataError(label, None, None, problem)


# --- answers from the QnA v2.1 files -------------------------------------------------------------


class AnswerTable:
    """qid -> answers from the QnA files, read on first use and then shared by every split."""

    def __init__(self, files: list[tuple[Path, str]]):
        self.files = files
        self.labels = [label for _, label in files]
        self._table: dict[str, list[str]] | None = None

    def table(self) -> dict[str, list[str]]:
        if self._table is None:
            self._table = {}
            for path, label in self.files:
                self._table.update(read_qna_answers(path, label))
        return self._table


def read_qna_answers(path: Path, label: str) -> dict[str, list[str]]:
    """qid -> answers of one QnA file, read in two passes: its ``answers`` column, then its ``query_id``s."""
    by_row: dict[str, list[str]] = {}
    rows = 0
    for row, value in json_stream(path, label, "answers", pairs=True):
        rows += 1
        if not isinstance(value, list):
            raise DataError(label, None, "answers", f"row {row}: expected a list, got {type(value).__name__}")
        kept = [answer for answer in value if answer != NO_ANSWER]
        if kept:
            by_row[row] = kept
    if not rows:
        problem = "no answers column: expected a QnA v2.1 train or dev file (the eval file has no answers)"
        raise DataError(label, None, "answers", problem)
    table: dict[str, list[str]] = {}
    for row, qid in json_stream(path, label, "query_id", pairs=True):
        row_answers = by_row.pop(row, None)
        if row_answers is not None:
            table[str(qid)] = row_answers
    if by_row:
        raise DataError(label, None, "query_id", f"row {next(iter(by_row))} has answers but no query_id")
    return table
