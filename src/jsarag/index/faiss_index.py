"""A FAISS inner-product index over a corpus, saved as a self-describing folder.

Row ``i`` of the index is row ``i`` of the corpus. The folder holds ``meta.json`` (factory string and
search settings, dimension, passage count, corpus hash, the identity of the passage encoder: name,
weight fingerprint, pooling, normalisation, maximum length; the measured recall; the files the save
wrote), ``vectors/`` (the passages' float16 vectors, :mod:`jsarag.index.vectors`), ``trained.faiss``
(the empty trained index, which a process holding one shard fills from the vectors) and ``index.faiss``
(the whole index). Loading checks the corpus and the encoder, so an index can never silently serve vectors
from another corpus or model. A save replaces only those files: the folder may hold other files too.

Exact vectors for scoring candidates come from ``vectors/``, never from a compressed index. With
``rerank`` r, a search asks FAISS for r*k candidates and re-scores them exactly from the vectors.
With ``shard=(rank, world)`` a process holds rows ``shard_bounds(n, rank, world)`` only, and
:meth:`PassageIndex.search` becomes a collective over the processes (:mod:`jsarag.index.sharded`).
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
from jsarag.index.vectors import VectorStore

INDEX_FILE = "index.faiss"
TRAINED_FILE = "trained.faiss"
META_FILE = "meta.json"
VECTORS_DIR = "vectors"
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
    rerank: int = 0  # candidates re-scored exactly from the vectors: rerank * k (0: none)
    vectors: str = ""  # the vector store's folder inside the index folder ("" for an index without one)
    recall_at_10: float | None = None  # against exact search, measured when built (None: exact or unmeasured)
    recall_queries: str = ""  # what the recall was measured with


def _short(h: str) -> str:
    return h[:12]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def trained_index(store: VectorStore, factory: str, train_size: int = 0, *, seed: int = 0) -> faiss.Index:
    """An empty FAISS index of ``factory``, trained on a seeded sample of the store's rows if it needs it."""
    index = faiss.index_factory(store.dim, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        size = min(len(store), train_size or len(store))
        sample = np.sort(np.random.default_rng(seed).choice(len(store), size=size, replace=False))
        index.train(store.rows(sample))
    return index


def fill_index(index: faiss.Index, store: VectorStore, start: int = 0, stop: int | None = None, *,
               progress: bool = True) -> faiss.Index:
    """Add the store's rows ``start:stop`` to ``index``, one shard at a time (memory: one shard)."""
    from tqdm.auto import tqdm

    stop = len(store) if stop is None else stop
    with tqdm(total=stop - start, desc="adding to the index", unit=" vectors", disable=not progress) as bar:
        for _, block in store.blocks(start, stop):
            index.add(block)
            bar.update(len(block))
    return index


class PassageIndex:
    """FAISS index + metadata (+ the vector store). Scores are inner products (cosine when the encoder
    normalises)."""

    def __init__(self, index: faiss.Index, meta: IndexMeta, store: VectorStore | None = None, *,
                 trained: faiss.Index | None = None, offset: int = 0, sharded: bool = False):
        self.index = index
        self.meta = meta
        self.store = store
        self.trained = trained  # the empty trained index, saved for processes that fill one shard each
        self.offset = offset  # the global row of local row 0 (a shard's first row)
        self.sharded = sharded
        self.location: str | None = None  # the folder it was loaded from, for messages
        if meta.search_params:
            faiss.ParameterSpace().set_index_parameters(index, meta.search_params)
        ivf = ivf_or_none(index)
        if store is None and ivf is not None:  # without a store, vectors come from reconstruct: direct map
            ivf.make_direct_map()

    @classmethod
    def from_vectors(cls, vectors: np.ndarray, *, factory: str = "Flat", search_params: str = "",
                     corpus_hash: str, corpus_source: str = "", encoder: dict[str, Any]) -> "PassageIndex":
        """An in-memory index of ``vectors`` without a vector store (its vectors come from ``reconstruct``)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n, dim = vectors.shape
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            index.train(vectors)
        index.add(vectors)
        meta = IndexMeta(factory=factory, dim=dim, num_passages=n, corpus_hash=corpus_hash,
                         corpus_source=corpus_source, encoder=dict(encoder), search_params=search_params,
                         built_at=_now())
        return cls(index, meta)

    @classmethod
    def from_store(cls, store: VectorStore, factory: str, *, search_params: str = "", rerank: int = 0,
                   train_size: int = 0, corpus_source: str = "", rows: tuple[int, int] | None = None,
                   progress: bool = True) -> "PassageIndex":
        """An index of a complete vector store: trained on a sample, then filled shard by shard with the
        rows ``rows=(start, stop)`` (default all; fewer make it one process's shard, saved without
        ``index.faiss``)."""
        start, stop = rows or (0, len(store))
        trained = trained_index(store, factory, train_size)
        index = fill_index(faiss.clone_index(trained), store, start, stop, progress=progress)
        meta = IndexMeta(factory=factory, dim=store.dim, num_passages=len(store),
                         corpus_hash=store.meta.corpus_hash, corpus_source=corpus_source,
                         encoder=dict(store.meta.encoder), search_params=search_params, built_at=_now(),
                         rerank=rerank, vectors=VECTORS_DIR)
        return cls(index, meta, store, trained=trained, offset=start, sharded=(start, stop) != (0, len(store)))

    def __len__(self) -> int:
        return self.meta.num_passages

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows for each query: (scores [B, k] float32, rows [B, k] int64), best first.

        On a sharded index every process must call it (with its own queries and the same ``k``)."""
        if k > len(self):
            raise ValueError(f"asked for the top {k} passages of an index holding {len(self)}")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.sharded:
            from jsarag.index.sharded import sharded_search

            return sharded_search(self._search_local, queries, k, offset=self.offset)
        return self._search_local(queries, k)

    def _search_local(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` of this process's rows (local rows; -1 where the shard holds fewer than ``k``)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        held = self.index.ntotal
        rerank = self.meta.rerank if self.store is not None else 0
        scores, rows = self.index.search(queries, min(held, k * rerank if rerank else k))
        if rerank and rows.size:  # exact scores of the candidates from the vector store
            exact = np.einsum("bd,bkd->bk", queries, self.store.rows(np.maximum(rows, 0) + self.offset))
            scores = np.where(rows >= 0, exact, -np.inf).astype(np.float32)
            order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            scores, rows = np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)
        if rows.shape[1] < k:  # a shard smaller than k: FAISS's fillers
            pad = k - rows.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
        return scores, rows

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Exact vectors for global ``rows`` (any shape), shape ``rows.shape + (dim,)``: from the vector
        store, or reconstructed by FAISS for an index without one."""
        if self.store is not None:
            return self.store.rows(rows)
        if self.sharded:
            raise RuntimeError("a sharded index reads its vectors from its vector store, and this one has none")
        flat = np.ascontiguousarray(rows, dtype=np.int64).reshape(-1)
        return self.index.reconstruct_batch(flat).reshape(*np.shape(rows), self.meta.dim)

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
        or load finishes moving the new one. A vector store already in ``path`` stays where it is; one
        elsewhere is linked into the save (hard links, or a copy where the file system has none). A
        sharded index saves everything but ``index.faiss``, which no process holds.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        _finish_interrupted_save(path, discard_staging=True)
        staging = path / STAGING_DIR
        staging.mkdir()
        written = dict(extra_files or {})
        if not self.sharded:
            faiss.write_index(self.index, str(staging / INDEX_FILE))
        if self.trained is not None:
            faiss.write_index(self.trained, str(staging / TRAINED_FILE))
        if self.store is not None and self.store.path.resolve() != (path / VECTORS_DIR).resolve():
            shutil.copytree(self.store.path, staging / VECTORS_DIR, copy_function=_link_or_copy)
        for name, text in written.items():
            (staging / name).write_text(text)
        files = sorted(os.listdir(staging)) + ([VECTORS_DIR] if self.store is not None else [])
        (staging / META_FILE).write_text(json.dumps({**asdict(self.meta), "files": sorted({*files, META_FILE})},
                                                    indent=2))
        stale = set(_own_files(path)) - set(files) - {META_FILE}
        os.rename(staging, path / COMMIT_DIR)
        _finish_interrupted_save(path, discard_staging=False)
        for name in stale:  # e.g. a config.yaml written by the previous save and not by this one
            if (path / name).is_dir():
                shutil.rmtree(path / name)
            elif (path / name).is_file():
                (path / name).unlink()

    @classmethod
    def load(cls, path: str | os.PathLike, *, corpus_hash: str | None = None,
             encoder: dict[str, Any] | None = None, shard: tuple[int, int] | None = None,
             progress: bool = False) -> "PassageIndex":
        """The index saved in ``path``. With ``shard=(rank, world)`` and ``world`` > 1, only that process's
        rows, filled from the vector store into the saved trained index (every process must load its shard
        and then search together)."""
        path = Path(path)
        if (path / COMMIT_DIR).is_dir():
            try:
                _finish_interrupted_save(path, discard_staging=False)
            except OSError as err:
                raise IndexMismatchError(f"the index at {path} was saved only in part and cannot be completed "
                                         f"here ({err.strerror}); save it again") from None
        if not (path / META_FILE).is_file():
            raise IndexMismatchError(f"no index at {path} (expected {META_FILE})")
        try:
            fields = json.loads((path / META_FILE).read_text())
            fields.pop("files", None)  # which files the save wrote: for the next save, not part of the identity
            meta = IndexMeta(**fields)
        except (json.JSONDecodeError, TypeError, AttributeError) as err:
            raise IndexMismatchError(f"{path / META_FILE} is not an index description: {err}") from None
        store = VectorStore.open(path / meta.vectors) if meta.vectors else None
        trained = faiss.read_index(str(path / TRAINED_FILE)) if (path / TRAINED_FILE).is_file() else None
        rank, world = shard or (0, 1)
        if world == 1 and (path / INDEX_FILE).is_file():
            index = cls(faiss.read_index(str(path / INDEX_FILE)), meta, store, trained=trained)
        elif store is not None and trained is not None:
            from jsarag.index.sharded import shard_bounds

            start, stop = shard_bounds(meta.num_passages, rank, world)
            local = fill_index(faiss.clone_index(trained), store, start, stop, progress=progress)
            index = cls(local, meta, store, trained=trained, offset=start, sharded=world > 1)
        else:
            raise IndexMismatchError(f"no index at {path} (expected {INDEX_FILE}, or {TRAINED_FILE} and "
                                     f"{VECTORS_DIR}/ to fill it from)")
        index.location = str(path)
        index.check(corpus_hash, encoder)
        return index


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def ivf_or_none(index: faiss.Index):
    """The IVF part of ``index`` (also inside a pre-transform or refine wrapper), or None."""
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
        if (committed / name).is_dir() and (path / name).is_dir():  # a folder (vectors/) replaces a folder
            shutil.rmtree(path / name)
        try:
            os.replace(committed / name, path / name)
        except FileNotFoundError:  # moved meanwhile by a concurrent load of the same folder
            pass
    try:
        committed.rmdir()
    except FileNotFoundError:
        pass
