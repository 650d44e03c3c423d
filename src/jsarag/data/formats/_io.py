"""What the format readers share: the split names, finding a split in a file name, reading text and JSON
files as streams, and the checks on records that name the file, line and field of a problem.

Every problem is a :class:`~jsarag.data.DataError` of one line, as the JSON Lines loaders raise them.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import ijson

from jsarag.data.schema import DataError, _describe, _read_jsonl
from jsarag.data.schema import _require_object as require_object

SPLITS = ("train", "dev", "test")
# How a file name is cut into words when looking for a split word: runs of letters (``nq-dev2.jsonl``
# has the word ``dev``), or the parts between ``-``, ``_`` and ``.`` (there it has ``dev2``).
LETTER_RUNS = r"[a-z]+"
DOTTED_PARTS = r"[^-_.]+"


# --- file names ----------------------------------------------------------------------------------


def split_in_name(name: str, words: Mapping[str, str] | None = None, word: str = LETTER_RUNS) -> str | None:
    """The split named by the one split word of a file name, else None. ``words`` maps the words looked
    for to their split (by default each of :data:`SPLITS` to itself); ``word`` is the pattern of a word."""
    words = words or {split: split for split in SPLITS}
    found = {words[part] for part in re.findall(word, name.lower()) if part in words}
    return found.pop() if len(found) == 1 else None


def split_from_name(path: Path, label: str, word: str = LETTER_RUNS) -> str:
    """As :func:`split_in_name`, but a name without one split word is an error."""
    split = split_in_name(path.name, word=word)
    if split is None:
        problem = "cannot tell the split from the file name; name it as train=PATH, dev=PATH or test=PATH"
        raise DataError(label, None, None, problem)
    return split


def require_file(path: Path) -> str:
    """The label of an input file (its path as given), which must exist."""
    label = str(path)
    if not path.is_file():
        raise DataError(label, None, None, "file not found")
    return label


# --- text files ----------------------------------------------------------------------------------


def utf8_lines(path: Path, label: str) -> Iterator[tuple[int, str]]:
    """(1-based line, text with its line break) of every line, decoded one line at a time so that a UTF-8
    error names its line; a byte-order mark before the first line is dropped."""
    with open(path, "rb") as handle:
        for line, raw in enumerate(handle, start=1):
            if line == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(label, line, None, f"not valid UTF-8: {exc.reason} at byte {exc.start}") from None
            yield line, text


def text_lines(path: Path, label: str) -> Iterator[tuple[int, str]]:
    """(1-based line, text without its line break) of each non-blank line."""
    for line, text in utf8_lines(path, label):
        text = text.rstrip("\r\n")
        if text.strip():
            yield line, text


# --- JSON files ----------------------------------------------------------------------------------


def json_objects(path: Path | str, label: str | None = None) -> Iterator[tuple[int, Mapping]]:
    """(1-based line, object) of a JSON Lines file; a line holding anything but an object is an error."""
    label = label or str(path)
    for line, value in _read_jsonl(str(path), label):
        yield line, require_object(value, label, line)


def first_record(path: Path) -> Any:
    """The first value of a JSON Lines file (None if it has none), to tell what the file holds."""
    records = _read_jsonl(str(path))
    try:
        return next(records, (None, None))[1]
    finally:
        records.close()


def json_stream(path: Path | str, label: str, prefix: str, pairs: bool = False, numbered: bool = False) -> Iterator:
    """The values under ``prefix`` of a JSON file (with ``pairs``, the (key, value) pairs of the object
    there), streamed by ``ijson``, numbers as floats. A parse error names the file, or with ``numbered``
    the 1-based value that failed."""
    n = 0
    try:
        with open(path, "rb") as handle:
            parse = ijson.kvitems if pairs else ijson.items
            for n, value in enumerate(parse(handle, prefix, use_float=True), start=1):
                yield value
    except FileNotFoundError:
        raise DataError(label, None, None, "file not found") from None
    except ijson.JSONError as exc:
        raise DataError(label, n + 1 if numbered else None, None, f"invalid JSON: {first_line(exc)}") from None


def first_line(exc: Exception) -> str:
    """ijson's yajl backend appends the offending text on further lines; errors here are one line."""
    return str(exc).strip().split("\n")[0] or type(exc).__name__


# --- records -------------------------------------------------------------------------------------


def require(record: Mapping, key: str, label: str, line: int) -> Any:
    """``record[key]``, which must be there (its value is checked later, by the writer)."""
    if key not in record:
        raise DataError(label, line, key, "missing")
    return record[key]


def require_text(value: object, label: str, line: int, field: str) -> str:
    """A non-empty string, stripped."""
    if not isinstance(value, str) or not value.strip():
        raise DataError(label, line, field, f"expected a non-empty string, got {_describe(value)}")
    return value.strip()


def add_judgement(
    positives: dict[str, list[str]], query_id: str, doc_id: str, grade: str, label: str, line: int, field: str
) -> None:
    """One qrels row: ``doc_id`` joins the positives of ``query_id`` (once, in file order) when its integer
    ``grade`` (the column ``field``) is > 0; the query is a key of ``positives`` either way."""
    try:
        relevant = int(grade) > 0
    except ValueError:
        raise DataError(label, line, field, f"expected an integer, got {grade!r}") from None
    ids = positives.setdefault(query_id, [])
    if relevant and doc_id not in ids:
        ids.append(doc_id)
