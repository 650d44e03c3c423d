"""jsarag's index and passage encoder vs the raw libraries they wrap: FAISS and sentence-transformers.

Index (random seeded float32 unit vectors, N x d, and 1,000 queries):
- build: ``PassageIndex.from_vectors(vectors, factory="Flat", corpus_hash="x", encoder={})`` vs
  ``faiss.IndexFlatIP(d); index.add(vectors)``;
- search: ``PassageIndex.search(queries, 10)`` vs ``index.search(queries, 10)`` on the raw index; the top-10
  ids must be identical;
- the same for HNSW32: ``factory="HNSW32"`` vs ``faiss.index_factory(d, "HNSW32", METRIC_INNER_PRODUCT)``.
  HNSW is built with several threads, so two builds may differ slightly; its search overhead is therefore
  timed on one and the same graph (``PassageIndex.search`` vs ``its .index.search``), and the agreement of
  the two separately built graphs is reported, not asserted.
Headlines: ``build_overhead`` and ``search_overhead`` = common.median(ours / raw) - 1 (target <= 5%).

Encoding (N real SQuAD passages, the text the index encodes: ``passage_text(p)``):
``Encoder.from_pretrained("builtin:minilm").encode(texts, batch_size=64)`` vs
``SentenceTransformer(minilm_path(), device="cpu").encode(texts, batch_size=64)``, max length 256 on both,
in fp32 and under ``torch.autocast("cpu", dtype=torch.bfloat16)``. fp32 embeddings must agree to 1e-4.
Headline: ``encode_throughput_ratio`` = ours / sentence-transformers passages per second (target >= 1.0).
On a GPU (``--device cuda``, autocast on the GPU) with ``--retriever`` and ``--random-weights`` (a folder holding
only a model's config and tokenizer, built with random weights: the same arithmetic), ``ours_passages_per_s`` is
the encoding rate that ``docs/scale.md`` extrapolates to GPU-hours; ``--passages`` above the corpus size cycles it.

All timings are interleaved pairs (ours, raw, ours, raw, ...) after warm-up; figures are per-pair medians.

Run:  .venv/bin/python benchmarks/index_encoding.py [--quick | --smoke] [--skip-index | --skip-encoding]
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import _common as common

NAME = "index_encoding"
OVERHEAD_TARGET = 0.05
EMBEDDING_TOLERANCE = 1e-4


def parse_args(argv=None):
    p = common.parser(__doc__.split("\n\n")[0])
    g = p.add_argument_group("index")
    g.add_argument("--skip-index", action="store_true")
    g.add_argument("--n", type=int, default=None, help="indexed vectors (default 100000, quick 20000)")
    g.add_argument("--dim", type=int, default=384)
    g.add_argument("--queries", type=int, default=1000)
    g.add_argument("--k", type=int, default=10)
    g.add_argument("--index-repeats", type=int, default=None,
                   help="Flat build/search pairs (default 20, quick 5)")
    g.add_argument("--hnsw-build-repeats", type=int, default=None,
                   help="HNSW build pairs (default 5, quick 1)")
    g.add_argument("--hnsw-search-repeats", type=int, default=None,
                   help="HNSW search pairs (default 20, quick 5)")
    g.add_argument("--no-hnsw", action="store_true")
    e = p.add_argument_group("encoding")
    e.add_argument("--skip-encoding", action="store_true")
    e.add_argument("--data", type=Path, default=None, help="folder with corpus.jsonl (default: SQuAD dev)")
    e.add_argument("--passages", type=int, default=None, help="passages encoded (default 1000, quick 128)")
    e.add_argument("--encode-repeats", type=int, default=None,
                   help="pairs per precision (default 10, quick 2)")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--no-bf16", action="store_true", help="skip the bfloat16 autocast comparison")
    e.add_argument("--device", default="cpu", help="cpu or cuda (timed with cuda.synchronize)")
    e.add_argument("--retriever", default="builtin:minilm", help="encoder: built-in, hub name or folder")
    e.add_argument("--random-weights", action="store_true", help="the encoder's architecture, random weights")
    return p.parse_args(argv)


# ---- index ----------------------------------------------------------------------------------------
def unit_vectors(rng, n: int, d: int):
    import numpy as np

    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x)


def overhead(pair) -> float:
    return pair.ratio - 1.0


def bench_index(args) -> dict:
    import faiss
    import numpy as np

    from jsarag.index import PassageIndex

    n = common.pick(args, "n", 100_000, 20_000, 2_000)
    reps = common.pick(args, "index_repeats", 20, 5, 1)
    hnsw_build_reps = common.pick(args, "hnsw_build_repeats", 5, 1)
    hnsw_search_reps = common.pick(args, "hnsw_search_repeats", 20, 5, 1)
    d, k = args.dim, args.k
    rng = np.random.default_rng(args.seed)
    vectors = unit_vectors(rng, n, d)
    queries = unit_vectors(rng, args.queries, d)
    common.say(f"index: {n} x {d} float32 unit vectors (seed {args.seed}), {len(queries)} queries, k={k}")
    verbose = common.say if args.verbose else None
    out: dict = {"n": n, "dim": d, "queries": len(queries), "k": k}

    def ours_flat():
        return PassageIndex.from_vectors(vectors, factory="Flat", corpus_hash="x", encoder={})

    def raw_flat():
        index = faiss.IndexFlatIP(d)
        index.add(vectors)
        return index

    build = common.interleaved(ours_flat, raw_flat, repeats=reps, warmup=1, a_name="ours", b_name="raw",
                               progress=verbose, keep_last=True)
    common.say(build.describe("  Flat build", unit=1e-3, unit_name="ms"))
    ours_index, raw_index = build.a_last, build.b_last
    build.a_last = build.b_last = None
    s_ours, i_ours = ours_index.search(queries, k)
    s_raw, i_raw = raw_index.search(queries, k)
    same_ids = bool(np.array_equal(i_ours, i_raw))
    max_score_diff = float(np.abs(s_ours - s_raw).max())
    search = common.interleaved(partial(ours_index.search, queries, k), partial(raw_index.search, queries, k),
                                repeats=reps, warmup=1, a_name="ours", b_name="raw", progress=verbose)
    common.say(search.describe("  Flat search", unit=1e-3, unit_name="ms"))
    common.say(f"  Flat results identical: ids {same_ids}, max |score diff| {max_score_diff:.2e}")
    assert same_ids, "PassageIndex (Flat) returned other ids than faiss.IndexFlatIP"
    out["flat"] = {"build": build.summary(), "search": search.summary(), "build_overhead": overhead(build),
                   "search_overhead": overhead(search), "identical_ids": same_ids,
                   "max_abs_score_diff": max_score_diff,
                   "factory_index_type": type(ours_index.index).__name__,
                   "raw_index_type": type(raw_index).__name__}
    del ours_index, raw_index

    if not args.no_hnsw:
        def ours_hnsw():
            return PassageIndex.from_vectors(vectors, factory="HNSW32", corpus_hash="x", encoder={})

        def raw_hnsw():
            index = faiss.index_factory(d, "HNSW32", faiss.METRIC_INNER_PRODUCT)
            index.add(vectors)
            return index

        common.say(f"  HNSW32: {hnsw_build_reps} build pairs ...")
        hbuild = common.interleaved(ours_hnsw, raw_hnsw, repeats=hnsw_build_reps, warmup=0, a_name="ours",
                                    b_name="raw", progress=verbose, keep_last=True)
        common.say(hbuild.describe("  HNSW32 build"))
        ours_h, raw_h = hbuild.a_last, hbuild.b_last
        hbuild.a_last = hbuild.b_last = None
        _, hi_ours = ours_h.search(queries, k)
        _, hi_raw = raw_h.search(queries, k)
        _, hi_same = ours_h.index.search(queries, k)
        agree = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(hi_ours.tolist(), hi_raw.tolist())]))
        _, exact = raw_flat().search(queries, k)  # ground truth for the recall figure
        recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(hi_ours.tolist(), exact.tolist())]))
        hsearch = common.interleaved(lambda: ours_h.search(queries, k), lambda: ours_h.index.search(queries, k),
                                     repeats=hnsw_search_reps, warmup=1, a_name="ours", b_name="raw",
                                     progress=verbose)
        common.say(hsearch.describe("  HNSW32 search (same graph)", unit=1e-3, unit_name="ms"))
        same_graph = bool(np.array_equal(hi_ours, hi_same))
        common.say(f"  HNSW32: same-graph ids identical {same_graph}; top-{k} overlap of "
                   f"the two separately built graphs {agree:.4f}; recall@{k} vs exact {recall:.4f}")
        out["hnsw32"] = {"build": hbuild.summary(), "search": hsearch.summary(),
                         "build_overhead": overhead(hbuild), "search_overhead": overhead(hsearch),
                         "same_graph_identical_ids": same_graph,
                         "separate_builds_topk_overlap": agree, "recall_at_k_vs_flat": recall,
                         "search_timed_on": "one graph: PassageIndex.search vs PassageIndex.index.search"}
        del ours_h, raw_h
    out["build_overhead"] = out["flat"]["build_overhead"]
    out["search_overhead"] = out["flat"]["search_overhead"]
    return out


# ---- encoding -------------------------------------------------------------------------------------
def compare_embeddings(a, b) -> dict:
    import numpy as np

    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = (a * b).sum(1) / (na * nb)
    return {"max_abs_diff": float(np.abs(a - b).max()), "min_cosine": float(cos.min()),
            "ours_norm_range": [float(na.min()), float(na.max())],
            "st_norm_range": [float(nb.min()), float(nb.max())]}


def bench_encoding(args) -> dict:
    import contextlib

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from jsarag.data import Corpus
    from jsarag.models.encoder import Encoder
    from jsarag.models.pretrained import resolve_model
    from jsarag.models.retriever import passage_text

    n = common.pick(args, "passages", 1000, 128, 16)
    reps = common.pick(args, "encode_repeats", 10, 2, 1)
    bs = args.batch_size
    device = torch.device(args.device)
    corpus = Corpus.from_jsonl(common.data_dir(args) / "corpus.jsonl")
    texts = [passage_text(corpus[i % len(corpus)]) for i in range(n)]
    path = (common.random_weights_copy(args.retriever, causal_lm=False, seed=args.seed) if args.random_weights
            else str(resolve_model(args.retriever)))
    ours = Encoder.from_pretrained(path).to(device)
    st = SentenceTransformer(path, device=args.device)
    st.max_seq_length = ours.max_length
    st.eval()
    tokenized = ours.tokenizer(texts, truncation=True, max_length=ours.max_length)["input_ids"]
    lengths = [len(ids) for ids in tokenized]
    common.say(f"encoding: {len(texts)} SQuAD passages (tokens: median {common.median(lengths):.0f}, "
               f"max {max(lengths)}, "
               f"{sum(x == ours.max_length for x in lengths)} truncated at {ours.max_length}), batch {bs}, "
               f"{reps} pairs per precision")
    common.say(f"  sentence-transformers modules: {[type(m).__name__ for m in st]}")
    verbose = common.say if args.verbose else None

    def synchronized(encode):
        def run():
            out = encode()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return out
        return run

    @synchronized
    def ours_encode():
        return ours.encode(texts, batch_size=bs)

    @synchronized
    def st_encode():  # normalised like ours (a random-weights folder has no Normalize module of its own)
        return st.encode(texts, batch_size=bs, show_progress_bar=False, convert_to_numpy=True,
                         normalize_embeddings=True)

    results: dict = {"passages": len(texts), "distinct_passages": min(n, len(corpus)), "batch_size": bs,
                     "encoder": args.retriever, "random_weights": args.random_weights, "device": str(device),
                     "parameters": sum(p.numel() for p in ours.model.parameters()), "max_length": ours.max_length,
                     "st_max_seq_length": st.max_seq_length, "tokens_median": common.median(lengths),
                     "tokens_max": max(lengths), "st_modules": [type(m).__name__ for m in st]}
    precisions = [("fp32", contextlib.nullcontext)]
    if not args.no_bf16:
        precisions.append(("bf16_autocast", lambda: torch.autocast(device.type, dtype=torch.bfloat16)))
    for label, ctx in precisions:
        with ctx():
            t0 = time.perf_counter()
            e_ours = np.asarray(ours_encode(), dtype=np.float32)  # doubles as the warm-up of each side
            t1 = time.perf_counter()
            e_st = np.asarray(st_encode(), dtype=np.float32)
            t2 = time.perf_counter()
            agreement = compare_embeddings(e_ours, e_st)
            common.say(f"  {label}: warm-up/check pass ours {t1 - t0:.2f}s, st {t2 - t1:.2f}s; max |diff| "
                       f"{agreement['max_abs_diff']:.2e}, min cosine {agreement['min_cosine']:.6f}")
            pair = common.interleaved(ours_encode, st_encode, repeats=reps, warmup=0, a_name="ours",
                                      b_name="sentence_transformers", progress=verbose)
        throughput_ratio = common.median(pair.inverse_ratios)
        ours_pps = len(texts) / common.median(pair.a_seconds)
        st_pps = len(texts) / common.median(pair.b_seconds)
        common.say(pair.describe(f"  {label} encode"))
        spread = common.summarize(pair.inverse_ratios)
        common.say(f"  {label}: ours {ours_pps:.1f} passages/s, sentence-transformers {st_pps:.1f} passages/s; "
                   f"throughput ratio ours/st = {throughput_ratio:.4f} "
                   f"[IQR {spread['q1']:.4f}..{spread['q3']:.4f}]")
        results[label] = {"agreement": agreement, "timing": pair.summary(),
                          "throughput_ratio": spread,
                          "encode_throughput_ratio": throughput_ratio,
                          "ours_passages_per_s": ours_pps, "st_passages_per_s": st_pps}
    results["host_side"] = host_side(ours, texts, bs, reps)
    results["encode_throughput_ratio"] = results["fp32"]["encode_throughput_ratio"]
    if "bf16_autocast" in results:
        results["encode_throughput_ratio_bf16"] = results["bf16_autocast"]["encode_throughput_ratio"]
    results["fp32_embeddings_agree"] = results["fp32"]["agreement"]["max_abs_diff"] < EMBEDDING_TOLERANCE
    return results


def host_side(ours, texts: list[str], batch_size: int, repeats: int) -> dict:
    """Passages per second of ``Encoder.encode`` with its model replaced by zeros (the instance's ``_embed``
    stubbed): tokenization, the length sort, padding and the copy of each batch to the device, the work the host
    does in series with the model. Near the full rate, the host bounds encoding."""
    import torch

    ours._embed = lambda batch: torch.zeros(batch["input_ids"].shape[0], ours.dim)  # shadows the method
    try:
        # the first pass warms the tokenizer up
        seconds = [common.time_once(lambda: ours.encode(texts, batch_size=batch_size), None)[0]
                   for _ in range(repeats + 1)]
    finally:
        del ours._embed  # the class's method again
    rate = len(texts) / common.median(seconds[1:])
    common.say(f"  host side of jsarag's encode (model stubbed out): {rate:.0f} passages/s")
    return {"passages_per_s": rate, "seconds": [round(t, 4) for t in seconds[1:]]}


def measure(args) -> dict:
    common.quiet_libraries()
    common.apply_threads(args.threads)
    result: dict = {"benchmark": NAME, "size": common.size(args), "quick": args.quick,
                    "machine": common.machine(args.device)}
    if not args.skip_index:
        index = result["index"] = bench_index(args)
        result["build_overhead"] = index["build_overhead"]
        result["search_overhead"] = index["search_overhead"]
        if "hnsw32" in index:
            result["hnsw32_build_overhead"] = index["hnsw32"]["build_overhead"]
            result["hnsw32_search_overhead"] = index["hnsw32"]["search_overhead"]
        result["index_targets_met"] = {key: result[key] <= OVERHEAD_TARGET for key in
                                       ("build_overhead", "search_overhead", "hnsw32_build_overhead",
                                        "hnsw32_search_overhead") if key in result}
    if not args.skip_encoding:
        enc = result["encoding"] = bench_encoding(args)
        result["encode_throughput_ratio"] = enc["encode_throughput_ratio"]
        if "encode_throughput_ratio_bf16" in enc:
            result["encode_throughput_ratio_bf16"] = enc["encode_throughput_ratio_bf16"]
        result["encode_target_met"] = enc["encode_throughput_ratio"] >= 1.0
    result["targets"] = {"overheads": f"<= {OVERHEAD_TARGET}", "encode_throughput_ratio": ">= 1.0"}
    return result


def report(results: dict) -> str:
    f, d = common.f, results
    lines = ["## Index and encoding against raw FAISS and sentence-transformers", "",
             "`python benchmarks/index_encoding.py --encode-repeats 3`."]
    if "index" in d:
        idx = d["index"]
        lines += ["", f"| | overhead over raw FAISS ({idx['n']:,} x {idx['dim']} vectors, {idx['queries']} queries, "
                  f"k={idx['k']}) | target |", "|---|---|---|",
                  f"| Flat build | {f(d['build_overhead'], pct=True)} | <= +5% |",
                  f"| Flat search | {f(d['search_overhead'], pct=True)} | <= +5% |",
                  f"| HNSW32 build | {f(d.get('hnsw32_build_overhead'), pct=True)} | <= +5% |",
                  f"| HNSW32 search | {f(d.get('hnsw32_search_overhead'), pct=True)} | <= +5% |", "",
                  f"Flat results identical to raw FAISS: {idx['flat']['identical_ids']}."]
    if "encoding" in d:
        enc, bf16 = d["encoding"], d["encoding"].get("bf16_autocast", {})
        lines += ["", f"| encoding {enc['passages']} SQuAD passages (max {enc['max_length']} tokens) | jsarag "
                  "passages/s | sentence-transformers passages/s | ratio (target >= 1.0) |", "|---|---|---|---|",
                  f"| fp32 | {f(enc['fp32']['ours_passages_per_s'], 1)} | {f(enc['fp32']['st_passages_per_s'], 1)} | "
                  f"{f(d['encode_throughput_ratio'])} |",
                  f"| bf16 autocast | {f(bf16.get('ours_passages_per_s'), 1)} | "
                  f"{f(bf16.get('st_passages_per_s'), 1)} | {f(d.get('encode_throughput_ratio_bf16'))} |", "",
                  f"Embeddings agree: max abs difference {enc['fp32']['agreement']['max_abs_diff']:.1e} (fp32)."]
    return "\n".join(lines)


def tokenizer_threads(machine: dict) -> str:
    """How the run's tokenizers were threaded: TOKENIZERS_PARALLELISM as the benchmark saw it (unset in runs
    from before it was recorded, when the benchmarks' default of one thread applied)."""
    setting = (machine.get("tokenizers_parallelism_env") or "false").lower()
    off = setting in ("", "off", "false", "f", "no", "n", "0")  # the tokenizers library's own reading
    return "1 thread" if off else f"all {machine.get('usable_cores')} cores"


def report_gpu(runs: dict[str, dict]) -> str:
    """Encoding on a GPU (``benchmarks/gpu_checks.sh``: ``benchmarks/results/gpu/index_encoding_gpu_*.json``) and
    the GPU-hours of encoding DPR Wikipedia at the measured rate."""
    f = common.f
    first = next(iter(runs.values()))
    m = first["machine"]
    lines = ["### Passage encoding on a GPU", "",
             f"{common.gpu_name(m)} ({m.get('usable_cores')} CPU cores), torch {m['versions'].get('torch')}, "
             f"sentence-transformers {m['versions'].get('sentence-transformers')}; `index_encoding.py --skip-index "
             "--device cuda --random-weights` (the architecture with random weights: the same arithmetic), SQuAD "
             f"paragraphs (cycled where more were asked for than the corpus has), at most "
             f"{first['encoding']['max_length']} tokens. Tokenizers: on one thread (the benchmarks' default, kept "
             "for the CPU timings) or on all the host's cores (`TOKENIZERS_PARALLELISM=true`, as `jsarag index "
             "build` runs them: the library leaves the tokenizers' default). Host side: passages/s of jsarag's "
             "`encode` with the model stubbed out (tokenization, length sort, padding, the copy to the GPU), and "
             "its share of the bf16 encoding time.", "",
             "| encoder | parameters | passages (median tokens) | batch | tokenizers | fp32: jsarag / "
             "sentence-transformers passages/s | bf16 autocast: jsarag / sentence-transformers passages/s | host "
             "side passages/s (share) | DPR Wikipedia (21.0M) at the bf16 rate |", "|---" * 9 + "|"]
    for d in sorted(runs.values(), key=lambda d: (d["encoding"]["parameters"], tokenizer_threads(d["machine"]))):
        e = d["encoding"]
        bf16 = e.get("bf16_autocast", {})
        rate = bf16.get("ours_passages_per_s")
        host = e.get("host_side", {}).get("passages_per_s")
        hours = f"{common.DPR_WIKIPEDIA_PASSAGES / rate / 3600:.1f} GPU-hours" if rate else "-"
        lines.append(f"| {Path(e['encoder']).name} | {e['parameters'] / 1e6:.0f}M | {e['passages']:,} "
                     f"({f(e['tokens_median'], 0)}) | {e['batch_size']} | {tokenizer_threads(d['machine'])} | "
                     f"{f(e['fp32']['ours_passages_per_s'], 0)} / {f(e['fp32']['st_passages_per_s'], 0)} | "
                     f"{f(rate, 0)} / {f(bf16.get('st_passages_per_s'), 0)} | "
                     + (f"{host:,.0f} ({100 * rate / host:.0f}%)" if host and rate else "-") + f" | {hours} |")
    lines += ["", "The host side runs in series with the model (the GPU waits while the host prepares each "
              "batch): where its share is high, the host bounds the rate. The "
              "GPU-hours assume one process per GPU encoding at this rate (`jsarag index build` under torchrun gives "
              "each GPU 1/N of the shards)."]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    results = common.write_results(measure(args), args, NAME)
    print(report(results))
    if results.get("encoding") and not results["encoding"]["fp32_embeddings_agree"]:  # after the results are saved
        raise SystemExit(f"fp32 embeddings differ from sentence-transformers: "
                         f"{results['encoding']['fp32']['agreement']['max_abs_diff']:.3e} >= {EMBEDDING_TOLERANCE}")


if __name__ == "__main__":
    main()
