"""Exact sharded top-K search: shard bounds, the merge, and two gloo processes against one Flat index."""

from __future__ import annotations

import datetime
import socket
from pathlib import Path

import faiss
import numpy as np
import pytest

from jsarag.index import PassageIndex
from jsarag.index.sharded import merge_top_k, shard_bounds, sharded_search
from jsarag.index.vectors import VectorsMeta, VectorStore

FILL = np.float32(-np.finfo(np.float32).max)  # FAISS's score for a missing (-1) row of an inner-product index

# name -> (n rows, d, queries per rank, k, integer-valued vectors?). Integer-valued vectors make scores exact
# integers whatever the summation order, so ties across shards are real and exercise the tie-break.
CASES: dict[str, tuple[int, int, tuple[int, int], int, bool]] = {
    "uneven_batches": (1000, 16, (7, 5), 10, False),
    "rank0_no_queries": (1000, 16, (0, 5), 10, False),
    "rank1_no_queries": (1000, 16, (6, 0), 10, False),
    "no_queries_at_all": (1000, 16, (0, 0), 10, False),
    "shards_below_k": (15, 16, (4, 3), 10, False),  # 8 + 7 rows: each shard fills with -1
    "ties_below_k": (15, 16, (4, 3), 10, True),
}


def _data(case: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """The index vectors and each rank's queries, the same in every process (seeded by the case)."""
    n, d, counts, _, integer = CASES[case]
    rng = np.random.default_rng(sorted(CASES).index(case))
    if integer:
        xb = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
        xb[n // 2 + 2] = xb[1]  # the same vector in both shards: a guaranteed cross-shard tie
        xq = rng.integers(-2, 3, size=(sum(counts), d)).astype(np.float32)
    else:
        xb = rng.standard_normal((n, d), dtype=np.float32)
        xq = rng.standard_normal((sum(counts), d), dtype=np.float32)
    return xb, np.split(xq, np.cumsum(counts)[:-1])


def _flat(xb: np.ndarray) -> faiss.IndexFlatIP:
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    return index


def _worker(rank: int, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)  # the test machine has few cores; two processes must not fight over them
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))  # a protocol bug fails instead of hanging
    try:
        for case, (n, _, _, k, _) in CASES.items():
            xb, queries = _data(case)
            start, stop = shard_bounds(n, rank, 2)
            shard = _flat(xb[start:stop])
            scores, rows = sharded_search(shard.search, queries[rank], k, offset=start)
            np.save(Path(out) / f"{case}-{rank}-scores.npy", scores)
            np.save(Path(out) / f"{case}-{rank}-rows.npy", rows)
        # A saved index folder, each process filling its own shard from the vector store.
        index = PassageIndex.load(Path(out) / "index", shard=(rank, 2))
        assert index.sharded and index.index.ntotal == stop_of(rank) - start_of(rank)
        scores, rows = index.search(_index_queries()[rank], 10)
        np.save(Path(out) / f"index-{rank}-scores.npy", scores)
        np.save(Path(out) / f"index-{rank}-rows.npy", rows)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """Runs every case once in one pair of gloo processes (starting processes is the slow part)."""
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("sharded")
    _index_folder(out / "index")
    mp.start_processes(_worker, args=(_free_port(), str(out)), nprocs=2, start_method="spawn", join=True)
    return out


INDEX_ROWS = 301


def start_of(rank: int) -> int:
    return shard_bounds(INDEX_ROWS, rank, 2)[0]


def stop_of(rank: int) -> int:
    return shard_bounds(INDEX_ROWS, rank, 2)[1]


def _index_vectors() -> np.ndarray:
    return np.random.default_rng(11).standard_normal((INDEX_ROWS, 12), dtype=np.float32)


def _index_queries() -> list[np.ndarray]:
    return np.split(np.random.default_rng(12).standard_normal((9, 12), dtype=np.float32), [5])


def _index_folder(path: Path) -> PassageIndex:
    """A Flat index saved with its vector store in shards of 64 rows (the shard bounds cut through them)."""
    xb = _index_vectors()
    meta = VectorsMeta(rows=INDEX_ROWS, dim=12, shard_rows=64, corpus_hash="c", encoder={"name": "random"})
    store = VectorStore.create(path / "vectors", meta, resume=False)
    for i in range(store.num_shards):
        store.write_shard(i, xb[slice(*store.shard_range(i))])
    store.mark_complete()
    index = PassageIndex.from_store(VectorStore.open(path / "vectors"), "Flat", progress=False)
    index.save(path)
    return index


def test_a_saved_index_searched_in_two_shards_equals_the_whole_index(two_ranks):
    whole = PassageIndex.load(two_ranks / "index")
    assert not whole.sharded and whole.index.ntotal == INDEX_ROWS
    for rank, queries in enumerate(_index_queries()):
        want_scores, want_rows = whole.search(queries, 10)
        np.testing.assert_array_equal(np.load(two_ranks / f"index-{rank}-rows.npy"), want_rows)
        np.testing.assert_allclose(np.load(two_ranks / f"index-{rank}-scores.npy"), want_scores, atol=1e-6)
    assert {int(r) < start_of(1) for r in np.load(two_ranks / "index-0-rows.npy").ravel()} == {True, False}


def _expected(xb: np.ndarray, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One Flat index over all rows, every row ranked, then the tie rule (smaller row first) applied."""
    scores, rows = _flat(xb).search(xq, len(xb))
    order = np.lexsort((rows, -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)


def test_shard_bounds_hand_checked():
    assert [shard_bounds(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [shard_bounds(2, r, 3) for r in range(3)] == [(0, 1), (1, 2), (2, 2)]
    assert shard_bounds(0, 0, 1) == (0, 0)
    with pytest.raises(ValueError):
        shard_bounds(10, 3, 3)


@pytest.mark.parametrize("n", [0, 1, 2, 9, 10, 11, 1000])
@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_shard_bounds_partition_the_rows(n, world):
    bounds = [shard_bounds(n, r, world) for r in range(world)]
    assert np.concatenate([np.arange(a, b) for a, b in bounds]).tolist() == list(range(n))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_merge_top_k_hand_written():
    # Two shards, k' = 3 each, side by side. Query 0: rows 0 and 4 tie at 0.5. Query 1: shard 0 has one row
    # (fillers with FAISS's score; one filler given a huge score to show the row, not the score, rules it out).
    scores = np.array([[0.9, 0.5, 0.1, 0.7, 0.5, 0.2],
                       [0.2, 9.0, FILL, 0.3, 0.25, 0.2]], dtype=np.float32)
    rows = np.array([[2, 0, 1, 5, 4, 3],
                     [1, -1, -1, 7, 8, 6]])
    s, r = merge_top_k(scores, rows, 4)
    assert s.dtype == np.float32 and r.dtype == np.int64 and s.shape == r.shape == (2, 4)
    assert r.tolist() == [[2, 5, 0, 4], [7, 8, 1, 6]]
    np.testing.assert_array_equal(s, np.array([[0.9, 0.7, 0.5, 0.5], [0.3, 0.25, 0.2, 0.2]], dtype=np.float32))
    # asking for every candidate: the fillers come last, after every real row
    assert merge_top_k(scores, rows, 6)[1].tolist() == [[2, 5, 0, 4, 3, 1], [7, 8, 1, 6, -1, -1]]
    with pytest.raises(ValueError):
        merge_top_k(scores, rows, 7)


@pytest.mark.parametrize("case", list(CASES))
def test_two_gloo_ranks_equal_one_flat_index(two_ranks, case):
    n, _, counts, k, integer = CASES[case]
    xb, queries = _data(case)
    for rank in range(2):
        scores = np.load(two_ranks / f"{case}-{rank}-scores.npy")
        rows = np.load(two_ranks / f"{case}-{rank}-rows.npy")
        assert scores.dtype == np.float32 and rows.dtype == np.int64
        assert scores.shape == rows.shape == (counts[rank], k)
        want_scores, want_rows = _expected(xb, queries[rank], k)
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-6)
        if not integer and counts[rank]:  # distinct scores: the very order a Flat index's own top k gives
            np.testing.assert_array_equal(rows, _flat(xb).search(queries[rank], k)[1])
        assert (rows >= 0).all() and (rows < n).all()  # 15 rows >= k = 10: no -1 filler may survive the merge
        assert all(len(set(r)) == k for r in rows.tolist())


def test_ties_case_really_has_cross_shard_ties():
    """Guards the test above: the integer case must contain a tie between the two shards inside the top k."""
    n, _, _, k, _ = CASES["ties_below_k"]
    xb, queries = _data("ties_below_k")
    s, r = _expected(xb, np.concatenate(queries), k)
    cut = shard_bounds(n, 0, 2)[1]
    assert any(s[i, j] == s[i, j + 1] and r[i, j] < cut <= r[i, j + 1] for i in range(len(s)) for j in range(k - 1))


def _local_with_fillers(xb: np.ndarray):
    index = _flat(xb)  # fewer rows than k below, so FAISS returns -1 fillers
    return index, index.search


def test_no_process_group_is_local_search_with_offset():
    import torch.distributed as dist

    assert not dist.is_initialized()
    xb, queries = _data("shards_below_k")
    index, search = _local_with_fillers(xb[:8])
    scores, rows = sharded_search(search, queries[0], 10, offset=100)
    want_scores, want_rows = index.search(queries[0], 10)
    np.testing.assert_array_equal(scores, want_scores)
    np.testing.assert_array_equal(rows, np.where(want_rows >= 0, want_rows + 100, -1))
    assert (rows == -1).any() and rows.dtype == np.int64 and scores.dtype == np.float32


def test_world_size_one_is_local_search_with_offset(tmp_path):
    import torch.distributed as dist

    xb, queries = _data("shards_below_k")
    index, search = _local_with_fillers(xb[:8])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        scores, rows = sharded_search(search, queries[0], 10, offset=7)
    finally:
        dist.destroy_process_group()
    want_scores, want_rows = index.search(queries[0], 10)
    np.testing.assert_array_equal(scores, want_scores)
    np.testing.assert_array_equal(rows, np.where(want_rows >= 0, want_rows + 7, -1))
