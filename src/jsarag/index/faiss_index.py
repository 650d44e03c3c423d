"""A FAISS inner-product index over a corpus, saved as a self-describing folder.

Row ``i`` of the index is row ``i`` of the corpus. The folder holds ``index.faiss`` and ``meta.json``
(factory string, dimension, passage count, corpus hash, and the identity of the passage encoder:
name, weight fingerprint, pooling, normalisation, maximum length; and the files the save wrote).
Loading checks the corpus and the encoder, so an index can never silently serve vectors from another
corpus or model. A save replaces only those files: the folder may hold other files (a user's notes) too.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from jsarag.errors import IndexMismatchError

INDEX_FILE = "index.faiss"
META_FILE = "meta.json"
STAGING_DIR = ".index-save"  # a save being written; discarded by the next save if it was interrupted
COMMIT_DIR = ".index-commit"  # a complete save whose files are being moved into place


@dataclass
class IndexMeta:
    factory: str
    dim: int
    num_passages: int
    corpus_hash: str
    corpus_source: str
    encoder: dict[str, Any]
    search_params: str = ""
    built_at: str = ""


def _short(h: str) -> str:
    return h[:12]


class PassageIndex:
    """FAISS index + metadata. Scores are inner products (cosine when the encoder normalises)."""

    def __init__(self, index: faiss.Index, meta: IndexMeta):
        self.index = index
        self.meta = meta
        self.location: str | None = None  # the folder it was loaded from, for messages
        if meta.search_params:
            faiss.ParameterSpace().set_index_parameters(index, meta.search_params)
        ivf = _ivf_or_none(index)
        if ivf is not None:  # IVF indexes reconstruct by id only with a direct map
            ivf.make_direct_map()

    @classmethod
    def from_vectors(cls, vectors: np.ndarray, *, factory: str = "Flat", search_params: str = "",
                     corpus_hash: str, corpus_source: str = "", encoder: dict[str, Any]) -> "PassageIndex":
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n, dim = vectors.shape
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            index.train(vectors)
        index.add(vectors)
        meta = IndexMeta(factory=factory, dim=dim, num_passages=n, corpus_hash=corpus_hash,
                         corpus_source=corpus_source, encoder=dict(encoder), search_params=search_params,
                         built_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        return cls(index, meta)

    def __len__(self) -> int:
        return self.index.ntotal

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows for each query: (scores [B, k] float32, rows [B, k] int64), best first."""
        if k > self.index.ntotal:
            raise ValueError(f"asked for the top {k} passages of an index holding {self.index.ntotal}")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        scores, rows = self.index.search(queries, k)
        return scores, rows

    def reconstruct(self, rows: np.ndarray) -> np.ndarray:
        """Stored vectors for ``rows`` (any shape), shape ``rows.shape + (dim,)``."""
        flat = np.ascontiguousarray(rows, dtype=np.int64).reshape(-1)
        return self.index.reconstruct_batch(flat).reshape(*rows.shape, self.meta.dim)

    def check(self, corpus_hash: str | None = None, encoder: dict[str, Any] | None = None) -> None:
        """Raise IndexMismatchError unless the index matches the given corpus and encoder identity."""
        where = f"the index at {self.location}" if self.location else "this index"
        if corpus_hash is not None and corpus_hash != self.meta.corpus_hash:
            raise IndexMismatchError(
                f"{where} was built for another corpus ({self.meta.corpus_source or 'unknown'}, "
                f"{self.meta.num_passages} passages, hash {_short(self.meta.corpus_hash)}) than the one "
                f"given (hash {_short(corpus_hash)}); rebuild it with `jsarag index build`")
        if encoder is not None:
            mine = self.meta.encoder
            for key in ("fingerprint", "pooling", "normalize", "max_length"):
                if key in encoder and mine.get(key) != encoder[key]:
                    raise IndexMismatchError(
                        f"{where} was built with another passage encoder ({mine.get('name')}, "
                        f"{key}={_short(str(mine.get(key)))}) than the one configured ({encoder.get('name')}, "
                        f"{key}={_short(str(encoder[key]))}); rebuild it with `jsarag index build`")

    def save(self, path: str | os.PathLike, extra_files: dict[str, str] | None = None) -> None:
        """Write the index's files into the folder ``path`` (created if missing), beside anything else there.

        Only the index's own files are replaced: those written now and those the previous save listed in
        meta.json; nothing else in the folder is touched. The files are written into a hidden staging
        folder; renaming it to the commit folder is the moment the new index counts as saved, and its files
        are then moved into place. A crash before the commit leaves the old index; after it, the next save
        or load finishes moving the new one.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        _finish_interrupted_save(path, discard_staging=True)
        staging = path / STAGING_DIR
        staging.mkdir()
        files = sorted({INDEX_FILE, META_FILE, *(extra_files or {})})
        faiss.write_index(self.index, str(staging / INDEX_FILE))
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
        (staging / META_FILE).write_text(json.dumps({**asdict(self.meta), "files": files}, indent=2))
        stale = set(_own_files(path)) - set(files)
        os.rename(staging, path / COMMIT_DIR)
        _finish_interrupted_save(path, discard_staging=False)
        for name in stale:  # e.g. a config.yaml written by the previous save and not by this one
            if (path / name).is_file():
                (path / name).unlink()

    @classmethod
    def load(cls, path: str | os.PathLike, *, corpus_hash: str | None = None,
             encoder: dict[str, Any] | None = None) -> "PassageIndex":
        path = Path(path)
        if (path / COMMIT_DIR).is_dir():
            try:
                _finish_interrupted_save(path, discard_staging=False)
            except OSError as err:
                raise IndexMismatchError(f"the index at {path} was saved only in part and cannot be completed "
                                         f"here ({err.strerror}); save it again") from None
        if not (path / META_FILE).is_file() or not (path / INDEX_FILE).is_file():
            raise IndexMismatchError(f"no index at {path} (expected {INDEX_FILE} and {META_FILE})")
        try:
            fields = json.loads((path / META_FILE).read_text())
            fields.pop("files", None)  # which files the save wrote: for the next save, not part of the identity
            meta = IndexMeta(**fields)
        except (json.JSONDecodeError, TypeError, AttributeError) as err:
            raise IndexMismatchError(f"{path / META_FILE} is not an index description: {err}") from None
        index = cls(faiss.read_index(str(path / INDEX_FILE)), meta)
        index.location = str(path)
        index.check(corpus_hash, encoder)
        return index


def _ivf_or_none(index: faiss.Index):
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _own_files(path: Path) -> list[str]:
    """The files the last save into ``path`` wrote, as listed in its meta.json (none if unreadable)."""
    try:
        listed = json.loads((path / META_FILE).read_text()).get("files", [INDEX_FILE, META_FILE])
    except (OSError, json.JSONDecodeError, AttributeError):
        return []
    return [name for name in listed if isinstance(name, str) and name not in ("", ".", "..")
            and name == Path(name).name]


def _finish_interrupted_save(path: Path, *, discard_staging: bool) -> None:
    """Move a committed save's files into place (meta.json last); optionally drop an uncommitted one."""
    if discard_staging:
        shutil.rmtree(path / STAGING_DIR, ignore_errors=True)
    committed = path / COMMIT_DIR
    if not committed.is_dir():
        return
    for name in sorted(os.listdir(committed), key=lambda n: n == META_FILE):
        try:
            os.replace(committed / name, path / name)
        except FileNotFoundError:  # moved meanwhile by a concurrent load of the same folder
            pass
    try:
        committed.rmdir()
    except FileNotFoundError:
        pass
