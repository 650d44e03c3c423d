"""How the JSA step and index search scale: step time and peak memory against K and m; search time
against corpus size.

    python benchmarks/scaling.py                    # the real measurement
    python benchmarks/scaling.py --quick            # fewer points and repeats, shorter passages
    python benchmarks/scaling.py --plots DIR

1. JSA training step (the library's JSA, B=1 question, SmolLM2-135M-Instruct + LoRA, MiniLM, the training
   loop's step as ``_common.Stepper`` runs it) at K in {2, 5, 10, 20} with m=50, and at m in {1, 10, 50, 100}
   with K=10, over a corpus of SQuAD paragraphs holding the questions' gold paragraphs.
   Time: one process, weights restored before every step, all points interleaved round by round (same
   question for every point in a round, same torch seed); medians over rounds.
   Memory: each point runs in its own subprocess (``--point K M``), since ru_maxrss is monotonic per
   process. The subprocess reads ``getrusage(RUSAGE_SELF).ru_maxrss`` after setup (models, index, AdamW
   state), resets its peak RSS to the current RSS (``/proc/self/clear_refs``, Linux >= 4.0), runs its
   steps and reads ru_maxrss again: ``peak_mib`` is the process peak, ``step_peak_mib`` the peak during
   the steps and ``step_delta_mib`` what a step adds to the loaded process. It is started through
   ``/bin/sh`` (which forks it): a child exec'd directly from this big process would inherit this
   process's peak in its own ru_maxrss.
2. Index search: random unit vectors, d=384, corpus sizes {1k, 10k, 100k, 1M} (quick: up to 100k),
   1,000 random unit queries, k=10, through ``jsarag.index.PassageIndex``: Flat (exact inner product)
   and HNSW32 with efSearch=64, all (size, index) combinations interleaved over repeats. HNSW recall@10
   against Flat is reported (random vectors are HNSW's hard case).

PNG plots (matplotlib, Agg) go to ``--plots`` (default docs/benchmarks/).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as common

NAME = "scaling"
COUNTED = ("distinct_proposals", "distinct_states", "candidates", "accept_rate", "nograd_seqs", "grad_seqs")


def parse_args(argv=None):
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--ks", type=int, nargs="+", help="K values at m=--m-for-k (default 2 5 10 20; quick 2 10)")
    p.add_argument("--ms", type=int, nargs="+", help="m values at K=--k-for-m (default 1 10 50 100; quick 1 50)")
    p.add_argument("--m-for-k", type=int, help="default 50; smoke 4")
    p.add_argument("--k-for-m", type=int, help="default 10; smoke 2")
    p.add_argument("--passages", type=int, help="corpus size for the JSA step (default 1000; quick 300)")
    p.add_argument("--questions", type=int, help="distinct questions cycled over rounds (default 3; quick 2)")
    p.add_argument("--max-passage-tokens", type=int, help="default 192; quick 96")
    p.add_argument("--repeats", type=int, help="timed rounds over all points (default 4; quick 2)")
    p.add_argument("--point-steps", type=int, help="steps per memory subprocess (default 2)")
    p.add_argument("--sizes", type=int, nargs="+", help="index sizes (default 1k 10k 100k 1M; quick up to 100k)")
    p.add_argument("--queries", type=int, help="default 1000")
    p.add_argument("--search-repeats", type=int, help="default 7; quick 3")
    p.add_argument("--skip-jsa", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-index", action="store_true")
    p.add_argument("--plots", help="folder for plots ('': none; default docs/benchmarks, for --smoke none)")
    p.add_argument("--point", type=int, nargs=2, metavar=("K", "M"), help=argparse.SUPPRESS)
    p.add_argument("--vectors", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    pick = common.pick
    args.ks, args.ms = pick(args, "ks", [2, 5, 10, 20], [2, 10], [2]), pick(args, "ms", [1, 10, 50, 100], [1, 50], [4])
    args.m_for_k, args.k_for_m = pick(args, "m_for_k", 50, 50, 4), pick(args, "k_for_m", 10, 10, 2)
    args.passages, args.questions = pick(args, "passages", 1000, 300, 40), pick(args, "questions", 3, 2, 1)
    args.max_passage_tokens = pick(args, "max_passage_tokens", 192, 96, 32)
    args.repeats, args.point_steps = pick(args, "repeats", 4, 2, 1), pick(args, "point_steps", 2, 2, 1)
    args.sizes = pick(args, "sizes", [1_000, 10_000, 100_000, 1_000_000], [1_000, 10_000, 100_000], [1_000])
    args.queries, args.search_repeats = pick(args, "queries", 1000, 1000, 100), pick(args, "search_repeats", 7, 3, 1)
    docs = str(common.REPO / "docs" / "benchmarks")
    args.plots = pick(args, "plots", docs, docs, "")
    return args


# ---- JSA step ----------------------------------------------------------------------------------------
class StepRunner:
    """One model and its stepper; a JSA estimator per (K, m)."""

    def __init__(self, args, vectors=None):
        import torch

        from jsarag.data import Batch
        from jsarag.estimators import JSA, JSAConfig
        from jsarag.train import distributed as dist

        self.corpus, examples = common.squad_setup(common.data_dir(args), args.questions, args.passages, args.seed)
        self.batches = [[Batch.from_examples([e])] for e in examples]
        self.model, cfg = common.build_rag(self.corpus, max_passage_tokens=args.max_passage_tokens, seed=args.seed,
                                           vectors=vectors, **common.models(args))
        self.model.train()
        device = torch.device("cpu")
        self.stepper = common.Stepper(self.model, cfg.optim, device, dist.resolve_precision("auto", device))
        self.counter = common.ScoreCounter(self.model.generator)
        self.estimators = {p: JSA(JSAConfig(num_proposals=p[1]), top_k=p[0]) for p in jsa_points(args)}

    def vectors(self):
        import numpy as np

        return self.model.retriever.index.vectors(np.arange(len(self.corpus)))

    def step(self, point: tuple[int, int], batch_idx: int) -> tuple[float, dict]:
        self.counter.reset()
        seconds, metrics = self.stepper.step(self.estimators[point], self.batches[batch_idx % len(self.batches)],
                                             seed=1000 + batch_idx)
        return seconds, {**metrics, **self.counter.counts}


def jsa_points(args) -> list[tuple[int, int]]:
    points = [(k, args.m_for_k) for k in args.ks] + [(args.k_for_m, m) for m in args.ms]
    return list(dict.fromkeys(points))  # (10, 50) appears in both sweeps: run it once


def _status_mib(key: str) -> float | None:
    """A field of /proc/self/status (VmRSS, VmHWM), MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux >= 4.0); ru_maxrss then reports the peak since."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_point(args) -> None:
    """Subprocess mode: one (K, m) point; prints one JSON line."""
    import numpy as np

    common.quiet_libraries()
    common.apply_threads(args.threads)
    K, M = args.point
    args.ks, args.ms, args.m_for_k = [K], [], M
    runner = StepRunner(args, np.load(args.vectors) if args.vectors else None)
    gc.collect()
    setup_peak, rss_before, reset = common.peak_rss_mib(), _status_mib("VmRSS"), _reset_peak_rss()
    secs = [runner.step((K, M), i)[0] for i in range(args.point_steps)]
    end = common.peak_rss_mib()
    rec = {"top_k": K, "proposals": M, "setup_peak_mib": round(setup_peak, 1),
           "rss_before_steps_mib": round(rss_before, 1) if rss_before is not None else None,
           "peak_mib": round(max(setup_peak, end), 1), "peak_reset": reset, "steps_s": [round(s, 3) for s in secs]}
    if reset and rss_before is not None:
        rec["step_peak_mib"] = round(end, 1)  # peak RSS during the steps
        rec["step_delta_mib"] = round(end - rss_before, 1)  # what a step adds on top of the loaded model
    else:
        rec["step_peak_mib"] = None
        rec["step_delta_mib"] = round(max(0.0, end - setup_peak), 1)  # lower bound
    print(json.dumps(rec), flush=True)


def jsa_timing(args, runner: StepRunner, points) -> dict:
    common.say(f"JSA step timing: points (K, m) = {points}, {args.repeats} timed rounds after 1 warm-up step")
    key_point = (args.k_for_m, args.m_for_k) if (args.k_for_m, args.m_for_k) in points else points[0]
    common.say(f"  warm-up K={key_point[0]} m={key_point[1]}: {runner.step(key_point, 0)[0]:.2f}s")
    times, recs = {p: [] for p in points}, {p: [] for p in points}
    for r in range(args.repeats):
        for p in points:
            seconds, metrics = runner.step(p, r % args.questions)
            times[p].append(seconds)
            recs[p].append(metrics)
        common.say(f"  round {r}: " + " | ".join(f"K{p[0]}/m{p[1]} {times[p][-1]:.2f}s" for p in points))
    return {f"K{p[0]}_m{p[1]}": {"top_k": p[0], "proposals": p[1], "median_s": common.median(times[p]),
                                 "min_s": min(times[p]), "max_s": max(times[p]),
                                 "times_s": [round(t, 4) for t in times[p]],
                                 **{f"mean_{k}": statistics.fmean(m[k] for m in recs[p]) for k in COUNTED}}
            for p in points}


def jsa_memory(args, points, vectors_path: str) -> dict:
    common.say(f"JSA peak memory: one subprocess per point, {args.point_steps} step(s) each")
    out = {}
    for K, M in points:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--point", str(K), str(M), "--vectors", vectors_path,
               "--passages", str(args.passages), "--questions", str(args.questions), "--max-passage-tokens",
               str(args.max_passage_tokens), "--seed", str(args.seed), "--point-steps", str(args.point_steps)]
        cmd += (["--threads", str(args.threads)] if args.threads else []) + (["--smoke"] if args.smoke else [])
        # Through a shell that forks python (not exec): a child exec'd straight from this process would
        # inherit this process's peak RSS in its ru_maxrss (Linux keeps the pre-exec maximum).
        t = time.perf_counter()
        proc = subprocess.run(["/bin/sh", "-c", shlex.join(cmd) + "; exit $?"], capture_output=True, text=True,
                              cwd=str(common.REPO), check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            common.say(f"  K={K} m={M}: subprocess failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
            out[f"K{K}_m{M}"] = {"top_k": K, "proposals": M, "error": proc.returncode}
            continue
        rec = out[f"K{K}_m{M}"] = json.loads(lines[-1])
        common.say(f"  K={K} m={M}: RSS before steps {rec['rss_before_steps_mib']:.0f} MiB, peak {rec['peak_mib']:.0f}"
                   f" MiB (a step adds {rec['step_delta_mib']:.0f} MiB), subprocess {time.perf_counter() - t:.0f}s")
    return out


# ---- index search ------------------------------------------------------------------------------------
def index_search(args) -> dict:
    import faiss
    import numpy as np

    from jsarag.index import PassageIndex

    d, nq, k = 384, args.queries, 10
    rng = np.random.default_rng(args.seed)

    def unit(n: int) -> np.ndarray:
        x = rng.standard_normal((n, d), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    queries = unit(nq)
    common.say(f"index search: d={d}, {nq} queries, k={k}, sizes {args.sizes}; Flat and HNSW32 (efSearch=64); "
               f"faiss threads {faiss.omp_get_max_threads()}")
    indexes, builds = {}, {}
    for n in args.sizes:
        vectors = unit(n)
        for kind, factory, params in (("flat", "Flat", ""), ("hnsw32", "HNSW32", "efSearch=64")):
            t = time.perf_counter()
            indexes[(n, kind)] = PassageIndex.from_vectors(vectors, factory=factory, search_params=params,
                                                           corpus_hash=f"random-{n}", encoder={})
            builds[(n, kind)] = time.perf_counter() - t
        del vectors
    for index in indexes.values():  # warm-up
        index.search(queries, k)
    times = {c: [] for c in indexes}
    for _ in range(args.search_repeats):
        for c, index in indexes.items():
            t = time.perf_counter()
            index.search(queries, k)
            times[c].append(time.perf_counter() - t)
    out = {}
    for n in args.sizes:
        _, exact = indexes[(n, "flat")].search(queries, k)
        _, approx = indexes[(n, "hnsw32")].search(queries, k)
        recall = float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx.tolist(), exact.tolist())]))
        for kind in ("flat", "hnsw32"):
            med = common.median(times[(n, kind)])
            out[f"{kind}_{n}"] = {"index": kind, "corpus_size": n, "median_s_per_batch": med,
                                  "median_ms_per_query": med * 1000 / nq, "queries_per_s": nq / med,
                                  "build_s": builds[(n, kind)], "times_s": [round(t, 5) for t in times[(n, kind)]],
                                  **({"recall_at_10_vs_flat": recall} if kind == "hnsw32" else {})}
            common.say(f"  {kind:<6} n={n:>8}: build {builds[(n, kind)]:.1f}s, {med * 1000 / nq:8.4f} ms/query"
                       + (f", recall@10 vs flat {recall:.3f}" if kind == "hnsw32" else ""))
    return out


# ---- plots -------------------------------------------------------------------------------------------
def plots(result: dict, args, folder: Path) -> list[str]:
    """PNG plots of the sweeps, memory and search; their paths (relative to the repository when inside it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    title_tail = (f"B=1, {result['shape']['generator']}, {args.max_passage_tokens}-token passages, "
                  f"{result['shape']['precision']}, CPU")
    timing, memory = result.get("jsa_time", {}), result.get("jsa_memory", {})

    def sweep(records: dict, vary: str, fixed: str, value: int) -> list[dict]:
        return sorted((r for r in records.values() if r.get(fixed) == value and vary in r), key=lambda r: r[vary])

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(folder / name, dpi=120)
        plt.close(fig)
        path = (folder / name).resolve()
        written.append(str(path.relative_to(common.REPO) if path.is_relative_to(common.REPO) else path))

    for vary, fixed, value, name in (("top_k", "proposals", args.m_for_k, "jsa_time_vs_K.png"),
                                     ("proposals", "top_k", args.k_for_m, "jsa_time_vs_m.png")):
        rs = sweep(timing, vary, fixed, value)
        if len(rs) < 2:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 4))
        xs, med = [r[vary] for r in rs], [r["median_s"] for r in rs]
        spread = [[m - r["min_s"] for m, r in zip(med, rs)], [r["max_s"] - m for m, r in zip(med, rs)]]
        ax.errorbar(xs, med, yerr=spread, marker="o", capsize=3, label="step time (median, min-max)")
        ax.set_xlabel("K (top-K per retriever)" if vary == "top_k" else "m (proposals, log scale)")
        if vary == "proposals":
            ax.set_xscale("log")
        ax.set_ylabel("seconds per step")
        ax2 = ax.twinx()
        ax2.plot(xs, [r["mean_distinct_proposals"] for r in rs], "s--", color="tab:orange", label="distinct proposals")
        ax2.plot(xs, [r["mean_distinct_states"] for r in rs], "^--", color="tab:green", label="distinct states")
        ax2.set_ylabel("count per question")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left")
        ax.set_title(f"JSA step vs {f'K (m={value})' if vary == 'top_k' else f'm (K={value})'}\n{title_tail}",
                     fontsize=9)
        save(fig, name)

    mem_k = sweep(memory, "top_k", "proposals", args.m_for_k)
    mem_m = sweep(memory, "proposals", "top_k", args.k_for_m)
    if mem_k or mem_m:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, rs, vary, label in ((axes[0], mem_k, "top_k", f"K (m={args.m_for_k})"),
                                    (axes[1], mem_m, "proposals", f"m (K={args.k_for_m})")):
            rs = [r for r in rs if "peak_mib" in r]
            if rs:
                xs = [r[vary] for r in rs]
                ax.plot(xs, [r["peak_mib"] for r in rs], "o-", label="process peak (ru_maxrss)")
                if all(r.get("step_peak_mib") is not None for r in rs):
                    ax.plot(xs, [r["step_peak_mib"] for r in rs], "^-", label="peak during the steps")
                ax.plot(xs, [r["rss_before_steps_mib"] for r in rs], "s--", label="RSS before the steps")
            ax.set_xlabel(label)
            if vary == "proposals":
                ax.set_xscale("log")
            ax.set_ylabel("MiB")
            ax.legend(fontsize=8)
        fig.suptitle(f"JSA step peak memory, {title_tail}", fontsize=9)
        save(fig, "jsa_memory.png")

    search = result.get("index_search", {})
    if search:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for kind, label in (("flat", "Flat (exact)"), ("hnsw32", "HNSW32, efSearch 64")):
            rs = sorted((r for r in search.values() if r["index"] == kind), key=lambda r: r["corpus_size"])
            ax.loglog([r["corpus_size"] for r in rs], [r["median_ms_per_query"] for r in rs], "o-", label=label)
        ax.set_xlabel("corpus size (vectors, d=384)")
        ax.set_ylabel("ms per query (batch of 1,000, k=10)")
        ax.set_title("FAISS search time vs corpus size (random unit vectors)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "search_vs_corpus.png")
    return written


# ---- the benchmark -----------------------------------------------------------------------------------
def measure(args) -> dict:
    common.quiet_libraries()
    common.apply_threads(args.threads)
    import numpy as np

    began = time.perf_counter()
    points = jsa_points(args)
    host = common.machine()
    names = common.models(args)
    result = {"benchmark": NAME, "size": common.size(args), "quick": args.quick, "machine": host, "shape": {
        "batch_size": 1, "points": [list(p) for p in points], "passages": args.passages,
        "max_passage_tokens": args.max_passage_tokens, "questions": args.questions, "timed_rounds": args.repeats,
        "precision": host["precision"]["precision"], "generator": names["generator"] + " + LoRA",
        "retriever": names["retriever"], "estimator": "jsa (the library's, distinct proposals / states scored once)",
        "index_sizes": args.sizes, "index_queries": args.queries}}
    phases = result["phases_s"] = {}
    if not args.skip_jsa:
        t = time.perf_counter()
        runner = StepRunner(args)
        result["jsa_time"] = jsa_timing(args, runner, points)
        phases["jsa_time_s"] = time.perf_counter() - t
        vectors = runner.vectors()  # the memory subprocesses read the index's vectors instead of encoding again
        del runner
        gc.collect()
        if not args.skip_memory:
            with tempfile.TemporaryDirectory() as tmp:
                np.save(os.path.join(tmp, "vectors.npy"), vectors)
                t = time.perf_counter()
                result["jsa_memory"] = jsa_memory(args, points, os.path.join(tmp, "vectors.npy"))
                phases["jsa_memory_s"] = time.perf_counter() - t
    if not args.skip_index:
        t = time.perf_counter()
        result["index_search"] = index_search(args)
        phases["index_s"] = time.perf_counter() - t

    # Headline figures: time and memory relative to the reference point (K=10, m=50).
    jt, jm = result.get("jsa_time", {}), result.get("jsa_memory", {})
    ref = f"K{args.k_for_m}_m{args.m_for_k}"
    if ref in jt:
        result["time_relative_to_K10_m50"] = {k: v["median_s"] / jt[ref]["median_s"] for k, v in jt.items()}
    if jm:
        result["peak_mib"] = {k: v.get("peak_mib") for k, v in jm.items()}
        result["step_delta_mib"] = {k: v.get("step_delta_mib") for k, v in jm.items()}
    for key, rec in jt.items():
        result[f"jsa_{key}_median_s"] = rec["median_s"]
    for key, rec in result.get("index_search", {}).items():
        result[f"search_{key}_ms_per_query"] = rec["median_ms_per_query"]
    result["plots"] = plots(result, args, Path(args.plots)) if args.plots else []
    result["wall_s"] = time.perf_counter() - began
    return result


def report(results: dict) -> str:
    f, d = common.f, results
    lines = ["## Scaling", "", "`python benchmarks/scaling.py --plots docs/benchmarks`. JSA step (B=1, "
             f"{d['shape']['passages']} passages, {d['shape']['max_passage_tokens']}-token passages) against K and "
             "m; peak memory measured in a separate process per point.", "",
             "| K | m | median s / step | peak RSS MiB | added by the steps MiB |", "|---|---|---|---|---|"]
    for key, v in d.get("jsa_time", {}).items():
        lines.append(f"| {v['top_k']} | {v['proposals']} | {f(v['median_s'])} | {f(d['peak_mib'].get(key), 0)} | "
                     f"{f(d['step_delta_mib'].get(key), 0)} |" if key in d.get("peak_mib", {}) else
                     f"| {v['top_k']} | {v['proposals']} | {f(v['median_s'])} | - | - |")
    lines += ["", "| index | vectors | build s | ms per query (batch of 1,000) | recall@10 against flat |",
              "|---|---|---|---|---|"]
    for v in d.get("index_search", {}).values():
        per_query = v.get("median_ms_per_query", 1000 * v["median_s_per_batch"] / d["shape"]["index_queries"])
        recall = v.get("recall_at_10_vs_flat", 1.0 if v["index"] == "flat" else None)
        lines.append(f"| {v['index']} | {v['corpus_size']:,} | {f(v.get('build_s'))} | {f(per_query, 4)} | "
                     f"{f(recall, 3)} |")
    lines += ["", "Random unit vectors are HNSW's hard case (high-dimensional points with no neighbourhood "
              "structure), so the recall column is a lower bound for real embeddings, which were not measured "
              "here; raise `efSearch` (or use Flat up to ~100k passages) where recall matters. Times at "
              "efSearch 64.", ""]
    # Plots are saved relative to the repository (docs/benchmarks/...); the page lives in docs/.
    docs = common.REPO / "docs"
    lines += [f"![{Path(p).stem}]({os.path.relpath(common.REPO / p, docs)})" for p in d.get("plots", [])]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.point:
        return run_point(args)
    results = common.write_results(measure(args), args, NAME)
    print(report(results))


if __name__ == "__main__":
    main()
