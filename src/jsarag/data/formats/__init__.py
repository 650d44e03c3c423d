"""Readers for published dataset formats, converted into the project's schema by ``jsarag data convert``.

A reader takes the files the user named and returns a :class:`Converted`: lazily read streams of
numbered records, already in the project's schema (``{"id", "title", "text"}`` for the corpus;
``{"id", "question" | "context", "answers", "positive_ids"}`` for the splits). Passages and examples
are read only when the writer (:func:`jsarag.data.convert.write_dataset`) iterates the streams, one
at a time, so no reader holds a corpus or a split in memory; what some keep is the small side data
they join against (qrels, MS MARCO's answers, KILT's provenance paragraphs, DoQA's context digests),
each module's docstring says what and how much. The writer validates every record with the same checks as the
JSONL loaders and names the reader's ``Source.label`` and line in its errors; a reader raises
:class:`~jsarag.data.DataError` itself for problems of its own format (a missing column, a bad qrels row).

Each format lives in its own module and is registered in :data:`FORMATS` below; what the readers share
(split names, line and JSON streams, record checks) is in :mod:`jsarag.data.formats._io`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["FORMATS", "Converted", "Source", "parse_sources"]


@dataclass
class Source:
    """Numbered records from one input file: ``(1-based line or row, record)``."""

    label: str
    records: Iterable[tuple[int, Mapping]]


@dataclass
class Converted:
    """What a reader produces: corpus streams and split streams (``train``, ``dev``, ``test``)."""

    corpus: list[Source]
    splits: dict[str, list[Source]] = field(default_factory=dict)


Reader = Callable[[list[tuple[str | None, Path]]], Converted]


def parse_sources(args: list[str]) -> list[tuple[str | None, Path]]:
    """``[ROLE=]PATH`` arguments -> (role or None, path); the role names what a file is (e.g. ``corpus``,
    ``train``, ``dev``, ``test``, ``qrels``) when a reader cannot tell from the file name."""
    out: list[tuple[str | None, Path]] = []
    for arg in args:
        role, sep, path = arg.partition("=")
        if sep and role and "/" not in role and not Path(arg).exists():
            out.append((role, Path(path)))
        else:
            out.append((None, Path(arg)))
    return out


# The format modules import Source and Converted from this one, so they are imported after them.
from jsarag.data.formats import beir, doqa, dpr, kilt, msmarco, orquac  # noqa: E402

# name -> reader; one module per format.
FORMATS: dict[str, Reader] = {
    "beir": beir.read,
    "doqa": doqa.read,
    "dpr": dpr.read,
    "kilt": kilt.read,
    "msmarco": msmarco.read,
    "orquac": orquac.read,
}
