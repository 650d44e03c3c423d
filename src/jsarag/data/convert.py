"""``jsarag data convert FORMAT --out DIR SOURCE...``: a published dataset into the project's schema.

    DIR/corpus/        the corpus store (memory-mapped Arrow; see :mod:`jsarag.data.store`)
    DIR/train.jsonl    one JSONL file per split found, in the schema of :mod:`jsarag.data.schema`
    DIR/dev.jsonl ...
    DIR/dataset.json   format, sources, counts, corpus fingerprint, when

Everything is validated while it is written (the checks of the JSONL loaders, positive ids against the
corpus, unique ids), in one streaming pass per file, into a hidden folder beside DIR that becomes DIR
only when complete: a malformed row stops the conversion with one line naming its file and line, and
leaves nothing behind. Use the result with ``data.corpus=DIR/corpus data.train=DIR/train.jsonl ...``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from jsarag.data.formats import FORMATS, Converted, parse_sources
from jsarag.data.formats._io import SPLITS
from jsarag.data.schema import DataError
from jsarag.data.store import _write_split, build_corpus_store

__all__ = ["convert", "write_dataset"]


def _tee(numbered: Iterable[tuple[int, Any]], handle: IO[str]) -> Iterator[tuple[int, Any]]:
    """Write each record as a JSONL line as it passes through to the validating writer."""
    for line, record in numbered:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        yield line, record


def write_dataset(converted: Converted, out: str | os.PathLike, *, fmt: str = "", inputs: list[str] | None = None,
                  progress: bool = True) -> dict:
    """Validate and write ``converted`` into the new folder ``out``; returns the ``dataset.json`` summary.

    ``inputs`` (the files the user named, recorded in the summary) defaults to the labels of the sources.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(str(out), None, None, "exists and is not empty; choose a new --out folder")
    unknown = sorted(set(converted.splits) - set(SPLITS))
    if unknown:
        raise DataError(str(out), None, None, f"unknown split(s) {', '.join(unknown)} (known: {', '.join(SPLITS)})")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        corpus = build_corpus_store([(s.label, s.records) for s in converted.corpus], tmp / "corpus",
                                    progress=progress)
        counts = {}
        for split in SPLITS:
            sources = converted.splits.get(split)
            if not sources:
                continue
            with open(tmp / f"{split}.jsonl", "w", encoding="utf-8") as handle:
                written = _write_split([(s.label, _tee(s.records, handle)) for s in sources], None, corpus,
                                       progress=progress)
            counts[split] = {"examples": written.table.num_rows, "kind": written.meta["example_kind"]}
        labels = {s.label for ss in [converted.corpus, *converted.splits.values()] for s in ss}
        summary = {"format": fmt, "sources": list(inputs) if inputs is not None else sorted(labels),
                   "corpus": {"passages": len(corpus), "fingerprint": corpus.fingerprint()}, "splits": counts,
                   "converted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        (tmp / "dataset.json").write_text(json.dumps(summary, indent=2))
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def convert(fmt: str, sources: list[str], out: str | os.PathLike, *, progress: bool = True) -> dict:
    """Read ``sources`` (``[ROLE=]PATH``) in format ``fmt`` and write the dataset into ``out``."""
    if fmt not in FORMATS:
        raise DataError(fmt, None, None, f"unknown format (known: {', '.join(sorted(FORMATS))})")
    if not sources:
        raise DataError(fmt, None, None, "no source files given")
    parsed = parse_sources(sources)
    for _, path in parsed:
        if not path.exists():
            raise DataError(str(path), None, None, "file not found")
    return write_dataset(FORMATS[fmt](parsed), out, fmt=fmt, inputs=list(sources), progress=progress)
