"""The vector store (float16 shards), index builds from it, their resumption after a kill, index sizes
chosen from the corpus size, and exact candidate vectors under a compressed index."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jsarag.data import Corpus, Passage
from jsarag.errors import IndexMismatchError
from jsarag.index import PassageIndex
from jsarag.index.build import build_index, choose_index, exact_top_k, recall_at_k
from jsarag.index.vectors import VectorsMeta, VectorStore, shard_name

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")


def store_of(tmp_path: Path, vectors: np.ndarray, shard_rows: int) -> VectorStore:
    meta = VectorsMeta(rows=len(vectors), dim=vectors.shape[1], shard_rows=shard_rows, corpus_hash="c",
                       encoder={"name": "random"})
    store = VectorStore.create(tmp_path / "vectors", meta, resume=False)
    for i in range(store.num_shards):
        a, b = store.shard_range(i)
        store.write_shard(i, vectors[a:b])
    store.mark_complete()
    return VectorStore.open(tmp_path / "vectors")


@pytest.fixture
def vectors():
    v = np.random.default_rng(0).standard_normal((103, 8)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_shards_hold_float16_rows_read_back_by_row_and_by_block(tmp_path, vectors):
    store = store_of(tmp_path, vectors, shard_rows=25)
    assert store.num_shards == 5 and [store.shard_range(i) for i in (0, 4)] == [(0, 25), (100, 103)]
    half = vectors.astype(np.float16).astype(np.float32)
    rows = np.array([[102, 0, 25], [24, 24, 77]])  # shard edges, a repeat
    np.testing.assert_array_equal(store.rows(rows), half[rows])
    assert store.rows(rows).shape == (2, 3, 8) and store.rows(rows).dtype == np.float32
    np.testing.assert_array_equal(store.read(20, 60), half[20:60])
    starts = [start for start, _ in store.blocks()]
    assert starts == [0, 25, 50, 75, 100]
    # Each shard is a plain .npy file that numpy reads on its own.
    np.testing.assert_array_equal(np.load(tmp_path / "vectors" / shard_name(1)), vectors[25:50].astype(np.float16))
    with pytest.raises(IndexError):
        store.rows(np.array([103]))


def test_an_unfinished_store_does_not_open_and_resumes_only_with_the_same_work(tmp_path, vectors):
    meta = VectorsMeta(rows=103, dim=8, shard_rows=25, corpus_hash="c", encoder={"name": "random"})
    store = VectorStore.create(tmp_path / "v", meta, resume=False)
    store.write_shard(0, vectors[:25])
    store.write_shard(3, vectors[75:100])
    (tmp_path / "v" / ".shard-00001.npy.tmp123").write_bytes(b"half a shard")  # killed mid-write
    with pytest.raises(IndexMismatchError, match="not finished"):
        VectorStore.open(tmp_path / "v")
    with pytest.raises(RuntimeError, match="3 shard"):
        store.mark_complete()
    again = VectorStore.create(tmp_path / "v", meta, resume=True)
    assert again.missing_shards() == [1, 2, 4] and not list((tmp_path / "v").glob(".shard-*"))
    other = VectorsMeta(rows=103, dim=8, shard_rows=25, corpus_hash="c", encoder={"name": "another"})
    with pytest.raises(IndexMismatchError, match="another corpus, encoder, precision or layout"):
        VectorStore.create(tmp_path / "v", other, resume=True)
    assert VectorStore.create(tmp_path / "v", other, resume=True, strict=False).missing_shards() == [0, 1, 2, 3, 4]
    assert VectorStore.create(tmp_path / "v", meta, resume=False).missing_shards() == [0, 1, 2, 3, 4]


def test_index_sizes_chosen_from_the_corpus_size():
    assert choose_index("auto", 10_000, 384).factory == "Flat"
    assert choose_index("auto", 250_000, 384).factory == "Flat"
    assert choose_index("auto", 250_001, 384).factory == "HNSW32"
    assert choose_index("auto", 3_000_000, 384) == choose_index("HNSW", 3_000_000, 384)
    assert choose_index("HNSW", 3_000_000, 384).search_params == "efSearch=128"
    # DPR Wikipedia with MiniLM: 4 sqrt(21M) = 18,337 -> 2^14 lists, 2,048 probes, 96 bytes each.
    wiki = choose_index("auto", 21_015_324, 384)
    assert (wiki.factory, wiki.search_params, wiki.rerank) == ("IVF16384,PQ96x8np", "nprobe=2048", 4)
    assert choose_index("IVFPQ", 10_882, 384).search_params == "nprobe=64"  # DSTC11: 512 lists
    assert wiki.train_size == 40 * 16_384
    assert choose_index("IVFPQ", 21_015_324, 1024).factory == "IVF16384,PQ256x8np"  # bge-large
    # A small corpus: at most n/8 lists, codes of fewer bits, every list probed.
    small = choose_index("IVFPQ", 185, 32)
    assert (small.factory, small.search_params) == ("IVF16,PQ8x5np", "nprobe=16")


def test_exact_top_k_over_shards_and_recall(tmp_path, vectors):
    store = store_of(tmp_path, vectors, shard_rows=10)
    queries = np.random.default_rng(1).standard_normal((6, 8)).astype(np.float32)
    half = vectors.astype(np.float16).astype(np.float32)
    want = np.argsort(-(queries @ half.T), axis=1)[:, :5]
    got = exact_top_k(store, queries, 5)
    np.testing.assert_array_equal(np.sort(got, axis=1), np.sort(want, axis=1))
    assert recall_at_k(got, want) == 1.0
    assert recall_at_k(np.array([[1, 2, 9, 9]]), np.array([[1, 2, 3, 4]])) == 0.5


def test_a_compressed_index_gives_exact_vectors_and_re_scores_its_candidates(tmp_path):
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((600, 16)).astype(np.float32)
    corpus = Corpus([Passage(f"p{i}", "", f"passage {i}") for i in range(600)])
    store = store_of(tmp_path, vectors, shard_rows=128)
    index = PassageIndex.from_store(store, "IVF8,PQ4x4", search_params="nprobe=8", rerank=4, train_size=600,
                                    progress=False)
    rows = np.array([[5, 599], [128, 0]])
    np.testing.assert_array_equal(index.vectors(rows), vectors.astype(np.float16).astype(np.float32)[rows])
    lossy = index.index.sa_decode(index.index.sa_encode(vectors[:1]))  # what the index itself holds: PQ codes
    assert np.abs(lossy - vectors[:1]).max() > 1e-2
    # Returned scores are exact inner products with the stored vectors, best first.
    queries = rng.standard_normal((4, 16)).astype(np.float32)
    scores, found = index.search(queries, 5)
    exact = np.einsum("bd,bkd->bk", queries, index.vectors(found))
    np.testing.assert_allclose(scores, exact, rtol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()
    # Re-scoring 20 candidates finds more of the exact top 5 than PQ's own top 5.
    index.meta.rerank = 0
    _, plain = index.search(queries, 5)
    want = exact_top_k(store, queries, 5)
    assert recall_at_k(found, want) >= recall_at_k(plain, want)
    del corpus


def test_save_elsewhere_links_the_vectors_and_a_temporary_build_cleans_up(tmp_path):
    from jsarag.config import load_config
    from jsarag.pipeline import build_retriever, load_corpus

    cfg = load_config(TINY)
    corpus, encoder = load_corpus(cfg.data, progress=False), build_retriever(cfg).passage
    index = build_index(corpus, encoder, shard_rows=64, progress=False)
    temporary = index.store.path.parent
    index.save(tmp_path / "copy")
    loaded = PassageIndex.load(tmp_path / "copy", corpus_hash=corpus.fingerprint(), encoder=encoder.identity())
    np.testing.assert_array_equal(loaded.vectors(np.arange(185)), index.vectors(np.arange(185)))
    assert sorted(json.loads((tmp_path / "copy" / "meta.json").read_text())["files"]) == [
        "index.faiss", "meta.json", "trained.faiss", "vectors"]
    del index
    import gc

    gc.collect()
    assert not temporary.exists()
    assert loaded.vectors(np.arange(3)).shape == (3, encoder.dim)  # the copy does not depend on the temporary


def _shards(out: Path) -> int:
    return len(list((out / "vectors").glob("shard-*.npy")))


@pytest.mark.slow
def test_index_build_killed_halfway_then_resumed_equals_an_uninterrupted_build(tmp_path):
    """SIGKILL `jsarag index build` once about half of its shards are on disk; `--resume` encodes only the
    rest and ends with the same vectors (byte for byte) and the same FAISS index as a build never killed."""
    from jsarag.errors import UserError
    from jsarag.outdirs import check_index_out
    from jsarag.pipeline import build_index_folder

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    overrides = ["index.shard_rows=10", "index.batch_size=1"]  # 19 shards, one passage per batch
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    build_index_folder(TINY, whole, overrides=overrides)  # the uninterrupted build, in this process
    command = [sys.executable, "-m", "jsarag", "index", "build", TINY, "--out", str(killed), *overrides]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while _shards(killed) < 9 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _shards(killed)
    assert 0 < before < 19, f"the kill came at {before} of 19 shards"
    assert not (killed / "index.faiss").exists()
    with pytest.raises(UserError, match="--resume"):  # a stopped build is not overwritten by accident
        check_index_out(killed, overwrite=False)
    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for i in range(19):
        assert (killed / "vectors" / shard_name(i)).read_bytes() == (whole / "vectors" / shard_name(i)).read_bytes()
    assert (killed / "index.faiss").read_bytes() == (whole / "index.faiss").read_bytes()
    a, b = (json.loads((d / "meta.json").read_text()) for d in (whole, killed))
    assert {k: v for k, v in a.items() if k != "built_at"} == {k: v for k, v in b.items() if k != "built_at"}
