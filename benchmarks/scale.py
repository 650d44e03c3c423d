"""Paper scale: a DPR-like knowledge base of millions of passages, its vectors, indexes and training.

Each part runs the library's own code, memory being measured in fresh processes (this script's probes):

1. ``corpus``: for each corpus size (synthetic 100-word passages with DPR-style ids, ``psgs_w100.tsv``):
   ``jsarag data convert dpr``: wall time, passages/s, peak RSS, store size on disk; a fresh process opens
   the store: seconds to open, the RSS it adds after opening and after 10,000 random lookups by row and by
   id. For the largest size: a vector store of random unit vectors stamped with the tiny encoder's identity
   and the corpus fingerprint, written a shard at a time, and its Flat index (``random_index``); then
   ``jsarag ask`` with configs/tiny.yaml's models: wall time from the command's start to its answer
   (``ask_first_answer_seconds``).
2. ``resume``: ``jsarag index build configs/tiny.yaml`` over 20,000 synthetic passages in 20 shards,
   SIGKILLed once half of the shards exist, then ``--resume``: ``index_resume_identical`` is whether every
   shard's bytes and index.faiss's bytes equal those of an uninterrupted build; ``index_resume`` holds the
   shards the resumed build encoded (files new or rewritten: only the missing ones should be) and the times.
3. ``ivfpq``: a fresh process builds ``PassageIndex.from_store`` with ``choose_index("IVFPQ", N, 384)``
   over a store of N random 384-dimensional vectors (N = 1M; quick 200k): ``ivfpq_build_peak_rss_mib``
   (peak RSS minus RSS after the imports and the store's opening), ``ivfpq_build_seconds``,
   ``ivfpq_index_mib`` (``faiss.serialize_index``) beside ``ivfpq_vectors_float32_mib`` (N*384*4 bytes:
   what holding the vectors would cost) and ``ivfpq_factory``.
4. ``recall``: MiniLM vector stores of SQuAD's 2,067 paragraphs and DSTC11's 10,882 snippets (``jsarag
   index build CONFIG index.factory=Flat``, kept in the work folder and reused), queries = up to 500 dev
   questions encoded by the prior query encoder as ``jsarag index build`` encodes them; the IVF-PQ and HNSW
   indexes ``choose_index`` gives, built from the store: ``ivfpq_recall_at_10`` and ``hnsw_recall_at_10``
   are the minima over the corpora of recall@10 against exact search (``recall`` has each corpus's).
5. ``sharded``: two processes under ``torch.distributed.run`` (gloo) each load half of the random Flat
   index of part 6's largest corpus (``PassageIndex.load(..., shard=(rank, 2))``) and search 64 seeded
   queries each at k=10: ``sharded_topk_identical`` is whether their rows equal the whole index's.
6. ``train``: ``jsarag train configs/tiny.yaml`` (JSA, 20 steps) over squad_mini's 185 passages followed by
   synthetic ones up to 10,000 and up to 1M passages (quick: 200k; the ``_1m`` keys hold the larger size,
   ``train["passages"]`` says which), each with an index of random vectors of the kind ``index.factory:
   auto`` picks for its size (``train["index"]``: Flat at 10,000, HNSW32 at 1M), runs alternating between
   the sizes: ``train_step_seconds_10k`` / ``_1m`` (median per-step seconds, step 1 excluded), their ratio
   ``train_step_ratio_1m_over_10k``, ``train_peak_rss_mib_10k`` / ``_1m`` beside ``index_mib_1m_minus_10k``
   (the float32 vectors' growth) and ``train["index_faiss_mib"]`` (the index files), and the search a step
   makes, timed alone on both indexes (``train["search_ms"]``); ``train["ratio_of_fastest_runs"]`` is the
   ratio least disturbed by other jobs.

    python benchmarks/scale.py --quick      # ~8 minutes on 2 idle cores, twice that beside a test run
    python benchmarks/scale.py --smoke      # every part at toy sizes (tests/test_benchmarks_smoke.py)
    python benchmarks/scale.py              # 100k, 1M, 5M passages; 1M vectors; DSTC11 recall (long)
    python benchmarks/scale.py --only resume,ivfpq,recall,sharded,train --work /tmp/scale
                                            # every part but the corpus conversion (~5 minutes at full size
                                            # once the work folder holds the generated data)

``--work`` keeps the generated data (and the MiniLM vector stores) for a later run to reuse; ``--quick``
measures DSTC11's recall only when the work folder already holds its vector store. ``--threads N`` sets
OMP_NUM_THREADS for every command and probe as well. On a machine shared with another job, OpenMP threads
waiting for cores slow small steps by up to 20x: compare the ratios of one run, not seconds across runs.
Writes the plot of open time and RSS against corpus size into docs/scale/ (with the corpus part; ``--plot``).
The measurements and what they mean are written up in docs/scale.md; ``report`` renders a summary of them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import _common as common
import numpy as np
from _common import REPO, median, say

NAME = "scale"

LOOKUPS = 10_000
QUESTION = "who wrote the first passage about the river?"
TINY = common.TINY_CONFIG
SQUAD_MINI = common.SQUAD_MINI / "corpus.jsonl"
PARTS = ("corpus", "resume", "ivfpq", "recall", "sharded", "train")
SIZES = {  # per run size: corpus sizes; resume passages and shard rows; IVF-PQ vectors; training corpora, runs, steps
    "full": {"corpus": [100_000, 1_000_000, 5_000_000], "resume": (20_000, 1_000), "ivfpq": 1_000_000,
             "train": (10_000, 1_000_000), "rounds": 3, "steps": 20},
    "quick": {"corpus": [100_000, 300_000, 1_000_000], "resume": (20_000, 1_000), "ivfpq": 200_000,
              "train": (10_000, 200_000), "rounds": 2, "steps": 20},
    "smoke": {"corpus": [2_000, 4_000], "resume": (600, 60), "ivfpq": 500, "train": (1_000, 2_000),
              "rounds": 1, "steps": 3},
}
RECALL_CORPORA = {name: REPO / "configs" / name / "base.yaml" for name in ("squad", "dstc11")}
RECALL_QUERIES = 500
SHARDED_QUERIES, SHARDED_K = 64, 10


# ---- synthetic data -----------------------------------------------------------------------------
def _texts(n: int, seed: int, chunk: int = 20_000):
    """Lists of 100-word texts over a 20,000-word random vocabulary, ``chunk`` at a time, ``n`` in all."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, size=rng.integers(2, 10))) for _ in range(20_000)]
    for start in range(0, n, chunk):
        words = rng.integers(0, len(vocab), size=(min(chunk, n - start), 100))
        yield [" ".join(vocab[w] for w in row) for row in words]


def synthesize_dpr(path: Path, n: int, seed: int) -> None:
    """``id \\t text \\t title`` with a header, ids 1..n, 100 words a passage, ten passages a title."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("id\ttext\ttitle\n")
        row = 0
        for texts in _texts(n, seed):
            f.writelines(f"{row + i + 1}\t{text}\tTitle {(row + i) // 10}\n" for i, text in enumerate(texts))
            row += len(texts)


def synthesize_jsonl(path: Path, n: int, seed: int, head: Path | None = None) -> None:
    """A corpus.jsonl of ``n`` passages: ``head``'s lines first, then synthetic ones (ids ``syn-N``)."""
    lines = head.read_text(encoding="utf-8").splitlines() if head else []
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
        row = len(lines)
        for texts in _texts(n - len(lines), seed):
            f.writelines(json.dumps({"id": f"syn-{row + i}", "title": f"Title {(row + i) // 10}", "text": text}) + "\n"
                         for i, text in enumerate(texts))
            row += len(texts)


# ---- processes ----------------------------------------------------------------------------------
def run_measured(cmd: list[str], **kwargs) -> tuple[float, int, subprocess.CompletedProcess]:
    """(wall seconds, peak RSS in bytes, result) of a subprocess, from its own rusage."""
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    out, err = proc.communicate()
    seconds = time.perf_counter() - began
    # ru_maxrss of the children waited for so far: the largest is this one (the corpus part runs first,
    # and its probes were smaller).
    import resource

    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return seconds, peak, result


def run_checked(cmd: list[str], env: dict, **kwargs) -> float:
    """Wall seconds of a command that must succeed (run from the repository root)."""
    began = time.perf_counter()
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, **kwargs)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return time.perf_counter() - began


def probe(args: list[str], env: dict) -> dict:
    """Run one of this script's probes in a fresh process; its last stdout line is a JSON object."""
    out = subprocess.run([sys.executable, __file__, *args], env=env, cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"probe {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def jsarag(*args) -> list[str]:
    return [sys.executable, "-m", "jsarag", *map(str, args)]


def rss_parts() -> dict[str, int]:
    """Resident memory split into anonymous and file-backed bytes (Linux /proc/self/status)."""
    fields = {"RssAnon:": "anon", "RssFile:": "file"}
    parts = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, *rest = line.split()
        if name in fields:
            parts[fields[name]] = int(rest[0]) * 1024
    return parts


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ---- vector stores and indexes of random vectors ------------------------------------------------
def write_random_store(path: Path, rows: int, dim: int, *, corpus_hash: str, encoder: dict, seed: int,
                       shard_rows: int | None = None):
    """A complete vector store of seeded random unit vectors, generated and written a shard at a time."""
    from jsarag.index.vectors import SHARD_ROWS, VectorsMeta, VectorStore

    meta = VectorsMeta(rows=rows, dim=dim, shard_rows=shard_rows or SHARD_ROWS, corpus_hash=corpus_hash,
                       encoder=encoder)
    store = VectorStore.create(path, meta, resume=False)
    rng = np.random.default_rng(seed)
    for i in range(store.num_shards):
        start, stop = store.shard_range(i)
        vectors = rng.standard_normal((stop - start, dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store.write_shard(i, vectors)
    store.mark_complete()
    return VectorStore.open(path)


def tiny_encoder():
    from jsarag.config import load_config
    from jsarag.pipeline import build_retriever

    return build_retriever(load_config(TINY)).passage


def random_index(corpus, out: Path, seed: int, kind: str = "Flat") -> float:
    """An index of ``kind`` (sized by ``choose_index``: ``Flat``, ``auto``...) over ``corpus`` of random unit
    vectors in a vector store stamped with the tiny encoder's identity and the corpus fingerprint, saved in
    ``out`` (the store in ``out/vectors``); seconds taken."""
    from jsarag.index import PassageIndex
    from jsarag.index.build import choose_index
    from jsarag.index.faiss_index import VECTORS_DIR

    began = time.perf_counter()
    encoder = tiny_encoder()
    store = write_random_store(out / VECTORS_DIR, len(corpus), encoder.dim, corpus_hash=corpus.fingerprint(),
                               encoder=encoder.identity(), seed=seed)
    choice = choose_index(kind, len(corpus), encoder.dim)
    PassageIndex.from_store(store, choice.factory, search_params=choice.search_params, rerank=choice.rerank,
                            train_size=choice.train_size, corpus_source=corpus.source, progress=False).save(out)
    return time.perf_counter() - began


def random_index_for(corpus, out: Path, seed: int, kind: str = "Flat") -> Path:
    """``random_index`` into ``out`` unless ``out`` already holds one for this corpus."""
    meta = out / "meta.json"
    if not (meta.is_file() and json.loads(meta.read_text())["corpus_hash"] == corpus.fingerprint()):
        random_index(corpus, out, seed, kind)
    return out


# ---- 1. corpus store, conversion and `jsarag ask` -----------------------------------------------
def probe_convert(tsv: str, out: str) -> dict:
    """Run in a fresh process: ``jsarag data convert dpr`` as the library runs it, timed, with the peak
    resident memory it adds to the process (the baseline being the process after its imports)."""
    import resource

    import psutil

    from jsarag.data.convert import convert

    base = psutil.Process().memory_info().rss
    began = time.perf_counter()
    convert("dpr", [tsv], out, progress=False)
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": seconds, "peak_rss_added_mib": (peak - base) / 2**20}


def probe_open(store: str, seed: int) -> dict:
    """Run in a fresh process: open the store, then random lookups; RSS deltas in MiB."""
    import psutil

    from jsarag.data import Corpus

    process = psutil.Process()
    base, base_parts = process.memory_info().rss, rss_parts()
    began = time.perf_counter()
    corpus = Corpus.open(store)
    opened = time.perf_counter() - began
    after_open = process.memory_info().rss
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(corpus), size=LOOKUPS)
    began = time.perf_counter()
    ids = [corpus[int(r)].id for r in rows]
    by_row = time.perf_counter() - began
    began = time.perf_counter()
    assert [corpus.row(i) for i in ids] == rows.tolist()
    by_id = time.perf_counter() - began
    after_lookups, parts = process.memory_info().rss, rss_parts()
    return {"open_seconds": opened, "rss_after_open_mib": (after_open - base) / 2**20,
            "rss_after_lookups_mib": (after_lookups - base) / 2**20,
            # Anonymous memory is what the process allocated; file-backed pages are the mapped store's,
            # clean page cache the kernel can drop at any time.
            **{f"rss_{k}_after_lookups_mib": (parts[k] - base_parts[k]) / 2**20 for k in parts},
            "lookup_by_row_us": by_row / LOOKUPS * 1e6, "lookup_by_id_us": by_id / LOOKUPS * 1e6}


def measure_corpus(sizes: list[int], work: Path, env: dict, seed: int) -> dict:
    from jsarag.data import Corpus

    rows = []
    for n in sizes:
        tsv, dataset = work / f"psgs_{n}.tsv", work / f"dpr_{n}"
        if not tsv.exists():
            say(f"[{n:,}] writing {tsv.name} ...")
            synthesize_dpr(tsv, n, seed)
        if (dataset / "corpus").exists():
            shutil.rmtree(dataset)
        conv = probe(["--probe-convert", str(tsv), str(dataset)], env)
        seconds, peak = conv["seconds"], conv["peak_rss_added_mib"]
        opened = probe(["--probe-open", str(dataset / "corpus")], env)
        row = {"passages": n, "tsv_mib": tsv.stat().st_size / 2**20,
               "store_mib": folder_bytes(dataset / "corpus") / 2**20, "convert_seconds": seconds,
               "convert_passages_per_second": n / seconds, "convert_peak_rss_added_mib": peak, **opened}
        say(f"[{n:,}] convert {seconds:.1f} s ({n / seconds:,.0f}/s, peak RSS +{peak:,.0f} MiB); "
            f"open {opened['open_seconds'] * 1e3:.1f} ms; RSS +{opened['rss_after_open_mib']:.1f} MiB after open, "
            f"+{opened['rss_after_lookups_mib']:.1f} MiB after {LOOKUPS:,} lookups (anonymous "
            f"+{opened['rss_anon_after_lookups_mib']:.1f}, mapped file +{opened['rss_file_after_lookups_mib']:.1f}) "
            f"({opened['lookup_by_row_us']:.0f} us by row, {opened['lookup_by_id_us']:.0f} us by id)")
        rows.append(row)
    largest = work / f"dpr_{sizes[-1]}"
    index_seconds = random_index(Corpus.open(largest / "corpus"), largest / "index", seed)
    ask_seconds, ask_peak, result = run_measured(
        jsarag("ask", TINY, "-q", QUESTION, f"data.corpus={largest / 'corpus'}", "data.train=null", "data.dev=null",
               f"index.path={largest / 'index'}"), env=env)
    say(f"[{sizes[-1]:,}] random vector store + Flat index built in {index_seconds:.0f} s; `jsarag ask` answered in "
        f"{ask_seconds:.1f} s (peak RSS {ask_peak / 2**20:,.0f} MiB)")
    top = rows[-1]
    return {"sizes": rows, "passages": top["passages"], "open_seconds": top["open_seconds"],
            "corpus_rss_mib": top["rss_after_lookups_mib"],
            "convert_passages_per_second": top["convert_passages_per_second"],
            "ask_first_answer_seconds": ask_seconds, "ask_peak_rss_mib": ask_peak / 2**20,
            "ask_answer_tail": result.stdout.strip().splitlines()[-1:], "extrapolated_21m": extrapolate(rows)}


# ---- 2. an index build killed halfway and resumed -----------------------------------------------
def _shard_files(out: Path) -> dict[str, tuple[int, int]]:
    """Shard file name -> (inode, mtime): a shard rewritten by a later build changes both."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "vectors").glob("shard-*.npy")}


def measure_resume(passages: int, shard_rows: int, work: Path, env: dict, seed: int) -> dict:
    from jsarag.data import open_corpus

    corpus = work / f"resume_corpus_{passages}.jsonl"
    if not corpus.exists():
        synthesize_jsonl(corpus, passages, seed)
    open_corpus(corpus, progress=False)  # converted into $JSARAG_CACHE once, outside the timed builds
    overrides = [f"data.corpus={corpus}", "data.train=null", "data.dev=null", "data.test=null",
                 f"index.shard_rows={shard_rows}"]
    shards = -(-passages // shard_rows)
    whole, killed = work / "resume_whole", work / "resume_killed"
    for folder in (whole, killed):
        shutil.rmtree(folder, ignore_errors=True)
    whole_seconds = run_checked(jsarag("index", "build", TINY, "--out", whole, *overrides), env)
    began = time.perf_counter()
    with open(work / "resume_killed.log", "w") as log:
        proc = subprocess.Popen(jsarag("index", "build", TINY, "--out", killed, *overrides), env=env, cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT)
        while len(_shard_files(killed) if (killed / "vectors").is_dir() else {}) < shards // 2 and proc.poll() is None:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_seconds = time.perf_counter() - began
    before = _shard_files(killed)
    resume_seconds = run_checked(jsarag("index", "build", TINY, "--out", killed, "--resume", *overrides), env)
    after = _shard_files(killed)
    encoded = sorted(name for name in after if before.get(name) != after[name])
    same = (sorted(after) == sorted(_shard_files(whole))
            and all((killed / "vectors" / n).read_bytes() == (whole / "vectors" / n).read_bytes() for n in after)
            and (killed / "index.faiss").read_bytes() == (whole / "index.faiss").read_bytes())
    result = {"passages": passages, "shards": shards, "shards_at_kill": len(before),
              "shards_encoded_on_resume": len(encoded), "only_missing_encoded": len(encoded) == shards - len(before),
              "whole_seconds": whole_seconds, "killed_after_seconds": killed_seconds, "resume_seconds": resume_seconds,
              "identical": same}
    say(f"index build resumed after SIGKILL at {len(before)}/{shards} shards: encoded {len(encoded)} shards "
        f"in {resume_seconds:.1f} s (uninterrupted build {whole_seconds:.1f} s); shards and index.faiss "
        f"{'identical' if same else 'DIFFERENT'} to the uninterrupted build's")
    return {"index_resume_identical": same, "index_resume": result}


# ---- 3. IVF-PQ build memory ---------------------------------------------------------------------
def probe_ivfpq(store_path: str) -> dict:
    """Run in a fresh process: build ``choose_index("IVFPQ", N, d)`` from the store; peak RSS it adds."""
    import resource

    import faiss
    import psutil

    from jsarag.index import PassageIndex
    from jsarag.index.build import choose_index
    from jsarag.index.vectors import VectorStore

    store = VectorStore.open(store_path)
    base = psutil.Process().memory_info().rss
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    choice = choose_index("IVFPQ", len(store), store.dim)
    began = time.perf_counter()
    index = PassageIndex.from_store(store, choice.factory, search_params=choice.search_params, rerank=choice.rerank,
                                    train_size=choice.train_size, progress=False)
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"passages": len(store), "dim": store.dim, "factory": choice.factory,
            "search_params": choice.search_params, "train_size": choice.train_size, "rerank": choice.rerank,
            "build_seconds": seconds, "peak_rss_added_mib": (peak - base) / 2**20,
            "peak_rss_before_build_mib": peak_before / 2**20, "rss_base_mib": base / 2**20,
            "index_mib": faiss.serialize_index(index.index).nbytes / 2**20}


def measure_ivfpq(n: int, work: Path, env: dict, seed: int) -> dict:
    from jsarag.index.vectors import read_meta

    store = work / f"ivfpq_{n}" / "vectors"
    meta = read_meta(store)
    if not (meta and meta.complete and meta.rows == n):
        say(f"[{n:,} x 384] writing a vector store of random unit vectors ...")
        write_random_store(store, n, 384, corpus_hash="random-unit-vectors", encoder={"name": "random"}, seed=seed)
    r = probe(["--probe-ivfpq", str(store)], env)
    r["vectors_float32_mib"] = n * r["dim"] * 4 / 2**20
    r["store_mib"] = folder_bytes(store) / 2**20
    say(f"[{n:,} x {r['dim']}] {r['factory']} ({r['search_params']}, trained on {r['train_size']:,}) built from the "
        f"store in {r['build_seconds']:.0f} s, peak RSS +{r['peak_rss_added_mib']:,.0f} MiB; index "
        f"{r['index_mib']:,.0f} MiB; the float32 vectors would be {r['vectors_float32_mib']:,.0f} MiB")
    return {"ivfpq_build_peak_rss_mib": r["peak_rss_added_mib"], "ivfpq_index_mib": r["index_mib"],
            "ivfpq_build_seconds": r["build_seconds"], "ivfpq_factory": r["factory"],
            "ivfpq_vectors_float32_mib": r["vectors_float32_mib"], "ivfpq": r}


# ---- 4. recall of the approximate indexes on real embeddings ------------------------------------
def probe_recall(config: str, folder: str) -> dict:
    """Run in a fresh process: recall@10 of the IVF-PQ and HNSW indexes built from the folder's vector
    store, on up to RECALL_QUERIES dev questions encoded as `jsarag index build` encodes them."""
    import torch

    from jsarag.config import load_config
    from jsarag.data import Batch
    from jsarag.index import PassageIndex
    from jsarag.index.build import choose_index, measure_recall
    from jsarag.index.faiss_index import VECTORS_DIR
    from jsarag.index.vectors import VectorStore
    from jsarag.pipeline import build_retriever, load_corpus, load_split
    from jsarag.train.distributed import autocast

    cfg = load_config(config)
    corpus = load_corpus(cfg.data, progress=False)
    store = VectorStore.open(Path(folder) / VECTORS_DIR)
    assert store.meta.corpus_hash == corpus.fingerprint(), "the vector store is of another corpus"
    texts = Batch.from_examples(list(load_split(cfg.data, "dev", corpus, RECALL_QUERIES, progress=False))).queries
    with autocast(torch.device("cpu"), cfg.train.precision):
        queries = build_retriever(cfg).prior.encode(texts, batch_size=cfg.index.batch_size)
    result = {"passages": len(store), "queries": len(texts)}
    for kind in ("HNSW", "IVFPQ"):
        choice = choose_index(kind, len(store), store.dim)
        began = time.perf_counter()
        index = PassageIndex.from_store(store, choice.factory, search_params=choice.search_params,
                                        rerank=choice.rerank, train_size=choice.train_size,
                                        corpus_source=corpus.source, progress=False)
        result[kind.lower()] = {"factory": choice.factory, "search_params": choice.search_params,
                                "rerank": choice.rerank, "build_seconds": time.perf_counter() - began,
                                "recall_at_10": measure_recall(index, queries)}
    return result


def measure_recall_part(corpora: dict[str, Path], work: Path, env: dict) -> dict:
    per = {}
    for name, config in corpora.items():
        out = work / f"minilm_{name}"
        if not (out / "meta.json").is_file():  # a build stopped earlier is resumed
            say(f"[{name}] encoding the corpus (`jsarag index build {config.parent.name}/{config.name} "
                "index.factory=Flat`) ...")
            resume = ["--resume"] if out.exists() else []
            seconds = run_checked(jsarag("index", "build", config, "--out", out, *resume,
                                         "index.factory=Flat"), env)
            say(f"[{name}] vector store built in {seconds:.0f} s")
        r = per[name] = probe(["--probe-recall", str(config), str(out)], env)
        say(f"[{name}] {r['passages']:,} passages, {r['queries']} dev questions: recall@10 "
            f"{r['hnsw']['recall_at_10']:.4f} {r['hnsw']['factory']} ({r['hnsw']['search_params']}), "
            f"{r['ivfpq']['recall_at_10']:.4f} {r['ivfpq']['factory']} ({r['ivfpq']['search_params']}, "
            f"rerank {r['ivfpq']['rerank']})")
    return {"ivfpq_recall_at_10": min(r["ivfpq"]["recall_at_10"] for r in per.values()),
            "hnsw_recall_at_10": min(r["hnsw"]["recall_at_10"] for r in per.values()), "recall": per}


# ---- 5. sharded search under torch.distributed ---------------------------------------------------
def sharded_queries(rank: int, dim: int, seed: int) -> np.ndarray:
    q = np.random.default_rng([seed, rank]).standard_normal((SHARDED_QUERIES, dim), dtype=np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def probe_sharded(folder: str, out: str, seed: int) -> None:
    """Run by each process under torch.distributed.run: load this rank's shard, search collectively, save
    the rows found for this rank's queries into ``out/rows-RANK.npy``."""
    import torch.distributed as tdist

    from jsarag.index import PassageIndex

    tdist.init_process_group("gloo")
    rank, world = tdist.get_rank(), tdist.get_world_size()
    began = time.perf_counter()
    index = PassageIndex.load(folder, shard=(rank, world))
    loaded = time.perf_counter() - began
    began = time.perf_counter()
    _, rows = index.search(sharded_queries(rank, index.meta.dim, seed), SHARDED_K)
    searched = time.perf_counter() - began
    np.save(Path(out) / f"rows-{rank}.npy", rows)
    (Path(out) / f"times-{rank}.json").write_text(json.dumps({"load_seconds": loaded, "search_seconds": searched,
                                                              "rows_held": index.index.ntotal}))
    tdist.destroy_process_group()


def measure_sharded(folder: Path, work: Path, env: dict, seed: int, world: int = 2) -> dict:
    from jsarag.index import PassageIndex

    out = work / "sharded"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    seconds = run_checked([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(world), __file__, "--seed", str(seed), "--probe-sharded", str(folder), str(out)], env)
    whole = PassageIndex.load(folder)
    mismatched = 0
    for rank in range(world):
        _, rows = whole.search(sharded_queries(rank, whole.meta.dim, seed), SHARDED_K)
        mismatched += int((np.load(out / f"rows-{rank}.npy") != rows).any(axis=1).sum())
    times = [json.loads((out / f"times-{r}.json").read_text()) for r in range(world)]
    same = mismatched == 0
    say(f"sharded search over {world} processes ({len(whole):,} passages, {SHARDED_QUERIES} queries each, "
        f"k={SHARDED_K}): top-k {'identical to' if same else f'DIFFERENT ({mismatched} queries) from'} the whole "
        f"index's; {seconds:.0f} s under torch.distributed.run")
    return {"sharded_topk_identical": same,
            "sharded": {"passages": len(whole), "world": world, "queries_per_rank": SHARDED_QUERIES, "k": SHARDED_K,
                        "queries_mismatched": mismatched, "wall_seconds": seconds, "ranks": times}}


# ---- 6. training steps against the corpus size --------------------------------------------------
def train_data(n: int, work: Path, seed: int, kind: str = "Flat") -> tuple[Path, Path]:
    """(corpus.jsonl, random index folder of ``kind``) of ``n`` passages: squad_mini's first, synthetic after."""
    from jsarag.data import open_corpus

    corpus = work / f"train_corpus_{n}.jsonl"
    if not corpus.exists():
        say(f"[{n:,}] writing {corpus.name} ...")
        synthesize_jsonl(corpus, n, seed, head=SQUAD_MINI)
    # Converted into $JSARAG_CACHE now, where `jsarag train` finds it: the runs only open the store.
    opened = open_corpus(corpus, progress=False)
    suffix = "" if kind == "Flat" else f"_{kind}"
    return corpus, random_index_for(opened, work / f"train_index_{n}{suffix}", seed, kind)


def train_run(n: int, corpus: Path, index: Path, steps: int, work: Path, env: dict) -> dict:
    """One `jsarag train` run: per-step seconds (step 1 excluded), peak RSS, wall time."""
    run = work / f"train_run_{n}"
    shutil.rmtree(run, ignore_errors=True)
    load = os.getloadavg()[0]  # another job on the machine shows here (and slows the step)
    wall = run_checked(jsarag("train", TINY, "--out", run, f"data.corpus={corpus}", f"index.path={index}",
                              "data.dev=null", f"train.steps={steps}", "train.save_every=100",
                              "estimator.name=jsa"), env)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    done = [r for r in records if "run" not in r and "seconds" in r]
    return {"step_seconds": [r["seconds"] for r in done if r["step"] > 1],
            "peak_rss_mib": done[-1]["peak_memory_mib"], "wall_seconds": wall, "load_average_before": load}


def search_ms(indexes: dict[int, Path], seed: int, repeats: int = 30) -> dict[int, float]:
    """Median milliseconds of the search a JSA step makes (prior and posterior queries, [8, d] in one
    call, top 3), timed alternately on each index in this process."""
    from jsarag.index import PassageIndex

    loaded = {n: PassageIndex.load(path) for n, path in indexes.items()}
    dim = next(iter(loaded.values())).meta.dim
    queries = np.random.default_rng(seed).standard_normal((repeats, 8, dim), dtype=np.float32)
    times: dict[int, list[float]] = {n: [] for n in loaded}
    for q in queries:
        for n, index in loaded.items():
            began = time.perf_counter()
            index.search(q, 3)
            times[n].append((time.perf_counter() - began) * 1e3)
    return {n: median(t) for n, t in times.items()}


def measure_train(sizes: tuple[int, int], rounds: int, steps: int, work: Path, env: dict, seed: int) -> dict:
    small, large = sizes
    data = {n: train_data(n, work, seed, "auto") for n in sizes}  # the kind `index.factory: auto` picks
    kinds = {n: json.loads((data[n][1] / "meta.json").read_text())["factory"] for n in sizes}
    runs: dict[int, list[dict]] = {n: [] for n in sizes}
    for r in range(rounds):  # ABBA...: drift in the machine's load hits both sizes alike
        for n in (sizes if r % 2 == 0 else sizes[::-1]):
            runs[n].append(train_run(n, *data[n], steps, work, env))
            say(f"  train round {r + 1}/{rounds} [{n:,} passages]: median step "
                f"{median(runs[n][-1]['step_seconds']):.3f} s, peak RSS {runs[n][-1]['peak_rss_mib']:,.0f} MiB")
    step_s = {n: median([s for run in runs[n] for s in run["step_seconds"]]) for n in sizes}
    rss = {n: median([run["peak_rss_mib"] for run in runs[n]]) for n in sizes}
    searched = search_ms({n: data[n][1] for n in sizes}, seed)
    dim = json.loads((data[large][1] / "meta.json").read_text())["dim"]
    index_growth = (large - small) * dim * 4 / 2**20
    ratio = step_s[large] / step_s[small]
    say(f"training ({steps} JSA steps, {rounds} runs a size): median step {step_s[small]:.3f} s at {small:,} "
        f"passages ({kinds[small]}), {step_s[large]:.3f} s at {large:,} ({kinds[large]}; ratio {ratio:.3f}); the "
        f"search of a step {searched[small]:.1f} ms vs {searched[large]:.1f} ms; peak RSS {rss[small]:,.0f} vs "
        f"{rss[large]:,.0f} MiB (+{rss[large] - rss[small]:,.0f}; the vectors alone grow {index_growth:,.0f} MiB)")
    return {"train_step_seconds_10k": step_s[small], "train_step_seconds_1m": step_s[large],
            "train_step_ratio_1m_over_10k": ratio, "train_peak_rss_mib_10k": rss[small],
            "train_peak_rss_mib_1m": rss[large], "index_mib_1m_minus_10k": index_growth,
            "train": {"passages": list(sizes), "steps": steps, "rounds": rounds,
                      "index": {str(n): kinds[n] for n in sizes},
                      "index_faiss_mib": {str(n): (data[n][1] / "index.faiss").stat().st_size / 2**20
                                          for n in sizes},
                      "search_ms": {str(n): searched[n] for n in sizes},
                      "round_ratios": [median(b["step_seconds"]) / median(a["step_seconds"])
                                       for a, b in zip(runs[small], runs[large])],
                      # Another job on the machine only ever slows a run: the fastest run of each size is
                      # the least disturbed one.
                      "ratio_of_fastest_runs": (min(median(run["step_seconds"]) for run in runs[large])
                                                / min(median(run["step_seconds"]) for run in runs[small])),
                      "runs": {str(n): runs[n] for n in sizes}}}


# ---- the whole benchmark ------------------------------------------------------------------------
def measure(args) -> dict:
    parts, sizes = args.only or list(PARTS), SIZES[common.size(args)]
    work = Path(args.work) if args.work else common.scratch_folder("jsarag-scale-")
    work.mkdir(parents=True, exist_ok=True)
    # This process converts corpora too (for their fingerprints): into the cache the commands use.
    os.environ["JSARAG_CACHE"] = str(work / "cache")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if args.threads:  # the commands and probes run with this many torch / faiss (OpenMP) threads too
        env["OMP_NUM_THREADS"] = str(args.threads)
        common.apply_threads(args.threads)
    result = {"benchmark": NAME, "size": common.size(args), "machine": common.machine()}
    say(f"CPU: {result['machine']['cpu_model']}, {result['machine']['precision']['cpu']}, "
        f"{result['machine']['usable_cores']} usable cores; parts: {', '.join(parts)}")
    train_sizes = (sizes["train"][0], args.train_size or sizes["train"][1])
    # Quick: DSTC11's 10,882 snippets (minutes of MiniLM encoding) only when a --work folder holds them; smoke:
    # the tiny models over the shipped SQuAD sample.
    recall = ({"squad_mini": TINY} if args.smoke else
              {n: c for n, c in RECALL_CORPORA.items()
               if not args.quick or n == "squad" or (work / f"minilm_{n}" / "meta.json").is_file()})
    steps = [
        ("corpus", lambda: measure_corpus(args.sizes or sizes["corpus"], work, env, args.seed)),
        ("resume", lambda: measure_resume(*sizes["resume"], work, env, args.seed)),
        ("ivfpq", lambda: measure_ivfpq(args.ivfpq_size or sizes["ivfpq"], work, env, args.seed)),
        ("recall", lambda: measure_recall_part(recall, work, env)),
        ("train", lambda: measure_train(train_sizes, sizes["rounds"], sizes["steps"], work, env, args.seed)),
        ("sharded", lambda: measure_sharded(train_data(train_sizes[1], work, args.seed)[1], work, env, args.seed)),
    ]
    for name, step in steps:
        if name in parts:
            began = time.perf_counter()
            result.update(step())
            result.setdefault("part_seconds", {})[name] = time.perf_counter() - began
    plot = args.plot or (None if args.smoke else REPO / "docs" / "scale" / "corpus_store.png")
    if plot is not None and "sizes" in result:
        result["plot"] = corpus_plot(result["sizes"], plot)
    return result


def extrapolate(rows: list[dict], passages: int = common.DPR_WIKIPEDIA_PASSAGES) -> dict:
    """Store size, conversion time and peak memory at DPR Wikipedia's size: straight lines through the
    largest two measured sizes (each has a fixed part, e.g. the record batch being written)."""
    a, b = rows[-2], rows[-1]

    def line(key: str) -> float:
        slope = (b[key] - a[key]) / (b["passages"] - a["passages"])
        return b[key] + slope * (passages - b["passages"])

    return {"passages": passages, "store_gib": line("store_mib") / 2**10,
            "convert_hours": line("convert_seconds") / 3600,
            "convert_peak_rss_gib": line("convert_peak_rss_added_mib") / 2**10}


def corpus_plot(rows: list[dict], path: Path) -> str:
    """Open time and resident memory against corpus size, as a PNG; its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["passages"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(sizes, [r["open_seconds"] * 1e3 for r in rows], "o-")
    a.set(xscale="log", xlabel="passages", ylabel="ms", title="opening the corpus store")
    b.plot(sizes, [r["rss_after_open_mib"] for r in rows], "o-", label="after opening")
    b.plot(sizes, [r["rss_after_lookups_mib"] for r in rows], "s-", label=f"after {LOOKUPS:,} lookups")
    b.set(xscale="log", xlabel="passages", ylabel="MiB", title="resident memory added by the corpus")
    b.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def report(results: dict) -> str:
    """A summary of whichever parts ``results`` holds (the figures' conditions and meaning: docs/scale.md)."""
    f, x = common.f, results
    lines = ["## Paper scale", "", "`python benchmarks/scale.py` at full size (`--only` runs parts on their own); "
             "what each figure means, the conditions of the runs and the DPR Wikipedia estimates: docs/scale.md."]
    if "sizes" in x:
        lines += ["", "| passages | store | convert | peak RSS added | open | RSS added after open / after "
                  f"{LOOKUPS:,} lookups | lookup by row / by id |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['passages']:,} | {r['store_mib']:,.0f} MiB | {f(r['convert_seconds'], 1)} s "
                  f"({r['convert_passages_per_second'] / 1e3:.1f}k/s) | {r['convert_peak_rss_added_mib']:,.0f} MiB | "
                  f"{f(r['open_seconds'] * 1e3, 1)} ms | {f(r['rss_after_open_mib'], 1)} / "
                  f"{f(r['rss_after_lookups_mib'], 1)} MiB | {r['lookup_by_row_us']:.0f} / "
                  f"{r['lookup_by_id_us']:.0f} us |"
                  for r in x["sizes"]]
        e = x["extrapolated_21m"]
        passages = e.get("passages", common.DPR_WIKIPEDIA_PASSAGES)
        lines += ["", f"Extrapolated to {passages:,} passages (DPR Wikipedia): a "
                  f"{f(e['store_gib'], 1)} GiB store, converted in {f(e['convert_hours'], 2)} h with a peak of "
                  f"{f(e['convert_peak_rss_gib'], 1)} GiB. `jsarag ask` over the {x['passages']:,}-passage store "
                  "(tiny models, random Flat index): first "
                  f"answer {f(x['ask_first_answer_seconds'], 1)} s after the command's start."]
    rows = []
    if "index_resume" in x:
        r = x["index_resume"]
        rows.append(f"| `index build` killed at {r['shards_at_kill']} of {r['shards']} shards ({r['passages']:,} "
                    f"passages), then `--resume` | {r['shards_encoded_on_resume']} shards encoded again; identical to "
                    f"an uninterrupted build: {x['index_resume_identical']} |")
    if "ivfpq" in x:
        r = x["ivfpq"]
        rows.append(f"| IVF-PQ over {r['passages']:,} x {r['dim']} random vectors (`{r['factory']}`) | built in "
                    f"{r['build_seconds']:.0f} s, peak RSS +{r['peak_rss_added_mib']:,.0f} MiB; the index "
                    f"{r['index_mib']:,.0f} MiB, the float32 vectors {r['vectors_float32_mib']:,.0f} MiB |")
    if "recall" in x:
        per = "; ".join(f"{name} ({r['passages']:,} passages, {r['queries']} questions): HNSW "
                        f"{f(r['hnsw']['recall_at_10'], 3)}, IVF-PQ {f(r['ivfpq']['recall_at_10'], 3)}"
                        for name, r in x["recall"].items())
        rows.append(f"| recall@10 against exact search, dev questions as queries | {per} |")
    if "sharded" in x:
        r = x["sharded"]
        rows.append(f"| sharded search, {r['world']} processes over {r['passages']:,} rows, {r['queries_per_rank']} "
                    f"queries each, k={r['k']} | the same top k as the whole index: {x['sharded_topk_identical']} |")
    if "train" in x:
        (small, large), t = x["train"]["passages"], x["train"]
        kinds = f" ({t['index'][str(small)]} and {t['index'][str(large)]})" if "index" in t else " (Flat)"
        sized = t.get("index_faiss_mib")
        files = f" (index files {sized[str(small)]:,.0f} and {sized[str(large)]:,.0f} MiB)" if sized else ""
        rows.append(f"| {t['steps']} JSA training steps (tiny models), {small:,} against {large:,} passages, "
                    f"{t['rounds']} runs each | median step {f(x['train_step_seconds_10k'], 3)} s and "
                    f"{f(x['train_step_seconds_1m'], 3)} s (x{f(x['train_step_ratio_1m_over_10k'])}; target <= 1.10: "
                    f"{common.verdict(x['train_step_ratio_1m_over_10k'], '<= 1.10')}); the search of a step "
                    f"{f(t['search_ms'][str(small)], 1)} and {f(t['search_ms'][str(large)], 1)} ms"
                    f"{kinds}; peak RSS +{x['train_peak_rss_mib_1m'] - x['train_peak_rss_mib_10k']:,.0f} MiB for "
                    f"+{x['index_mib_1m_minus_10k']:,.0f} MiB of float32 vectors{files} |")
    if rows:
        lines += ["", "| index and training | measured |", "|---|---|"] + rows
    return "\n".join(lines)


def parse_args(argv=None):
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=None,
                   help="comma-separated corpus sizes (corpus part)")
    p.add_argument("--ivfpq-size", type=int, default=None, help="random vectors of the IVF-PQ build")
    p.add_argument("--train-size", type=int, default=None, help="the larger training corpus (and sharded index)")
    p.add_argument("--only", type=lambda s: s.split(","), default=None,
                   help=f"comma-separated parts to run, of {','.join(PARTS)} (default: all)")
    p.add_argument("--work", default=None, help="folder for the generated data (default: a new temp folder)")
    p.add_argument("--plot", type=Path, default=None,
                   help="corpus plot (default docs/scale/corpus_store.png; none for --smoke)")
    p.add_argument("--probe-open", default=None, help=argparse.SUPPRESS)
    p.add_argument("--probe-convert", nargs=2, default=None, help=argparse.SUPPRESS)
    p.add_argument("--probe-ivfpq", default=None, help=argparse.SUPPRESS)
    p.add_argument("--probe-recall", nargs=2, default=None, help=argparse.SUPPRESS)
    p.add_argument("--probe-sharded", nargs=2, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.only and set(args.only) - set(PARTS):
        p.error(f"--only: unknown part(s) {sorted(set(args.only) - set(PARTS))}; choose from {', '.join(PARTS)}")
    return args


def run_probe(args) -> bool:
    """Probe mode (a fresh process started by this script): run it, print its JSON; whether one ran."""
    probes = {"probe_open": lambda v: probe_open(v, args.seed), "probe_convert": lambda v: probe_convert(*v),
              "probe_ivfpq": probe_ivfpq, "probe_recall": lambda v: probe_recall(*v),
              "probe_sharded": lambda v: probe_sharded(*v, args.seed)}
    for name, fn in probes.items():
        if getattr(args, name):
            out = fn(getattr(args, name))
            if out is not None:
                print(json.dumps(out))
            return True
    return False


def main(argv=None) -> None:
    args = parse_args(argv)
    if run_probe(args):
        return
    results = common.write_results(measure(args), args, NAME)
    print(report(results))


if __name__ == "__main__":
    main()
