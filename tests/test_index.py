"""Tests for the FAISS passage index, build_index and the passage Encoder (no downloads: random vectors
and the builtin tiny random BERT, built into a temporary cache)."""

from __future__ import annotations

import copy
import json
import os

import faiss
import numpy as np
import pytest
import torch

from jsarag.data import Corpus, Passage
from jsarag.index import IndexMeta, IndexMismatchError, PassageIndex, build_index
from jsarag.index.faiss_index import INDEX_FILE, META_FILE
from jsarag.models.encoder import Encoder
from jsarag.models.retriever import passage_text

DIM = 32
N = 500
CORPUS_HASH = "c0ffee" * 10 + "abcd"
ENCODER_ID = {"name": "test-encoder", "fingerprint": "f1" * 32, "pooling": "mean", "normalize": True,
              "max_length": 64}


def unit_vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_index(vectors: np.ndarray, factory: str = "Flat", search_params: str = "", **kw) -> PassageIndex:
    kw.setdefault("corpus_hash", CORPUS_HASH)
    kw.setdefault("corpus_source", "corpus.jsonl")
    kw.setdefault("encoder", ENCODER_ID)
    return PassageIndex.from_vectors(vectors, factory=factory, search_params=search_params, **kw)


def exact_topk(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    dots = queries @ vectors.T
    rows = np.argsort(-dots, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dots, rows, axis=1), rows


@pytest.fixture(scope="module", autouse=True)
def few_threads():
    """The machine is shared: one thread each keeps FAISS and torch from oversubscribing it."""
    faiss_threads, torch_threads = faiss.omp_get_max_threads(), torch.get_num_threads()
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    yield
    faiss.omp_set_num_threads(faiss_threads)
    torch.set_num_threads(torch_threads)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return unit_vectors(N, seed=0)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return unit_vectors(8, seed=1)


# --- PassageIndex over random vectors -------------------------------------------------------------


def test_flat_search_is_exact_inner_product_topk(vectors, queries):
    index = make_index(vectors[:60])
    assert len(index) == 60
    scores, rows = index.search(queries, 7)
    want_scores, want_rows = exact_topk(queries, vectors[:60], 7)
    assert scores.shape == (8, 7) and rows.shape == (8, 7)
    assert scores.dtype == np.float32 and rows.dtype == np.int64
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    # Inner product, not L2: unnormalised queries scale the scores.
    scores3, rows3 = index.search(3 * queries, 7)
    np.testing.assert_array_equal(rows3, want_rows)
    np.testing.assert_allclose(scores3, 3 * want_scores, atol=1e-5)


def test_flat_search_accepts_float64_and_single_query(vectors, queries):
    index = make_index(vectors[:60])
    scores, rows = index.search(queries[:1].astype(np.float64), 3)
    want_scores, want_rows = exact_topk(queries[:1], vectors[:60], 3)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_flat_reconstruct(vectors, queries):
    index = make_index(vectors[:60])
    _, rows = index.search(queries, 5)
    got = index.vectors(rows)
    assert got.shape == (8, 5, DIM)
    np.testing.assert_array_equal(got, vectors[:60][rows])
    one_d = np.array([0, 59, 3])
    np.testing.assert_array_equal(index.vectors(one_d), vectors[one_d])
    assert index.vectors(np.array([[7]])).shape == (1, 1, DIM)


def test_k_larger_than_the_index(vectors, queries):
    index = make_index(vectors[:10])
    with pytest.raises(ValueError, match="11"):
        index.search(queries, 11)
    scores, rows = index.search(queries, 10)  # exactly all passages is fine
    assert sorted(rows[0].tolist()) == list(range(10))


def test_meta_of_a_new_index(vectors):
    index = make_index(vectors[:20], search_params="")
    meta = index.meta
    assert isinstance(meta, IndexMeta)
    assert (meta.factory, meta.dim, meta.num_passages) == ("Flat", DIM, 20)
    assert meta.corpus_hash == CORPUS_HASH and meta.corpus_source == "corpus.jsonl"
    assert meta.encoder == ENCODER_ID and meta.encoder is not ENCODER_ID
    assert meta.built_at


# --- approximate indexes --------------------------------------------------------------------------

# "IVF4,PQ8np" is IVF4,PQ8 without FAISS's polysemous training, which takes >10 s on 500 vectors.
APPROX = [("HNSW32", "efSearch=64"), ("IVF4,Flat", "nprobe=4"), ("IVF4,PQ8np", "nprobe=4")]


def applied_params(index: PassageIndex) -> dict:
    """The search-time parameters FAISS actually uses."""
    inner = faiss.downcast_index(index.index)
    if hasattr(inner, "hnsw"):
        return {"efSearch": inner.hnsw.efSearch}
    return {"nprobe": faiss.extract_index_ivf(index.index).nprobe}


@pytest.fixture(scope="module")
def approx_indexes(vectors) -> dict[str, PassageIndex]:
    return {factory: make_index(vectors, factory, params) for factory, params in APPROX}


@pytest.mark.parametrize("factory, params", APPROX)
def test_approximate_search_and_reconstruct(approx_indexes, vectors, queries, factory, params):
    index = approx_indexes[factory]
    assert len(index) == N and index.meta.factory == factory and index.meta.search_params == params
    scores, rows = index.search(queries, 10)
    assert scores.shape == (8, 10) and rows.shape == (8, 10)
    assert ((rows >= 0) & (rows < N)).all()
    assert (np.diff(scores, axis=1) <= 1e-6).all(), "best first"
    got = index.vectors(rows)
    assert got.shape == (8, 10, DIM)
    # Scores are inner products with the stored (possibly compressed) vectors.
    np.testing.assert_allclose(scores, np.einsum("bd,bkd->bk", queries, got), atol=1e-4)
    _, exact_rows = exact_topk(queries, vectors, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows.tolist(), exact_rows.tolist())])
    if "PQ" in factory:
        everything = index.vectors(np.arange(N))
        cosine = (everything * vectors).sum(1) / np.linalg.norm(everything, axis=1)
        assert cosine.mean() > 0.9
        assert recall > 0.4
    else:
        np.testing.assert_array_equal(got, vectors[rows])
        assert recall >= 0.9


@pytest.mark.parametrize("factory, params", APPROX)
def test_search_params_are_applied(approx_indexes, factory, params):
    name, value = params.split("=")
    assert applied_params(approx_indexes[factory]) == {name: int(value)}


def test_default_search_params_differ(vectors):
    # Guards the test above: without search_params FAISS's defaults (nprobe=1, efSearch=16) apply.
    assert applied_params(make_index(vectors, "IVF4,Flat")) == {"nprobe": 1}
    assert applied_params(make_index(vectors, "HNSW32")) == {"efSearch": 16}


def test_ivf_probing_every_list_is_exact(approx_indexes, vectors, queries):
    scores, rows = approx_indexes["IVF4,Flat"].search(queries, 10)
    want_scores, want_rows = exact_topk(queries, vectors, 10)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


@pytest.mark.parametrize("factory, params", APPROX)
def test_approximate_save_load_keeps_params_and_results(approx_indexes, queries, tmp_path, factory, params):
    index = approx_indexes[factory]
    index.save(tmp_path / "ix")
    loaded = PassageIndex.load(tmp_path / "ix", corpus_hash=CORPUS_HASH, encoder=ENCODER_ID)
    assert loaded.meta == index.meta
    name, value = params.split("=")
    assert applied_params(loaded) == {name: int(value)}
    scores, rows = index.search(queries, 10)
    scores2, rows2 = loaded.search(queries, 10)
    np.testing.assert_array_equal(rows2, rows)
    np.testing.assert_allclose(scores2, scores, atol=1e-6)
    np.testing.assert_array_equal(loaded.vectors(rows), index.vectors(rows))


# --- save / load ----------------------------------------------------------------------------------


def test_save_load_round_trip(vectors, queries, tmp_path):
    index = make_index(vectors[:100])
    folder = tmp_path / "runs" / "ix"  # parents are created
    index.save(folder, extra_files={"config.yaml": "a: 1\n"})
    assert sorted(os.listdir(folder)) == sorted([INDEX_FILE, META_FILE, "config.yaml"])
    assert (folder / "config.yaml").read_text() == "a: 1\n"
    assert os.listdir(folder.parent) == ["ix"], "no temporary folders left behind"
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["corpus_hash"] == CORPUS_HASH and meta["encoder"] == ENCODER_ID
    assert meta["num_passages"] == 100

    loaded = PassageIndex.load(folder, corpus_hash=CORPUS_HASH, encoder=ENCODER_ID)
    assert loaded.meta == index.meta
    assert len(loaded) == 100
    assert loaded.location == str(folder)
    scores, rows = index.search(queries, 5)
    scores2, rows2 = loaded.search(queries, 5)
    np.testing.assert_array_equal(rows2, rows)
    np.testing.assert_array_equal(scores2, scores)
    np.testing.assert_array_equal(loaded.vectors(rows), vectors[:100][rows])
    # Without identities to compare, load does not check anything.
    assert PassageIndex.load(str(folder)).meta == index.meta


def test_save_replaces_an_existing_folder(vectors, queries, tmp_path):
    folder = tmp_path / "ix"
    make_index(vectors[:50], corpus_hash="old" * 20).save(folder, extra_files={"stale.txt": "x"})
    new = make_index(vectors[50:130])
    new.save(folder)
    assert sorted(os.listdir(folder)) == sorted([INDEX_FILE, META_FILE])
    assert os.listdir(tmp_path) == ["ix"], "neither the new temporary folder nor the old one is left"
    loaded = PassageIndex.load(folder, corpus_hash=CORPUS_HASH)
    assert loaded.meta == new.meta and len(loaded) == 80
    np.testing.assert_array_equal(loaded.search(queries, 4)[1], new.search(queries, 4)[1])
    # And once more over the replaced one.
    new.save(folder)
    assert os.listdir(tmp_path) == ["ix"]


def test_load_for_another_corpus(vectors, tmp_path):
    folder = tmp_path / "my-index"
    make_index(vectors[:30]).save(folder)
    with pytest.raises(IndexMismatchError) as info:
        PassageIndex.load(folder, corpus_hash="0" * 64, encoder=ENCODER_ID)
    message = str(info.value)
    assert "another corpus" in message and str(folder) in message
    assert "corpus.jsonl" in message and "30 passages" in message


@pytest.mark.parametrize("key, value", [("fingerprint", "9" * 64), ("pooling", "cls"), ("normalize", False),
                                        ("max_length", 128)])
def test_load_for_another_encoder(vectors, tmp_path, key, value):
    folder = tmp_path / "my-index"
    make_index(vectors[:30]).save(folder)
    other = dict(ENCODER_ID, **{key: value})
    with pytest.raises(IndexMismatchError) as info:
        PassageIndex.load(folder, corpus_hash=CORPUS_HASH, encoder=other)
    message = str(info.value)
    assert "another passage encoder" in message and str(folder) in message and key in message
    # The name alone is not part of the identity check.
    PassageIndex.load(folder, corpus_hash=CORPUS_HASH, encoder=dict(ENCODER_ID, name="renamed"))


def test_check_in_memory(vectors):
    index = make_index(vectors[:30])
    index.check(CORPUS_HASH, ENCODER_ID)
    with pytest.raises(IndexMismatchError, match="another corpus"):
        index.check("1" * 64)
    with pytest.raises(IndexMismatchError, match="another passage encoder"):
        index.check(encoder=dict(ENCODER_ID, fingerprint="2" * 64))


def test_load_where_there_is_no_index(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(IndexMismatchError) as info:
        PassageIndex.load(empty)
    assert "no index at" in str(info.value) and str(empty) in str(info.value)
    with pytest.raises(IndexMismatchError, match="no index at"):
        PassageIndex.load(tmp_path / "missing")


def test_load_with_only_one_of_the_files(vectors, tmp_path):
    folder = tmp_path / "ix"
    make_index(vectors[:30]).save(folder)
    (folder / INDEX_FILE).unlink()
    with pytest.raises(IndexMismatchError, match="no index at"):
        PassageIndex.load(folder)


def test_load_with_a_broken_meta_file(vectors, tmp_path):
    folder = tmp_path / "ix"
    make_index(vectors[:30]).save(folder)
    (folder / META_FILE).write_text("{not json")
    with pytest.raises(IndexMismatchError, match="not an index description"):
        PassageIndex.load(folder)
    (folder / META_FILE).write_text(json.dumps({"factory": "Flat"}))
    with pytest.raises(IndexMismatchError, match="not an index description"):
        PassageIndex.load(folder)


# --- the tiny encoder and build_index -------------------------------------------------------------

TEXTS = [
    "a",
    "the quick brown fox jumps over the lazy dog " * 4,
    "short text",
    "Paris is the capital and most populous city of France.",
    "one two three four five six seven eight nine ten eleven twelve",
    "x y",
    "Retrieval-augmented generation conditions a language model on retrieved passages.",
    "",
    "a text longer than the encoder's token limit, cut by truncation " * 60,
]


@pytest.fixture(scope="module")
def jsarag_cache(tmp_path_factory):
    """A private model cache (and no network) for this module; the tiny BERT is built in ~1-4 s."""
    mp = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("jsarag_cache")
    mp.setenv("JSARAG_CACHE", str(cache))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    yield cache
    mp.undo()


@pytest.fixture(scope="module")
def encoder(jsarag_cache) -> Encoder:
    enc = Encoder.from_pretrained("builtin:tiny-bert", max_length=64)
    assert (jsarag_cache / "tiny-bert").is_dir()
    return enc


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    passages = [Passage(id=f"p{i}", title=f"Title {i}" if i % 3 else "",
                        text=f"passage number {i} about topic {i % 5}. " + "more words here " * (i % 7))
                for i in range(20)]
    return Corpus(passages, source="tiny-corpus.jsonl")


@pytest.fixture(scope="module")
def built(corpus, encoder) -> PassageIndex:
    return build_index(corpus, encoder, batch_size=6, progress=False)


def test_build_index_meta(built, corpus, encoder):
    meta = built.meta
    assert meta.corpus_hash == corpus.fingerprint()
    assert meta.corpus_source == "tiny-corpus.jsonl"
    assert meta.num_passages == len(corpus) == len(built) == 20
    assert meta.dim == encoder.dim == 32
    assert meta.factory == "Flat"
    assert meta.encoder == encoder.identity()
    assert meta.encoder["name"] == "builtin:tiny-bert"
    assert meta.encoder["fingerprint"] == encoder.fingerprint() and len(meta.encoder["fingerprint"]) == 64
    assert meta.encoder["pooling"] == "mean"
    assert meta.encoder["normalize"] is True
    assert meta.encoder["max_length"] == 64
    built.check(corpus.fingerprint(), encoder.identity())


def test_build_index_vectors(built, corpus, encoder):
    stored = built.vectors(np.arange(len(corpus)))
    # Row i holds passage i (title and text, as the retriever reads it), rounded to float16 on disk.
    want = encoder.encode([passage_text(p) for p in corpus])
    np.testing.assert_array_equal(stored, want.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, atol=5e-4)
    # Searching with a passage's own vector finds that passage first, with cosine 1 (to float16 precision).
    scores, rows = built.search(stored, 1)
    np.testing.assert_array_equal(rows[:, 0], np.arange(len(corpus)))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=5e-4)


def test_build_index_save_load_with_the_same_encoder(built, corpus, encoder, tmp_path):
    built.save(tmp_path / "ix")
    loaded = PassageIndex.load(tmp_path / "ix", corpus_hash=corpus.fingerprint(), encoder=encoder.identity())
    assert loaded.meta == built.meta
    other = Corpus([Passage("q0", "", "a different corpus")])
    with pytest.raises(IndexMismatchError, match="another corpus"):
        PassageIndex.load(tmp_path / "ix", corpus_hash=other.fingerprint(), encoder=encoder.identity())


def test_build_index_without_normalisation(jsarag_cache, corpus, encoder):
    raw = Encoder.from_pretrained("builtin:tiny-bert", normalize=False, max_length=64)
    index = build_index(corpus, raw, search_params="", progress=False)
    assert index.meta.encoder["normalize"] is False
    norms = np.linalg.norm(index.vectors(np.arange(len(corpus))), axis=1)
    assert not np.allclose(norms, 1.0, atol=1e-3)
    # Same weights, so only the normalisation tells the two identities apart.
    assert index.meta.encoder["fingerprint"] == encoder.fingerprint()
    with pytest.raises(IndexMismatchError, match="another passage encoder"):
        index.check(encoder=encoder.identity())


def test_fingerprint_follows_the_weights(encoder):
    other = copy.deepcopy(encoder)
    assert other.fingerprint() == encoder.fingerprint()
    with torch.no_grad():
        next(other.model.parameters()).view(-1)[0] += 1e-3
    assert other.fingerprint() != encoder.fingerprint()


def test_encode_batching_by_length_does_not_change_results(encoder):
    alone = np.stack([encoder.encode([t])[0] for t in TEXTS])
    for batch_size in (1, 3, len(TEXTS)):
        out = encoder.encode(TEXTS, batch_size=batch_size)
        assert out.shape == (len(TEXTS), encoder.dim) and out.dtype == np.float32
        np.testing.assert_allclose(out, alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(alone, axis=1), 1.0, atol=1e-5)


def test_encode_returns_input_order(encoder):
    out = encoder.encode(TEXTS, batch_size=2)
    perm = np.random.default_rng(3).permutation(len(TEXTS))
    shuffled = encoder.encode([TEXTS[i] for i in perm], batch_size=2)
    np.testing.assert_allclose(shuffled, out[perm], atol=1e-5)
    # Different texts give different vectors, so the comparison above checks the order.
    assert np.abs(out[0] - out[1]).max() > 1e-3
    # Duplicates are fine.
    twice = encoder.encode([TEXTS[3], TEXTS[0], TEXTS[3]], batch_size=2)
    np.testing.assert_allclose(twice[0], twice[2], atol=1e-6)


def test_encode_matches_forward_in_eval_mode(encoder):
    fresh = Encoder.from_pretrained("builtin:tiny-bert", max_length=64)
    fresh.eval()
    with torch.no_grad():
        forward = fresh(TEXTS).numpy()
    np.testing.assert_allclose(fresh.encode(TEXTS, batch_size=3), forward, atol=1e-5)


def test_encode_leaves_train_eval_modes_as_they_were(jsarag_cache):
    # encode() switches to eval mode and back; "back" must mean the modes every submodule had
    # before, so that encode has no side effect (e.g. switching dropout on in the wrapped model).
    fresh = Encoder.from_pretrained("builtin:tiny-bert", max_length=64)
    before = {name: m.training for name, m in fresh.named_modules()}
    with torch.no_grad():
        first = fresh(TEXTS[:2]).numpy()
    fresh.encode(TEXTS[:2])
    after = {name: m.training for name, m in fresh.named_modules()}
    changed = sorted(name for name in before if before[name] != after[name])
    assert not changed, f"encode changed the train/eval mode of {changed[:3]}..."
    with torch.no_grad():
        np.testing.assert_allclose(fresh(TEXTS[:2]).numpy(), first, atol=1e-6)


@pytest.mark.parametrize("pooling, normalize, max_length", [("mean", True, 64), ("cls", False, 8)])
def test_saved_encoder_loads_in_sentence_transformers(jsarag_cache, tmp_path, pooling, normalize, max_length):
    from sentence_transformers import SentenceTransformer

    enc = Encoder.from_pretrained("builtin:tiny-bert", pooling=pooling, normalize=normalize,
                                  max_length=max_length)
    folder = tmp_path / "encoder"
    enc.save_pretrained(folder)
    st = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    assert st.max_seq_length == max_length
    got = st.encode(TEXTS[:4], batch_size=2, convert_to_numpy=True, show_progress_bar=False)
    np.testing.assert_allclose(got, enc.encode(TEXTS[:4]), atol=1e-5)
    # And back into jsarag: the saved settings win over the defaults, the identity is kept.
    again = Encoder.from_pretrained(str(folder))
    assert again.identity() == enc.identity()
    np.testing.assert_allclose(again.encode(TEXTS[:4]), enc.encode(TEXTS[:4]), atol=1e-6)
