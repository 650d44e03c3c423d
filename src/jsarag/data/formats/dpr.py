"""DPR's Wikipedia passages and question files (Karpukhin et al., 2020; github.com/facebookresearch/DPR).

What each file becomes:

- ``psgs_w100.tsv`` -> the corpus. Tab-separated with the header ``id	text	title``; the text is quoted
  CSV-style (``"...""Ahärôn""..."``). Read as DPR's ``CsvCtxSrc`` reads it (``dpr/data/retriever_data.py``):
  ``csv.reader(delimiter="\\t")``, then surrounding ``"`` stripped from the text, so that passages are the
  strings DPR indexes. Ids are kept exactly as in the file (``"1"``, ``"2"``, ...). With a header the columns
  are found by name; without one they are ``id, text, title``.
- A retriever JSON (``biencoder-nq-train.json``, ``biencoder-trivia-dev.json``, ...) -> one split: a JSON
  array of ``{question, answers, positive_ctxs, negative_ctxs, hard_negative_ctxs}`` (DPR README, "Retriever
  input data format"), streamed item by item with ``ijson``. ``positive_ids`` are the positive contexts'
  ``passage_id`` (NQ files) or ``psg_id`` (TriviaQA files), as strings, in order, without repeats; a
  ``wiki:`` prefix is dropped, since DPR adds it only when it loads the corpus
  (``conf/ctx_sources/default_sources.yaml``, ``id_prefix: 'wiki:'``) and ``psgs_w100.tsv`` has none.
  Negatives are not used. Questions without positive contexts are kept (with no ``positive_ids``), although
  DPR's own training drops them. A JSON array has no useful line numbers: its records are numbered by item,
  and errors name ``FILE item:N``.
- A question file ``nq-test.qa.csv``, ``trivia-dev.qa.csv`` (``data.retriever.qas.*`` in DPR's
  ``download_data.py``) -> one split: despite the name tab-separated, no header, ``question	answers`` where
  answers is a Python list literal (DPR's ``CsvQASrc`` ``eval``s it; here ``ast.literal_eval``, which
  evaluates literals only). ``positive_ids`` are empty.
- The NQ-open JSON Lines (``NQ-open.dev.jsonl``, google-research-datasets/natural-questions ``nq_open/``):
  ``{"question", "answer": [...]}`` -> one split, ``positive_ids`` empty.

Roles: a ``ROLE=PATH`` argument names the role (``corpus``, ``train``, ``dev`` or ``test``). Otherwise a
``.tsv`` file is the corpus and any other file a question file whose split is the one word ``train``,
``dev`` or ``test`` in its name (``nq-dev.qa.csv``, ``NQ-open.dev.jsonl``). The kind of a question file
follows its extension: ``.json`` retriever JSON, ``.jsonl`` NQ-open, anything else the ``.qa.csv`` layout.

Example ids are ``{file stem}-{n}``, n the 1-based item or row in the file (``biencoder-nq-dev-12``,
``nq-test-3``): stable across runs, and unique when several files feed one split.
"""

from __future__ import annotations

import ast
import codecs
import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jsarag.data.formats import Converted, Source
from jsarag.data.formats._io import (
    SPLITS,
    json_objects,
    json_stream,
    require,
    require_file,
    require_object,
    split_from_name,
    utf8_lines,
)
from jsarag.data.schema import DataError

__all__ = ["read"]

CORPUS_COLUMNS = ("id", "text", "title")
# DPR's ctx-source loader prefixes corpus ids with this; psgs_w100.tsv itself has bare numbers.
WIKI_PREFIX = "wiki:"


def read(sources: list[tuple[str | None, Path]]) -> Converted:
    corpus: list[Source] = []
    splits: dict[str, list[Source]] = {}
    for role, path in sources:
        label = require_file(path)
        role = role or ("corpus" if path.suffix == ".tsv" else split_from_name(path, label))
        if role == "corpus":
            corpus.append(Source(label, read_passages(path, label)))
        elif role in SPLITS:
            splits.setdefault(role, []).append(question_source(path, label))
        else:
            raise DataError(label, None, None, f"unknown role {role!r} for dpr; use corpus, train, dev or test")
    if not corpus:
        raise DataError("dpr", None, None, "no corpus file: give psgs_w100.tsv (or corpus=PATH)")
    return Converted(corpus=corpus, splits=splits)


def question_source(path: Path, label: str) -> Source:
    stem = path.name.split(".qa.")[0] if ".qa." in path.name else path.stem
    if path.suffix == ".json":
        return Source(f"{label} item", read_retriever_json(path, f"{label} item", stem))
    if path.suffix == ".jsonl":
        return Source(label, read_nq_open(path, label, stem))
    return Source(label, read_qa_csv(path, label, stem))


# --- the corpus ----------------------------------------------------------------------------------


def tsv_rows(path: Path, label: str) -> Iterator[tuple[int, list[str]]]:
    """(1-based line where the row starts, fields) of a quoted TSV, as DPR's csv.reader sees it."""
    line = 0

    def texts() -> Iterator[str]:
        # Keeps ``line`` at the last line the csv reader took: a quoted field can span several.
        nonlocal line
        for line, text in utf8_lines(path, label):
            yield text

    reader = csv.reader(texts(), delimiter="\t")
    while True:
        start = line + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(label, start, None, f"bad TSV row: {exc}") from None
        if row:  # a blank line
            yield start, row


def read_passages(path: Path, label: str) -> Iterator[tuple[int, dict[str, str]]]:
    columns = {name: index for index, name in enumerate(CORPUS_COLUMNS)}
    width = len(CORPUS_COLUMNS)
    for line, row in tsv_rows(path, label):
        if line == 1 and row[0] == "id":
            columns = {name: row.index(name) for name in CORPUS_COLUMNS if name in row}
            missing = [name for name in CORPUS_COLUMNS if name not in columns]
            if missing:
                raise DataError(label, line, missing[0], "missing column in the header")
            width = len(row)
            continue
        if len(row) != width:
            raise DataError(label, line, None, f"expected {width} tab-separated fields, got {len(row)}")
        text = row[columns["text"]].strip('"')  # as DPR's CsvCtxSrc does
        yield line, {"id": row[columns["id"]], "title": row[columns["title"]], "text": text}


# --- question files ------------------------------------------------------------------------------


def read_retriever_json(path: Path, label: str, stem: str) -> Iterator[tuple[int, dict[str, Any]]]:
    if first_byte(path) != b"[":
        raise DataError(label, None, None, "expected a JSON array of questions (DPR's retriever format)")
    for n, item in enumerate(json_stream(path, label, "item", numbered=True), start=1):
        item = require_object(item, label, n)
        question, answers = require(item, "question", label, n), require(item, "answers", label, n)
        ids = positive_ids(item.get("positive_ctxs") or [], label, n)
        yield n, {"id": f"{stem}-{n}", "question": question, "answers": answers, "positive_ids": ids}


def first_byte(path: Path) -> bytes:
    """The first non-blank byte of a file (after a UTF-8 byte-order mark)."""
    with open(path, "rb") as handle:
        return handle.read(4096).removeprefix(codecs.BOM_UTF8).lstrip()[:1]


def positive_ids(ctxs: list, label: str, n: int) -> list[str]:
    ids: list[str] = []
    for index, ctx in enumerate(ctxs):
        value = ctx.get("passage_id", ctx.get("psg_id")) if isinstance(ctx, dict) else None
        if value is None:
            problem = f"context {index} has no passage_id or psg_id to find it in the corpus"
            raise DataError(label, n, "positive_ctxs", problem)
        passage_id = str(value).removeprefix(WIKI_PREFIX)
        if passage_id not in ids:
            ids.append(passage_id)
    return ids


def read_qa_csv(path: Path, label: str, stem: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for row_number, (line, row) in enumerate(tsv_rows(path, label), start=1):
        if len(row) != 2:
            problem = f"expected 2 tab-separated fields (question, answers), got {len(row)}"
            raise DataError(label, line, None, problem)
        question, answers_literal = row
        try:
            answers = ast.literal_eval(answers_literal)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise DataError(label, line, "answers", "not a Python list literal") from None
        yield line, {"id": f"{stem}-{row_number}", "question": question, "answers": answers, "positive_ids": []}


def read_nq_open(path: Path, label: str, stem: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for row_number, (line, item) in enumerate(json_objects(path, label), start=1):
        question, answers = require(item, "question", label, line), require(item, "answer", label, line)
        yield line, {"id": f"{stem}-{row_number}", "question": question, "answers": answers, "positive_ids": []}
