"""The corpus and the splits as Arrow tables on disk: opened in O(1), no Python object per passage.

A store is a folder, written once (streaming, validated, atomically) and then only read:

    data.arrow          Arrow IPC file, uncompressed: one row per passage (id, title, text) or per
                        example (id, query, answers, positive_ids); values are read where they lie
                        (see :mod:`jsarag.data.tables`), so memory does not grow with what is read
    id_hash.npy         uint64 BLAKE2b-64 of every id, sorted; id_row.npy: the row of each (int64);
    id_hash_sample.npy  every 512th hash, kept in memory: ``row(id)`` reads one 4 KB block and a row
    offsets.npy         first row of each record batch (random access by row without scanning)
    store.json          kind, number of rows, source, the corpus fingerprint (computed while writing),
                        the example kind (question / context), format version

``Corpus`` and ``Examples`` read such a folder, or the same tables held in memory for small in-memory
data (``Corpus(passages)``, ``Corpus.from_jsonl``). The records are validated by the checks of
:mod:`jsarag.data.schema`, so every problem is one line naming the file, the line and the field.

:func:`open_corpus` and :func:`open_split` are what the commands use: a store folder is opened as is; a
JSONL, TSV or Parquet file is converted once into a store in ``$JSARAG_CACHE/stores`` (keyed by the
file's path, size and modification time; a split's key also holds its corpus's fingerprint).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import json.encoder
import operator
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from jsarag.data.schema import (
    DataError,
    Example,
    Passage,
    _check_passage,
    _example_from_record,
    _passage_from_record,
    _read_jsonl,
)
from jsarag.data.tables import BatchSink, IdIndex, Table

__all__ = ["Corpus", "Examples", "build_corpus_store", "build_split_store", "open_corpus", "open_split",
           "store_cache_dir"]

STORE_VERSION = 1
DATA_FILE, META_FILE = "data.arrow", "store.json"
OFFSETS_FILE = "offsets.npy"
# A record batch is flushed at whichever comes first: bounded memory while writing, few batches to open.
BATCH_ROWS, BATCH_BYTES = 65_536, 32 << 20

CORPUS_SCHEMA = pa.schema([("id", pa.string()), ("title", pa.string()), ("text", pa.string())])
SPLIT_SCHEMA = pa.schema([("id", pa.string()), ("query", pa.string()), ("answers", pa.list_(pa.string())),
                          ("positive_ids", pa.list_(pa.string()))])

_json_string = json.encoder.encode_basestring  # the C implementation when available, as json.dumps uses
# (label, numbered records): one input file, or one in-memory source.
Numbered = tuple[str, Iterable[tuple[int, Any]]]


def store_cache_dir() -> Path:
    return Path(os.environ.get("JSARAG_CACHE", Path.home() / ".cache" / "jsarag")) / "stores"


def _open_parts(folder: Path, kind: str) -> tuple[dict, Table, IdIndex]:
    meta = json.loads((folder / META_FILE).read_text())
    if meta.get("kind") != kind:
        raise DataError(str(folder), None, None, f"is a {meta.get('kind')} store, not a {kind} store")
    if meta.get("version") != STORE_VERSION:
        raise DataError(str(folder), None, None, f"store version {meta.get('version')} is not "
                        f"{STORE_VERSION}; convert the data again")
    return meta, Table(path=folder / DATA_FILE, offsets=np.load(folder / OFFSETS_FILE)), IdIndex.open(folder)


class Corpus:
    """An ordered knowledge base. Row i (0-based int) is the i-th passage; FAISS rows use the same numbering.

    Passage ids are unique, so ``row(passage_id)`` and ``corpus[row]`` are inverse mappings. A corpus
    opened from a store (:meth:`open`) stays on disk: opening reads a few small files whatever the
    corpus size, and only the passages asked for are read.
    """

    source: str

    def __init__(self, passages: Sequence[Passage], source: str = "<memory>"):
        """Validate and index ``passages`` in memory; raises :class:`DataError` (line = index + 1)."""
        for line, passage in enumerate(passages, start=1):
            _check_passage(passage, source, line)
        records = ((line, {"id": p.id, "title": p.title, "text": p.text})
                   for line, p in enumerate(passages, start=1))
        built = _write_corpus([(source, records)], None)
        self._init(built.meta, built.table, built.index)

    def _init(self, meta: dict, table: Table, index: IdIndex) -> None:
        self.source, self._meta, self._table, self._index = meta["source"], meta, table, index

    @classmethod
    def open(cls, folder: str | os.PathLike) -> Corpus:
        """A corpus store written by :func:`build_corpus_store`."""
        meta, table, index = _open_parts(Path(folder), "corpus")
        corpus = cls.__new__(cls)
        corpus._init(meta, table, index)
        return corpus

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike) -> Corpus:
        """Load a ``corpus.jsonl`` file into memory; its rows follow the file's line order."""
        source = os.fspath(path)
        return cls._built(_write_corpus([(source, _read_jsonl(source))], None))

    @classmethod
    def from_records(cls, records: Iterable[Mapping], source: str = "<records>") -> Corpus:
        """Build in memory from dicts with ``id``, ``text`` and optional ``title``, e.g. a ``datasets.Dataset``."""
        return cls._built(_write_corpus([(source, enumerate(records, start=1))], None))

    @classmethod
    def _built(cls, built: _Written) -> Corpus:
        corpus = cls.__new__(cls)
        corpus._init(built.meta, built.table, built.index)
        return corpus

    def __len__(self) -> int:
        return self._table.num_rows

    def _check_row(self, row: int) -> int:
        row = operator.index(row)
        # FAISS reports "no result" as -1; Python's negative indexing would silently turn that
        # into the last passage, so negative rows are rejected.
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} out of range for corpus {self.source} of {len(self)} passages")
        return row

    def __getitem__(self, row: int) -> Passage:
        """The passage at 0-based ``row``. Accepts NumPy integers, as returned by FAISS."""
        return Passage(*self._table.values(self._check_row(row)))

    def __iter__(self) -> Iterator[Passage]:
        for chunk in self.iter_chunks():
            yield from chunk

    def iter_chunks(self, start: int = 0, stop: int | None = None) -> Iterator[list[Passage]]:
        """The passages of rows [start, stop) in order, one stored record batch at a time."""
        stop = len(self) if stop is None else stop
        for cols in self._table.rows(start, stop):
            yield [Passage(*fields) for fields in zip(cols["id"], cols["title"], cols["text"], strict=True)]

    def _id_at(self, row: int) -> str:
        return self._table.value(row, 0)

    def row(self, passage_id: str) -> int:
        """The 0-based row of ``passage_id``; ``KeyError`` if the corpus has no such passage."""
        row = self._index.find(passage_id, self._id_at) if isinstance(passage_id, str) else -1
        if row < 0:
            raise KeyError(f"passage id {passage_id!r} is not in corpus {self.source}")
        return row

    def has(self, passage_id: str) -> bool:
        return isinstance(passage_id, str) and self._index.find(passage_id, self._id_at) >= 0

    @property
    def ids(self) -> list[str]:
        """All passage ids in row order (a new list: one Python string per passage, for small corpora)."""
        return [i for cols in self._table.rows(0, len(self)) for i in cols["id"]]

    def fingerprint(self) -> str:
        """SHA-256 hex digest of every id, title and text in row order, computed when the store was written.

        Identifies the corpus content (not its file name), so that a saved index or cache built
        from a different corpus can be detected.
        """
        return self._meta["fingerprint"]

    def __repr__(self) -> str:
        return f"Corpus(source={self.source!r}, passages={len(self)})"


class Examples(Sequence[Example]):
    """A split's examples as a read-only sequence: ``len``, ``[i]``, slices (views) and iteration.

    Backed by an Arrow table, on disk when opened from a store, so a split of any size costs
    memory only for the examples being read.
    """

    def __init__(self, meta: dict, table: Table, start: int = 0, stop: int | None = None):
        self._meta, self._table = meta, table
        self._start, self._stop = start, table.num_rows if stop is None else stop
        self.source: str = meta["source"]
        self.kind: str = meta["example_kind"]

    @classmethod
    def open(cls, folder: str | os.PathLike) -> Examples:
        meta, table, _ = _open_parts(Path(folder), "split")
        return cls(meta, table)

    def __len__(self) -> int:
        return self._stop - self._start

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                return [self[j] for j in range(start, stop, step)]
            return Examples(self._meta, self._table, self._start + start, self._start + max(start, stop))
        i = operator.index(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"example {i} out of range for {self.source} of {len(self)} examples")
        return self._example(*self._table.values(self._start + i))

    def _example(self, example_id: str, query: str, answers: list, positive_ids: list) -> Example:
        return Example(example_id, query, tuple(answers), tuple(positive_ids), self.kind)

    def __iter__(self) -> Iterator[Example]:
        for cols in self._table.rows(self._start, self._stop):
            yield from (self._example(*fields) for fields in
                        zip(cols["id"], cols["query"], cols["answers"], cols["positive_ids"], strict=True))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Examples, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __repr__(self) -> str:
        return f"Examples(source={self.source!r}, examples={len(self)}, kind={self.kind!r})"


# --- writing ---------------------------------------------------------------------------------------


class _Written:
    def __init__(self, meta: dict, table: Table, index: IdIndex):
        self.meta, self.table, self.index = meta, table, index


def _progress(total: int | None, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    # delay: a small file converts before the bar would show, and prints nothing.
    return tqdm(total=total, desc=desc, unit=" rows", unit_scale=True, delay=2.0, disable=not enabled)


def _finish(sink: BatchSink, labels: list[str], meta: dict, folder: Path | None, what: str,
            empty: str) -> _Written:
    table, hashes = sink.close()
    if table is None:
        raise DataError(labels[0] if len(labels) == 1 else ", ".join(labels), None, None, empty)
    index = IdIndex.build(hashes)
    duplicate = index.first_duplicate(lambda row: table.value(row, 0))
    if duplicate is not None:
        first, later = duplicate
        where = f"{labels[sink.sources[first]]}:{sink.lines[first]}"
        raise DataError(labels[sink.sources[later]], sink.lines[later], "id",
                        f"duplicate id {table.value(later, 0)!r}; first used at {where}")
    meta = {"version": STORE_VERSION, "kind": what, "rows": table.num_rows, "source": ", ".join(labels), **meta,
            "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if folder is not None:
        index.save(folder)
        np.save(folder / OFFSETS_FILE, table.offsets)
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))
    return _Written(meta, table, index)


def _fingerprint_line(p: Passage, label: str = "", line: int = 0) -> bytes:
    """``json.dumps([id, title, text], ensure_ascii=False)``, byte for byte, without the encoder's overhead
    (a third of the conversion time): JSON's own string encoder on each field, joined as ``json.dumps`` does."""
    try:
        return f"[{_json_string(p.id)}, {_json_string(p.title)}, {_json_string(p.text)}]".encode()
    except UnicodeEncodeError:
        _check_utf8({"id": p.id, "title": p.title, "text": p.text}, label, line)
        raise


def _check_utf8(fields: Mapping[str, str | Sequence[str]], label: str, line: int) -> int:
    """UTF-8 size of the fields; a lone surrogate (e.g. a JSON ``"\\ud800"`` escape) is a DataError."""
    size = 0
    for name, value in fields.items():
        for text in (value,) if isinstance(value, str) else value:
            try:
                size += len(text.encode())
            except UnicodeEncodeError as err:
                raise DataError(label, line, name, f"not valid Unicode: lone surrogate at character {err.start}"
                                ) from None
    return size


def _write_corpus(sources: Sequence[Numbered], folder: Path | None, *, progress: bool = False) -> _Written:
    """Validate corpus records and write them (into ``folder``, or into memory when None)."""
    sink = BatchSink(CORPUS_SCHEMA, folder / DATA_FILE if folder is not None else None, batch_rows=BATCH_ROWS,
                     batch_bytes=BATCH_BYTES)
    digest = hashlib.sha256()
    labels = [label for label, _ in sources]
    with _progress(None, "corpus store", progress) as bar:
        for s, (label, numbered) in enumerate(sources):
            for line, record in numbered:
                passage = _passage_from_record(record, label, line)
                _check_passage(passage, label, line)
                # The fingerprint of Corpus.fingerprint(): a JSON array per line is unambiguous, so no
                # choice of field values can make two different corpora encode to the same bytes.
                encoded = _fingerprint_line(passage, label, line)
                digest.update(encoded + b"\n")
                sink.add((passage.id, passage.title, passage.text), len(encoded), line, s)
                bar.update()
    return _finish(sink, labels, {"fingerprint": digest.hexdigest()}, folder, "corpus", "no passages")


def _write_split(sources: Sequence[Numbered], folder: Path | None, corpus: Corpus | None, *,
                 progress: bool = False) -> _Written:
    """Validate examples (against ``corpus`` when given) and write them; one kind per split."""
    sink = BatchSink(SPLIT_SCHEMA, folder / DATA_FILE if folder is not None else None, batch_rows=BATCH_ROWS,
                     batch_bytes=BATCH_BYTES)
    labels = [label for label, _ in sources]
    first: tuple[str, str, int] | None = None  # (kind, label, line) of the first example
    with _progress(None, "split store", progress) as bar:
        for s, (label, numbered) in enumerate(sources):
            for line, record in numbered:
                e = _example_from_record(record, label, line, corpus)
                if first is None:
                    first = (e.kind, label, line)
                elif e.kind != first[0]:
                    # Question and dialogue data need different prompts, so one split must not mix them.
                    raise DataError(label, line, e.kind, f"expected {first[0]!r} like the first example at "
                                    f"{first[1]}:{first[2]}; one source cannot mix questions and dialogue contexts")
                size = _check_utf8({"id": e.id, e.kind: e.query, "answers": e.answers,
                                    "positive_ids": e.positive_ids}, label, line)
                sink.add((e.id, e.query, list(e.answers), list(e.positive_ids)), size, line, s)
                bar.update()
    meta = {"example_kind": first[0] if first else None,
            "corpus_fingerprint": corpus.fingerprint() if corpus is not None else None}
    return _finish(sink, labels, meta, folder, "split", "no examples")


def _atomic_build(out: Path, write) -> None:
    """Run ``write(tmp_folder)`` and move the folder to ``out`` only when it is complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(tmp)
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / META_FILE).is_file():  # not another process's finished copy of the same store
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_corpus_store(sources: Sequence[Numbered], out: str | os.PathLike, *, progress: bool = True) -> Corpus:
    """Validate and write a corpus store into ``out`` (which must not exist yet) and open it.

    ``sources`` are (label, numbered records) pairs, read once, in order; each record is a mapping with
    ``id``, ``text`` and an optional ``title``. A bad record raises :class:`DataError` naming its label
    and line, and leaves nothing at ``out``.
    """
    out = Path(out)
    _atomic_build(out, lambda tmp: _write_corpus(sources, tmp, progress=progress))
    return Corpus.open(out)


def build_split_store(sources: Sequence[Numbered], out: str | os.PathLike, corpus: Corpus | None, *,
                      progress: bool = True) -> Examples:
    """Validate and write a split store (examples whose positive ids ``corpus`` must contain)."""
    out = Path(out)
    _atomic_build(out, lambda tmp: _write_split(sources, tmp, corpus, progress=progress))
    return Examples.open(out)


# --- reading the usual file formats ---------------------------------------------------------------


def _read_tsv(path: str) -> Iterator[tuple[int, dict]]:
    """A TSV with a header naming its columns (DPR's ``psgs_w100.tsv``: ``id``, ``text``, ``title``)."""
    import csv

    with open(path, encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t")
        try:
            header = next(rows, None)
            if header is None:
                return
            for number, row in enumerate(rows, start=2):
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(path, number, None, f"expected {len(header)} tab-separated fields "
                                    f"({', '.join(header)}), got {len(row)}")
                yield number, dict(zip(header, row))
        except UnicodeDecodeError as exc:  # decoded ahead in blocks: the line is not known
            raise DataError(path, None, None, f"not valid UTF-8: {exc.reason}") from None
        except csv.Error as exc:
            raise DataError(path, rows.line_num, None, f"unreadable TSV: {exc}") from None


def _read_parquet(path: str) -> Iterator[tuple[int, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=8192):
            for record in batch.to_pylist():
                row += 1
                yield row, record
    except (pa.ArrowException, OSError) as exc:  # not Parquet, truncated, or an unsupported encoding
        raise DataError(path, None, None, f"not a readable Parquet file: {' '.join(str(exc).split())}") from None


def read_records(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Numbered records of a ``.jsonl``, ``.tsv`` or ``.parquet`` file (by its suffix; JSONL otherwise)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(path, None, None, "file not found")
    suffix = Path(path).suffix.lower()
    if suffix == ".tsv":
        return _read_tsv(path)
    if suffix == ".parquet":
        return _read_parquet(path)
    return _read_jsonl(path)


def is_store(path: str | os.PathLike) -> bool:
    return (Path(path) / META_FILE).is_file()


def _cache_key(path: Path, *extra: str) -> str:
    stat = path.stat()
    text = "\0".join([str(path.resolve()), str(stat.st_size), str(stat.st_mtime_ns), str(STORE_VERSION), *extra])
    return f"{path.name}-{hashlib.sha256(text.encode()).hexdigest()[:20]}"


def open_corpus(path: str | os.PathLike, *, progress: bool = True) -> Corpus:
    """The corpus at ``path``: a store folder, or a data file converted once into a cached store."""
    path = Path(path)
    if is_store(path):
        return Corpus.open(path)
    if path.is_dir():
        raise DataError(str(path), None, None, "is a folder but not a corpus store (no store.json)")
    if not path.exists():
        raise DataError(str(path), None, None, "file not found")
    cached = store_cache_dir() / "corpus" / _cache_key(path)
    if is_store(cached):
        return Corpus.open(cached)
    return build_corpus_store([(str(path), read_records(path))], cached, progress=progress)


def open_split(path: str | os.PathLike, corpus: Corpus | None, *, progress: bool = True) -> Examples:
    """A split at ``path`` (a split store folder, or a data file converted once into a cached store)
    whose positive ids must all be in ``corpus``."""
    path = Path(path)
    if is_store(path):
        split = Examples.open(path)
        expected = corpus.fingerprint() if corpus is not None else None
        if expected is not None and split._meta.get("corpus_fingerprint") not in (None, expected):
            raise DataError(str(path), None, None, "was checked against another corpus; convert it again")
        return split
    if not path.exists():
        raise DataError(str(path), None, None, "file not found")
    cached = store_cache_dir() / "split" / _cache_key(path, corpus.fingerprint() if corpus is not None else "")
    if is_store(cached):
        return Examples.open(cached)
    return build_split_store([(str(path), read_records(path))], cached, corpus, progress=progress)
