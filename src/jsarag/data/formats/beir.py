"""BEIR datasets (Thakur et al., NeurIPS 2021 Datasets; github.com/beir-cellar/beir, ``beir/datasets/data_loader.py``).

A BEIR dataset folder holds:

- ``corpus.jsonl``: ``{"_id", "title", "text", ...}`` -> the corpus (a missing or null title is ``""``).
- ``queries.jsonl``: ``{"_id", "text", "metadata"?}`` -> the questions of every split.
- ``qrels/{train,dev,test}.tsv``: header ``query-id	corpus-id	score``, then one tab-separated row per
  judgement -> a split. As in BEIR's ``GenericDataLoader.load``, a split holds the queries that its qrels
  name, in ``queries.jsonl`` order; ``positive_ids`` are the corpus ids with score > 0 (BEIR's evaluation
  counts a document relevant from score 1), in qrels order. Example ids are the query ``_id``.

Answers. BEIR is a retrieval benchmark and has none in general, but the schema needs them. A query's
answers come from its ``metadata``: ``answers`` (a list of strings) or ``answer`` (a string or a list).
**A query without either is skipped**; the count is printed to stderr when its split is done, and a split
left with no query at all is an error (so BEIR datasets without answers, most of them, cannot be
converted: pair their queries with answers first, e.g. ``metadata.answers``). qrels rows whose query is
not in ``queries.jsonl`` (BEIR's NFCorpus has some) are counted and printed too.

Roles. An argument that is a folder stands for its ``corpus.jsonl``, ``queries.jsonl`` and
``qrels/{train,dev,test}.tsv`` (those present). A ``ROLE=PATH`` argument names the role: ``corpus``,
``queries``, or a split's qrels as ``train`` / ``dev`` / ``test`` (or ``qrels.train`` etc.). Otherwise a
``.tsv`` file is qrels, of the split named by the one word ``train``, ``dev`` or ``test`` in its name; a
``.jsonl`` file is the corpus if its name contains ``corpus``, the queries if it contains ``queries``, and
else the corpus when its first record has a ``title`` (BEIR queries have none).

Memory: corpus and queries stream; a split's qrels are held as a dict query id -> positive ids while its
queries stream (the largest BEIR qrels, MS MARCO train, have 533k rows).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from jsarag.data.formats import Converted, Source
from jsarag.data.formats._io import (
    DOTTED_PARTS,
    SPLITS,
    add_judgement,
    first_record,
    json_objects,
    require,
    require_file,
    split_from_name,
    text_lines,
)
from jsarag.data.schema import DataError

__all__ = ["read"]

QRELS_HEADER = ["query-id", "corpus-id", "score"]


def read(sources: list[tuple[str | None, Path]]) -> Converted:
    files: list[tuple[str, Path]] = []
    for role, path in sources:
        if role is None and path.is_dir():
            files.extend(folder_files(path))
        else:
            require_file(path)
            files.append((role_of(role, path), path))
    corpus = [Source(str(path), read_corpus(path, str(path))) for role, path in files if role == "corpus"]
    queries = [path for role, path in files if role == "queries"]
    qrels: dict[str, Path] = {}
    for role, path in files:
        if role in SPLITS and qrels.setdefault(role, path) != path:
            raise DataError(str(path), None, None, f"a second qrels file for split {role!r}; give one per split")
    if not corpus:
        raise DataError("beir", None, None, "no corpus file: give the dataset folder, corpus.jsonl or corpus=PATH")
    if qrels and len(queries) != 1:
        raise DataError("beir", None, None, f"expected one queries file (queries.jsonl), got {len(queries)}")
    splits = {split: [Source(str(queries[0]), read_split(queries[0], path))] for split, path in qrels.items()}
    return Converted(corpus=corpus, splits=splits)


def folder_files(folder: Path) -> list[tuple[str, Path]]:
    files = [("corpus", folder / "corpus.jsonl"), ("queries", folder / "queries.jsonl")]
    files += [(split, folder / "qrels" / f"{split}.tsv") for split in SPLITS]
    return [(role, path) for role, path in files if path.is_file()]


def role_of(role: str | None, path: Path) -> str:
    """corpus, queries, or the split whose qrels the file holds."""
    if role is not None:
        role = role.removeprefix("qrels.")
        if role not in ("corpus", "queries", *SPLITS):
            problem = f"unknown role {role!r} for beir; use corpus, queries, train, dev or test"
            raise DataError(str(path), None, None, problem)
        return role
    name = path.name.lower()
    if path.suffix == ".tsv":
        return split_from_name(path, str(path), DOTTED_PARTS)
    if "corpus" in name:
        return "corpus"
    if "queries" in name:
        return "queries"
    first = first_record(path)
    return "corpus" if isinstance(first, Mapping) and "title" in first else "queries"


def read_corpus(path: Path, label: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for line, record in json_objects(path, label):
        doc_id, text = require(record, "_id", label, line), require(record, "text", label, line)
        title = record.get("title")
        yield line, {"id": doc_id, "title": "" if title is None else title, "text": text}


def read_qrels(path: Path, label: str) -> dict[str, list[str]]:
    """query id -> corpus ids with score > 0; every query the qrels name is a key."""
    positives: dict[str, list[str]] = {}
    for line, text in text_lines(path, label):
        fields = text.split("\t")
        if line == 1 and fields == QRELS_HEADER:
            continue
        if len(fields) != 3:
            problem = f"expected 3 tab-separated fields (query-id, corpus-id, score), got {len(fields)}"
            raise DataError(label, line, None, problem)
        query_id, corpus_id, score = fields
        add_judgement(positives, query_id, corpus_id, score, label, line, "score")
    return positives


def answers_of(record: Mapping) -> list[str] | None:
    metadata = record.get("metadata")
    if not isinstance(metadata, Mapping):
        return None
    value = metadata.get("answers", metadata.get("answer"))
    if isinstance(value, str):
        return [value]
    return value if isinstance(value, list) and value else None


def read_split(queries: Path, qrels: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    label, qrels_label = str(queries), str(qrels)
    positives = read_qrels(qrels, qrels_label)
    kept = skipped = 0
    for line, record in json_objects(queries):
        # Popped, so that what is left at the end names the queries that queries.jsonl lacks.
        ids = positives.pop(require(record, "_id", label, line), None)
        if ids is None:
            continue
        question = require(record, "text", label, line)
        answers = answers_of(record)
        if answers is None:
            skipped += 1
            continue
        kept += 1
        yield line, {"id": record["_id"], "question": question, "answers": answers, "positive_ids": ids}
    missing = f", {len(positives)} not in {label}" if positives else ""
    print(f"beir: {qrels_label}: {kept} queries kept, {skipped} without an answer skipped{missing}", file=sys.stderr)
    if not kept:
        problem = f"none of its {skipped} queries has an answer in {label} (metadata 'answers' or 'answer')"
        raise DataError(qrels_label, None, None, problem)
