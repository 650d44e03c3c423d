"""Embed a corpus into a vector store, then build a FAISS index from the store with bounded memory.

    build_index(corpus, encoder, "runs/x/index")      # vectors/ (float16 shards), index.faiss, meta.json

Memory while building: the FAISS index itself, plus one shard of float32 vectors, plus the training
sample of an IVF/PQ index; never the whole corpus's vectors. Under ``torchrun`` every process encodes its
own shards (``rank``/``world``/``barrier`` given by the caller) and the first one builds the index.

``factory="auto"`` chooses the index from the corpus size (see :func:`choose_index`); ``"HNSW"`` and
``"IVFPQ"`` ask for that kind with the sizes jsarag would choose; any other string is a FAISS factory
string used as is. An approximate index's recall@10 against exact search is measured when it is built.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import faiss
import numpy as np

from jsarag.data import Corpus
from jsarag.fileio import require_space
from jsarag.index.faiss_index import PassageIndex, ivf_or_none
from jsarag.index.vectors import SHARD_ROWS, VectorsMeta, VectorStore, encode_shards
from jsarag.models.encoder import Encoder

FLAT_UP_TO = 250_000  # exact search scans every vector for every query: x1.02 a tiny-model step at 200k, x1.53 at 1M
HNSW_UP_TO = 5_000_000  # full vectors in RAM plus a graph; above this, compressed codes (IVF-PQ)
RECALL_K = 10


@dataclass(frozen=True)
class IndexChoice:
    """A FAISS factory string with the search settings and exact re-ranking it is used with."""
    factory: str
    search_params: str = ""
    rerank: int = 0  # search rerank * k candidates, re-score them exactly from the vector store
    train_size: int = 0  # vectors sampled to train the index (0: it needs no training)


def choose_index(kind: str, n: int, dim: int) -> IndexChoice:
    """The index jsarag uses for ``n`` passages of ``dim`` dimensions: ``kind`` is ``auto`` (by size),
    ``Flat``, ``HNSW`` or ``IVFPQ``.

    - Flat up to 250,000 passages: exact (each query scans them all: at 1M x 32 dimensions a JSA step's
      8 queries took 45 ms, half a tiny-model step).
    - HNSW32 up to 5M: efSearch 128 (its vectors are stored whole, so its scores are exact already).
    - IVF-PQ above: nlist the power of two nearest 4 sqrt(n) (16,384 for DPR Wikipedia; at most n/8),
      nprobe nlist/8 within [16, 2048] (nlist/16 gave recall@10 0.94 on DSTC11's MiniLM vectors, nlist/8
      0.98); PQ with 4 dimensions per code of 8 bits (96 bytes per passage at
      384 dimensions; fewer bits below 1,024 passages) trained on 40 vectors per list; the top 4k by PQ
      distance are re-scored exactly from the vector store, so that PQ's quantisation error matters only
      for which 4k candidates come back. ``np``: no polysemous training (FAISS's default for a PQ factory
      string; we never search by Hamming distance, and it made training 2,067 vectors take 150 s, not 3).
    """
    if kind == "auto":
        kind = "Flat" if n <= FLAT_UP_TO else "HNSW" if n <= HNSW_UP_TO else "IVFPQ"
    if kind == "Flat":
        return IndexChoice("Flat")
    if kind == "HNSW":
        return IndexChoice("HNSW32", "efSearch=128")
    if kind == "IVFPQ":
        nlist = int(min(65_536, 2 ** round(math.log2(4 * math.sqrt(n))), max(16, 2 ** int(math.log2(max(n // 8, 1))))))
        nprobe = int(min(nlist, 2048, max(16, nlist // 8)))
        m = max(d for d in range(1, dim // 4 + 1) if dim % d == 0) if dim >= 4 else dim
        nbits = int(min(8, max(4, math.log2(max(n // 4, 1)))))  # a code's 2^nbits centroids need as many points
        return IndexChoice(f"IVF{nlist},PQ{m}x{nbits}np", f"nprobe={nprobe}", rerank=4,
                           train_size=min(n, max(40 * nlist, 256 * 2**nbits)))
    raise ValueError(f"unknown index kind {kind!r} (auto, Flat, HNSW, IVFPQ or a FAISS factory string)")


def resolve_choice(factory: str, search_params: str, rerank: int | None, n: int, dim: int) -> IndexChoice:
    """The config's index settings made concrete: a named kind is sized by :func:`choose_index`; a FAISS
    factory string is used as given (trained on up to 256 vectors per list, or 100,000); explicit
    ``search_params`` and ``rerank`` win over the chosen ones."""
    if factory in ("auto", "Flat", "HNSW", "IVFPQ"):
        choice = choose_index(factory, n, dim)
    else:
        probe = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        ivf = ivf_or_none(probe)
        lists = ivf.nlist if ivf is not None else 0
        choice = IndexChoice(factory, train_size=0 if probe.is_trained else min(n, max(100_000, 256 * lists)))
    return IndexChoice(choice.factory, search_params or choice.search_params,
                       choice.rerank if rerank is None else rerank, choice.train_size)


def exact_top_k(store: VectorStore, queries: np.ndarray, k: int) -> np.ndarray:
    """[Q, k] rows of the exact inner-product top k over the whole store, streamed a shard at a time."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_rows = np.empty((len(queries), 0), dtype=np.int64)
    for first, block in store.blocks():
        scores = queries @ block.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if block.shape[0] > k else np.argsort(-scores, axis=1)
        best_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], axis=1)
        best_rows = np.concatenate([best_rows, top + first], axis=1)
        keep = np.argsort(-best_scores, axis=1, kind="stable")[:, :k]
        best_scores, best_rows = np.take_along_axis(best_scores, keep, 1), np.take_along_axis(best_rows, keep, 1)
    return best_rows


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found top-k ∩ exact top-k| / k."""
    k = exact.shape[1]
    return float(np.mean([len(set(f[:k].tolist()) & set(e.tolist())) / k for f, e in zip(found, exact)]))


def measure_recall(index: PassageIndex, queries: np.ndarray, k: int = RECALL_K) -> float:
    """recall@k of ``index`` (its search settings and re-ranking included) against exact search."""
    k = min(k, len(index))
    _, found = index.search(queries, k)
    return recall_at_k(found, exact_top_k(index.store, queries, k))


def build_index(corpus: Corpus, encoder: Encoder, path: str | Path | None = None, *, factory: str = "auto",
                search_params: str = "", rerank: int | None = None, shard_rows: int = SHARD_ROWS,
                batch_size: int = 64, resume: bool = False, strict: bool = True, queries: np.ndarray | None = None,
                rank: int = 0, world: int = 1, barrier: Callable[[], None] = lambda: None,
                whole: bool = True, precision: str = "", progress: bool = True,
                extra_files: dict[str, str] | None = None) -> PassageIndex | None:
    """Encode ``corpus`` into ``path/vectors`` (resumable, one share of the shards per process), then build
    the FAISS index from the store on the first process (``rank`` 0) and save it into ``path``.

    ``path`` None (one process): a temporary folder, removed with the returned index. ``resume``: keep the
    shards already written for the same corpus, encoder and layout; shards of other work are an error when
    ``strict``, and are replaced otherwise. ``queries``: query vectors for the recall measurement of an
    approximate index (default: 200 sampled passage vectors). ``whole=False`` (a sharded index) builds no
    whole index: it saves the trained index and the vectors, from which each process fills its own shard
    (:meth:`PassageIndex.load` with ``shard``). ``precision``: the one the caller encodes under (an autocast
    around this call), recorded with the vectors. Returns the index on rank 0, None on the others.
    """
    temporary = path is None and world == 1
    path = Path(tempfile.mkdtemp(prefix="jsarag-index-")) if temporary else Path(path)
    meta = VectorsMeta(rows=len(corpus), dim=encoder.dim, shard_rows=shard_rows,
                       corpus_hash=corpus.fingerprint(), encoder=encoder.identity(), precision=precision)
    if rank == 0:
        store = VectorStore.create(path / "vectors", meta, resume=resume, strict=strict)
        # Found now, not hours into the encoding. The FAISS index written after takes more (a Flat one: the
        # vectors again, in float32).
        todo = f"the passage vectors to encode ({len(store.missing_shards())} of {store.num_shards} shards)"
        require_space(store.path, store.missing_bytes(), todo, "free some space or build the index elsewhere (--out)")
    barrier()
    if rank != 0:
        store = VectorStore(path / "vectors", meta)
    encode_shards(store, corpus, encoder, rank=rank, world=world, batch_size=batch_size, progress=progress)
    barrier()
    if rank != 0:
        return None
    store.mark_complete()
    choice = resolve_choice(factory, search_params, rerank, len(store), store.dim)
    index = PassageIndex.from_store(store, choice.factory, search_params=choice.search_params,
                                    rerank=choice.rerank, train_size=choice.train_size, corpus_source=corpus.source,
                                    rows=None if whole else (0, 0), progress=progress)
    if whole and (choice.factory != "Flat" or choice.rerank):
        if queries is None:
            sample = np.random.default_rng(1).choice(len(store), size=min(200, len(store)), replace=False)
            queries, what = store.rows(np.sort(sample)), f"{len(sample)} passage vectors"
        else:
            what = f"{len(queries)} query vectors"
        index.meta.recall_at_10 = round(measure_recall(index, queries), 4)
        index.meta.recall_queries = what
    index.save(path, extra_files=extra_files)
    if temporary:  # the folder goes with the index object (save() links its vectors elsewhere first)
        weakref.finalize(index, shutil.rmtree, path, ignore_errors=True)
    return index
