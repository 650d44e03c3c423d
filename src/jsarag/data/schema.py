"""The on-disk data format: a passage corpus and question/dialogue examples, loaded and validated.

Files are JSON Lines (UTF-8), one record per line:

- ``corpus.jsonl``: ``{"id": str, "title": str, "text": str}``
- ``train.jsonl`` / ``dev.jsonl`` / ``test.jsonl``:
  ``{"id": str, "question" | "context": str, "answers": [str, ...], "positive_ids": [str, ...]}``

The same records may also come from memory, e.g. a Hugging Face ``datasets.Dataset``, which iterates
as dicts. Every problem raises :class:`DataError` naming the source, the 1-based line (or row) and
the field, so a user can go straight to the bad record. Unknown fields are ignored so that newer
files still load.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsarag.data.store import Corpus

__all__ = ["DataError", "Example", "Passage", "load_examples"]

QUESTION = "question"
CONTEXT = "context"
# The field named in errors about the query as a whole (neither or both of the above present).
QUERY_FIELD = f"{QUESTION}/{CONTEXT}"


class DataError(ValueError):
    """Bad input data.

    ``str(err)`` is one line naming the source, the 1-based line and the field, e.g.
    ``"data/dev.jsonl:12: field 'answers': expected a non-empty list of strings, got int"``.
    For in-memory sources (lists of dicts, ``datasets.Dataset``) ``line`` is the 1-based row.
    ``line`` and ``field`` are ``None`` when the problem concerns the whole source or record.
    """

    def __init__(self, source: str, line: int | None, field: str | None, problem: str):
        self.source = source
        self.line = line
        self.field = field
        self.problem = problem
        super().__init__(self._format())

    def _format(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        what = self.problem if self.field is None else f"field '{self.field}': {self.problem}"
        return f"{where}: {what}"

    def __reduce__(self) -> tuple[Any, ...]:
        # The default pickling passes only the formatted message back to __init__, which takes four
        # arguments; errors must survive pickling to cross DataLoader worker processes.
        return (type(self), (self.source, self.line, self.field, self.problem))


@dataclass(frozen=True, slots=True)
class Passage:
    """One knowledge-base entry. ``title`` may be empty; ``id`` and ``text`` may not."""

    id: str
    title: str
    text: str


@dataclass(frozen=True, slots=True)
class Example:
    """One training or evaluation example.

    ``query`` is the question, or for dialogue data the history so far (one ``Speaker: text``
    line per turn, oldest first); ``kind`` says which (``"question"`` or ``"context"``).
    ``answers`` holds at least one gold answer or response; ``positive_ids`` the gold passage ids,
    possibly none.
    """

    id: str
    query: str
    answers: tuple[str, ...]
    positive_ids: tuple[str, ...]
    kind: str


def load_examples(
    source: str | os.PathLike | Iterable[Mapping],
    corpus: Corpus | None = None,
    *,
    name: str | None = None,
) -> list[Example]:
    """Load and validate examples from a ``.jsonl`` path or an iterable of dicts.

    ``corpus``, when given, must contain every id in ``positive_ids``. ``name`` labels an
    in-memory source in error messages (default: the dataset's name, else ``"<records>"``).
    All examples must be of one kind, all ``question`` or all ``context``. Raises
    :class:`DataError` on the first problem found.
    """
    if isinstance(source, (str, os.PathLike)):
        label = name or os.fspath(source)
        numbered: Iterable[tuple[int, Any]] = _read_jsonl(os.fspath(source), label)
    else:
        label = name or _records_name(source)
        numbered = enumerate(source, start=1)

    examples: list[Example] = []
    first_line_of: dict[str, int] = {}
    for line, record in numbered:
        example = _example_from_record(record, label, line, corpus)
        earlier = first_line_of.setdefault(example.id, line)
        if earlier != line:
            problem = f"duplicate id {example.id!r}; first used at {label}:{earlier}"
            raise DataError(label, line, "id", problem)
        if examples and example.kind != examples[0].kind:
            # Question and dialogue data need different prompts, so one source must not mix them.
            first = first_line_of[examples[0].id]
            problem = (
                f"expected {examples[0].kind!r} like the first example at {label}:{first}; "
                "one source cannot mix questions and dialogue contexts"
            )
            raise DataError(label, line, example.kind, problem)
        examples.append(example)
    if not examples:
        raise DataError(label, None, None, "no examples")
    return examples


# --- reading -------------------------------------------------------------------------------------


def _read_jsonl(path: str, label: str | None = None) -> Iterator[tuple[int, Any]]:
    """Yield (1-based line number, decoded JSON value) for each non-blank line of ``path``."""
    label = label or path
    try:
        with open(path, "rb") as handle:
            yield from _parse_lines(handle, label)
    except FileNotFoundError:
        raise DataError(label, None, None, "file not found") from None
    except OSError as exc:
        raise DataError(label, None, None, f"cannot read file: {exc.strerror}") from None


def _parse_lines(lines: Iterable[bytes], label: str) -> Iterator[tuple[int, Any]]:
    # Bytes in, decoded per line: a UTF-8 error then names its line, which a text-mode file
    # iterator cannot do.
    for line, raw in enumerate(lines, start=1):
        if line == 1:
            # Editors on Windows often prepend a byte-order mark; it is not part of the JSON.
            raw = raw.removeprefix(codecs.BOM_UTF8)
        if not raw.strip():
            continue
        try:
            # Without its line break, so that JSON error columns point into the line itself.
            text = raw.rstrip(b"\r\n").decode("utf-8")
        except UnicodeDecodeError as exc:
            problem = f"not valid UTF-8: {exc.reason} at byte {exc.start}"
            raise DataError(label, line, None, problem) from None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(label, line, None, f"invalid JSON: {exc.msg} at column {exc.colno}") from None
        yield line, value


def _records_name(records: object) -> str:
    """A label for an in-memory source: the Hugging Face dataset name and split when known."""
    dataset_name = getattr(getattr(records, "info", None), "dataset_name", None)
    if not dataset_name:
        return "<records>"
    split = getattr(records, "split", None)
    return f"<{dataset_name} {split}>" if split else f"<{dataset_name}>"


# --- validation ----------------------------------------------------------------------------------


def _describe(value: object) -> str:
    """How a wrong value is named in messages: its JSON-ish type, or why a string is unusable."""
    if value is None:
        return "null"
    if isinstance(value, str) and not value.strip():
        return "a blank string" if value else "an empty string"
    if isinstance(value, (list, tuple)) and not value:
        return "an empty list"
    return type(value).__name__


def _is_text(value: object) -> bool:
    """A usable string: whitespace-only values carry no information and are treated as empty."""
    return isinstance(value, str) and bool(value.strip())


def _require_object(record: object, source: str, line: int | None, field: str | None = None) -> Mapping:
    if not isinstance(record, Mapping):
        raise DataError(source, line, field, f"expected a JSON object, got {_describe(record)}")
    return record


def _require_text(record: Mapping, key: str, source: str, line: int) -> str:
    if key not in record:
        raise DataError(source, line, key, "missing")
    value = record[key]
    if not _is_text(value):
        raise DataError(source, line, key, f"expected a non-empty string, got {_describe(value)}")
    return value


def _require_text_list(
    value: object, key: str, source: str, line: int, *, allow_empty: bool
) -> tuple[str, ...]:
    expected = "a list of strings" if allow_empty else "a non-empty list of strings"
    # Tuples are accepted too: in-memory records are not limited to what JSON can express.
    if not isinstance(value, (list, tuple)) or (not value and not allow_empty):
        raise DataError(source, line, key, f"expected {expected}, got {_describe(value)}")
    for index, item in enumerate(value):
        if not _is_text(item):
            raise DataError(source, line, key, f"expected {expected}, got {_describe(item)} at index {index}")
    return tuple(value)


def _passage_from_record(record: object, source: str, line: int) -> Passage:
    """Build a Passage from one corpus record; field types are checked later by _check_passage."""
    record = _require_object(record, source, line)
    for key in ("id", "text"):
        if key not in record:
            raise DataError(source, line, key, "missing")
    # A missing or null title means "no title": many corpora (and HF datasets, which fill absent
    # columns with None) have none.
    title = record.get("title")
    return Passage(id=record["id"], title="" if title is None else title, text=record["text"])


def _check_passage(passage: Passage, source: str, line: int) -> None:
    if not isinstance(passage, Passage):
        raise DataError(source, line, None, f"expected a Passage, got {_describe(passage)}")
    for key in ("id", "text"):
        value = getattr(passage, key)
        if not _is_text(value):
            raise DataError(source, line, key, f"expected a non-empty string, got {_describe(value)}")
    if not isinstance(passage.title, str):
        raise DataError(source, line, "title", f"expected a string, got {_describe(passage.title)}")


def _example_from_record(record: object, source: str, line: int, corpus: Corpus | None) -> Example:
    record = _require_object(record, source, line)
    example_id = _require_text(record, "id", source, line)
    kind = _query_kind(record, source, line)
    query = _require_text(record, kind, source, line)
    if "answers" not in record:
        raise DataError(source, line, "answers", "missing")
    answers = _require_text_list(record["answers"], "answers", source, line, allow_empty=False)
    positive_ids = _positive_ids(record, source, line, corpus)
    return Example(id=example_id, query=query, answers=answers, positive_ids=positive_ids, kind=kind)


def _query_kind(record: Mapping, source: str, line: int) -> str:
    """Which of ``question`` / ``context`` the record uses; exactly one must be present."""
    # None counts as absent: a HF dataset built from mixed records fills the other column with None.
    present = [key for key in (QUESTION, CONTEXT) if record.get(key) is not None]
    if not present:
        raise DataError(source, line, QUERY_FIELD, f"missing: give {QUESTION!r} or {CONTEXT!r}")
    if len(present) > 1:
        problem = f"both present: give {QUESTION!r} or {CONTEXT!r}, not both"
        raise DataError(source, line, QUERY_FIELD, problem)
    return present[0]


def _positive_ids(record: Mapping, source: str, line: int, corpus: Corpus | None) -> tuple[str, ...]:
    value = record.get("positive_ids")
    if value is None:  # optional for user data; None is how HF datasets spell "absent"
        return ()
    ids = _require_text_list(value, "positive_ids", source, line, allow_empty=True)
    if corpus is not None:
        for passage_id in ids:
            if not corpus.has(passage_id):
                problem = f"id {passage_id!r} is not in corpus {corpus.source}"
                raise DataError(source, line, "positive_ids", problem)
    return ids
