"""How the JSA step and index search scale: step time and peak memory against K and m; search time
against corpus size.

    python benchmarks/scaling.py                    # the real measurement
    python benchmarks/scaling.py --quick            # fewer points and repeats, shorter passages
    python benchmarks/scaling.py --plots DIR --out scaling.json

1. JSA training step (textbook JSA, B=1 question, SmolLM2-135M-Instruct + LoRA, MiniLM, autocast as resolved
   from ``train.precision: auto``,
   forward + backward + AdamW step + zero_grad) at K in {2, 5, 10, 20} with m=50, and at m in
   {1, 10, 50, 100} with K=10, over a corpus of SQuAD paragraphs holding the questions' gold paragraphs.
   Time: one process, weights restored before every step, all points interleaved round by round
   (same question for every point in a round, same torch seed); medians over rounds.
   Memory: each point runs in its own subprocess (``--point K M``), since ru_maxrss is monotonic per
   process. The subprocess reads ``getrusage(RUSAGE_SELF).ru_maxrss`` after setup (models, index, AdamW
   state), resets its peak RSS to the current RSS (``/proc/self/clear_refs``, Linux >= 4.0), runs its
   steps and reads ru_maxrss again: ``peak_mib`` is the process peak, ``step_peak_mib`` the peak during
   the steps and ``step_delta_mib`` what a step adds to the loaded process. It is started through
   ``/bin/sh`` (which forks it): a child exec'd directly from this big process would inherit this
   process's peak in its own ru_maxrss.
2. Index search: random unit vectors, d=384, corpus sizes {1k, 10k, 100k, 1M} (quick: up to 100k),
   1,000 random unit queries, k=10, through ``jsarag.index.PassageIndex``: Flat (exact inner product)
   and HNSW32 with efSearch=64. All (size, index) combinations interleaved over repeats. HNSW
   recall@10 against Flat is reported (random vectors are HNSW's hard case: real embeddings, which
   cluster, reach higher recall at the same efSearch).

PNG plots (matplotlib, Agg) go to ``--plots`` (default docs/benchmarks/). The last stdout line is one
JSON object with every figure.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from step_cost import (
    ScoreCounter,
    build_rag,
    emit,
    machine,
    median,
    peak_rss_mib,
    quiet_libraries,
    say,
    squad_setup,
)

REPO = Path(__file__).resolve().parent.parent


# ---- JSA step ----------------------------------------------------------------------------------------
class StepRunner:
    """One model, one optimiser, initial weights restored before every step."""

    def __init__(self, args, vectors=None):
        import torch

        from jsarag.data import Batch
        from jsarag.train.optim import build_optimizer, component_parameters

        self.torch = torch
        corpus, examples = squad_setup(args.questions, args.passages, args.seed)
        self.corpus = corpus
        self.batches = [Batch.from_examples([e]) for e in examples]
        self.model, self.cfg = build_rag(
            corpus, max_passage_tokens=args.max_passage_tokens, seed=args.seed, vectors=vectors
        )
        self.model.train()
        self.model.set_trainable({"prior", "posterior", "generator"})  # JSA trains these (passage frozen)
        self.counter = ScoreCounter(self.model.generator)
        self.initial = [
            (p, p.detach().clone()) for ps in component_parameters(self.model).values() for p in ps
        ]
        self.opt = build_optimizer(self.model, self.cfg.optim)
        for group in self.opt.param_groups:  # allocate AdamW state outside the timed steps
            for p in group["params"]:
                p.grad = torch.zeros_like(p)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.restore()

    def vectors(self):
        import numpy as np

        return self.model.retriever.index.reconstruct(np.arange(len(self.corpus)))

    def restore(self) -> None:
        with self.torch.no_grad():
            for p, p0 in self.initial:
                p.copy_(p0)

    def step(self, top_k: int, proposals: int, batch_idx: int) -> tuple[float, dict]:
        torch = self.torch
        from jsarag.estimators import JSA, JSAConfig
        from jsarag.train import distributed as dist

        est = JSA(JSAConfig(num_proposals=proposals), top_k=top_k)
        self.restore()
        self.opt.zero_grad(set_to_none=True)
        gc.collect()
        torch.manual_seed(1000 + batch_idx)
        self.counter.reset()
        t = time.perf_counter()
        with dist.autocast(torch.device("cpu"), "auto"):
            loss, metrics = self.model(self.batches[batch_idx % len(self.batches)], est)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - t
        return elapsed, {**metrics, **self.counter.counts}


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
    """Reset this process's peak RSS to its current RSS (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``);
    ru_maxrss then reports the peak since the reset."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_point(args) -> None:
    """Subprocess mode: one (K, m) point. ru_maxrss after setup (models, index, optimiser state), then
    the peak RSS is reset to the current RSS and ru_maxrss read again after the steps."""
    import numpy as np

    quiet_libraries()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    K, M = args.point
    vectors = np.load(args.vectors) if args.vectors else None
    runner = StepRunner(args, vectors)
    del vectors
    gc.collect()
    setup_peak = peak_rss_mib()
    rss_before = _status_mib("VmRSS")
    reset = _reset_peak_rss()
    secs = []
    for i in range(args.point_steps):
        s, _ = runner.step(K, M, i)
        secs.append(s)
    end = peak_rss_mib()
    rec = {
        "top_k": K,
        "proposals": M,
        "setup_peak_mib": round(setup_peak, 1),
        "rss_before_steps_mib": round(rss_before, 1) if rss_before is not None else None,
        "peak_mib": round(max(setup_peak, end), 1),
        "peak_reset": reset,
        "steps_s": [round(s, 3) for s in secs],
    }
    if reset and rss_before is not None:
        rec["step_peak_mib"] = round(end, 1)  # peak RSS during the steps
        rec["step_delta_mib"] = round(end - rss_before, 1)  # what a step adds on top of the loaded model
    else:
        rec["step_peak_mib"] = None
        rec["step_delta_mib"] = round(max(0.0, end - setup_peak), 1)  # lower bound
    print(json.dumps(rec), flush=True)


def jsa_points(args) -> list[tuple[int, int]]:
    points = [(k, args.m_for_k) for k in args.ks] + [(args.k_for_m, m) for m in args.ms]
    return list(dict.fromkeys(points))  # (10, 50) appears in both sweeps: run it once


def jsa_timing(args, runner: StepRunner, points) -> dict:
    say(f"JSA step timing: points (K, m) = {points}, {args.repeats} timed rounds after 1 warm-up step")
    key_point = (args.k_for_m, args.m_for_k) if (args.k_for_m, args.m_for_k) in points else points[0]
    secs, _ = runner.step(*key_point, 0)
    say(f"  warm-up K={key_point[0]} m={key_point[1]}: {secs:.2f}s")
    times = {p: [] for p in points}
    recs = {p: [] for p in points}
    for r in range(args.repeats):
        b = r % args.questions
        line = []
        for p in points:
            s, metrics = runner.step(*p, b)
            times[p].append(s)
            recs[p].append(metrics)
            line.append(f"K{p[0]}/m{p[1]} {s:.2f}s")
        say(f"  round {r} (question {b}): " + " | ".join(line))
    out = {}
    for p in points:
        keys = (
            "distinct_proposals",
            "distinct_states",
            "candidates",
            "accept_rate",
            "nograd_seqs",
            "grad_seqs",
        )
        out[f"K{p[0]}_m{p[1]}"] = {
            "top_k": p[0],
            "proposals": p[1],
            "median_s": median(times[p]),
            "min_s": min(times[p]),
            "max_s": max(times[p]),
            "times_s": [round(t, 4) for t in times[p]],
            **{f"mean_{k}": statistics.fmean(m[k] for m in recs[p]) for k in keys},
        }
    return out


def jsa_memory(args, points, vectors_path: str) -> dict:
    say(f"JSA peak memory: one subprocess per point, {args.point_steps} step(s) each")
    out = {}
    for K, M in points:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--point",
            str(K),
            str(M),
            "--vectors",
            vectors_path,
            "--passages",
            str(args.passages),
            "--questions",
            str(args.questions),
            "--max-passage-tokens",
            str(args.max_passage_tokens),
            "--seed",
            str(args.seed),
            "--point-steps",
            str(args.point_steps),
        ]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        # Through a shell that forks python (not exec): a child exec'd straight from this process would
        # inherit this process's peak RSS in its ru_maxrss (Linux keeps the pre-exec maximum).
        shell = ["/bin/sh", "-c", shlex.join(cmd) + "; exit $?"]
        t = time.perf_counter()
        proc = subprocess.run(shell, capture_output=True, text=True, cwd=str(REPO), check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            say(f"  K={K} m={M}: subprocess failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
            out[f"K{K}_m{M}"] = {"top_k": K, "proposals": M, "error": proc.returncode}
            continue
        rec = json.loads(lines[-1])
        out[f"K{K}_m{M}"] = rec
        step = f"step peak {rec['step_peak_mib']:.0f} MiB, " if rec.get("step_peak_mib") is not None else ""
        say(
            f"  K={K} m={M}: setup peak {rec['setup_peak_mib']:.0f} MiB, RSS before steps "
            f"{rec['rss_before_steps_mib']:.0f} MiB, {step}peak {rec['peak_mib']:.0f} MiB "
            f"(step adds {rec['step_delta_mib']:.0f} MiB), subprocess {time.perf_counter() - t:.0f}s"
        )
    return out


# ---- index search ------------------------------------------------------------------------------------
def index_search(args) -> dict:
    import faiss
    import numpy as np

    from jsarag.index import PassageIndex

    sizes = [n for n in args.sizes if n <= args.max_corpus]
    d, nq, k = 384, args.queries, 10
    rng = np.random.default_rng(args.seed)

    def unit(n: int) -> np.ndarray:
        x = rng.standard_normal((n, d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    queries = unit(nq)
    say(
        f"index search: d={d}, {nq} queries, k={k}, sizes {sizes}; Flat and HNSW32 (efSearch=64); "
        f"faiss threads {faiss.omp_get_max_threads()}"
    )
    indexes, builds = {}, {}
    for n in sizes:
        vectors = unit(n)
        for kind, factory, params in (("flat", "Flat", ""), ("hnsw32", "HNSW32", "efSearch=64")):
            t = time.perf_counter()
            indexes[(n, kind)] = PassageIndex.from_vectors(
                vectors, factory=factory, search_params=params, corpus_hash=f"random-{n}", encoder={}
            )
            builds[(n, kind)] = time.perf_counter() - t
            say(f"  built {kind:<6} n={n:>8}: {builds[(n, kind)]:.1f}s")
        del vectors
    combos = list(indexes)
    for c in combos:  # warm-up
        indexes[c].search(queries, k)
    times = {c: [] for c in combos}
    for _ in range(args.search_repeats):
        for c in combos:
            t = time.perf_counter()
            indexes[c].search(queries, k)
            times[c].append(time.perf_counter() - t)
    out = {}
    for n in sizes:
        _, exact = indexes[(n, "flat")].search(queries, k)
        _, approx = indexes[(n, "hnsw32")].search(queries, k)
        recall = float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx.tolist(), exact.tolist())]))
        for kind in ("flat", "hnsw32"):
            med = median(times[(n, kind)])
            out[f"{kind}_{n}"] = {
                "index": kind,
                "corpus_size": n,
                "median_s_per_batch": med,
                "median_ms_per_query": med * 1000 / nq,
                "queries_per_s": nq / med,
                "build_s": builds[(n, kind)],
                "times_s": [round(t, 5) for t in times[(n, kind)]],
                **({"recall_at_10_vs_flat": recall} if kind == "hnsw32" else {}),
            }
            say(
                f"  {kind:<6} n={n:>8}: {med * 1000 / nq:8.4f} ms/query, {nq / med:9.0f} queries/s"
                + (f", recall@10 vs flat {recall:.3f}" if kind == "hnsw32" else "")
            )
    return out


# ---- plots -------------------------------------------------------------------------------------------
def plots(result: dict, args, folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    title_tail = (f"B=1, SmolLM2-135M+LoRA, {args.max_passage_tokens}-token passages, "
                  f"{result['shape'].get('precision', 'bf16')}, CPU")
    timing, memory = result.get("jsa_time", {}), result.get("jsa_memory", {})

    def sweep(records: dict, vary: str, fixed: str, value: int):
        rs = sorted(
            (r for r in records.values() if r.get(fixed) == value and vary in r), key=lambda r: r[vary]
        )
        return rs

    for vary, fixed, value, name in (
        ("top_k", "proposals", args.m_for_k, "jsa_time_vs_K.png"),
        ("proposals", "top_k", args.k_for_m, "jsa_time_vs_m.png"),
    ):
        rs = sweep(timing, vary, fixed, value)
        if len(rs) < 2:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 4))
        xs = [r[vary] for r in rs]
        med = [r["median_s"] for r in rs]
        ax.errorbar(
            xs,
            med,
            yerr=[[m - r["min_s"] for m, r in zip(med, rs)], [r["max_s"] - m for m, r in zip(med, rs)]],
            marker="o",
            capsize=3,
            label="step time (median, min-max)",
        )
        ax.set_xlabel("K (top-K per retriever)" if vary == "top_k" else "m (proposals, log scale)")
        if vary == "proposals":
            ax.set_xscale("log")
        ax.set_ylabel("seconds per step")
        ax2 = ax.twinx()
        ax2.plot(
            xs,
            [r["mean_distinct_proposals"] for r in rs],
            "s--",
            color="tab:orange",
            label="distinct proposals",
        )
        ax2.plot(
            xs, [r["mean_distinct_states"] for r in rs], "^--", color="tab:green", label="distinct states"
        )
        ax2.set_ylabel("count per question")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left")
        ax.set_title(
            f"JSA step vs {f'K (m={value})' if vary == 'top_k' else f'm (K={value})'}\n{title_tail}",
            fontsize=9,
        )
        fig.tight_layout()
        fig.savefig(folder / name, dpi=120)
        plt.close(fig)
        written.append(str(folder / name))

    mem_k = sweep(memory, "top_k", "proposals", args.m_for_k)
    mem_m = sweep(memory, "proposals", "top_k", args.k_for_m)
    if mem_k or mem_m:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, rs, vary, label in (
            (axes[0], mem_k, "top_k", f"K (m={args.m_for_k})"),
            (axes[1], mem_m, "proposals", f"m (K={args.k_for_m})"),
        ):
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
        fig.tight_layout()
        fig.savefig(folder / "jsa_memory.png", dpi=120)
        plt.close(fig)
        written.append(str(folder / "jsa_memory.png"))

    search = result.get("index_search", {})
    if search:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for kind, label in (("flat", "Flat (exact)"), ("hnsw32", "HNSW32, efSearch 64")):
            rs = sorted((r for r in search.values() if r["index"] == kind), key=lambda r: r["corpus_size"])
            ax.loglog(
                [r["corpus_size"] for r in rs], [r["median_ms_per_query"] for r in rs], "o-", label=label
            )
        ax.set_xlabel("corpus size (vectors, d=384)")
        ax.set_ylabel("ms per query (batch of 1,000, k=10)")
        ax.set_title("FAISS search time vs corpus size (random unit vectors)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / "search_vs_corpus.png", dpi=120)
        plt.close(fig)
        written.append(str(folder / "search_vs_corpus.png"))
    return written


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="K {2, 10}, m {1, 50}, 96-token passages, 300 passages, 2 rounds; index up to 100k",
    )
    ap.add_argument(
        "--ks", type=int, nargs="+", help="K values at m=--m-for-k (default 2 5 10 20; quick 2 10)"
    )
    ap.add_argument(
        "--ms", type=int, nargs="+", help="m values at K=--k-for-m (default 1 10 50 100; quick 1 50)"
    )
    ap.add_argument("--m-for-k", type=int, default=50)
    ap.add_argument("--k-for-m", type=int, default=10)
    ap.add_argument("--passages", type=int, help="corpus size for the JSA step (default 1000; quick 300)")
    ap.add_argument(
        "--questions", type=int, help="distinct questions cycled over rounds (default 3; quick 2)"
    )
    ap.add_argument("--max-passage-tokens", type=int, help="default 192; quick 96")
    ap.add_argument("--repeats", type=int, help="timed rounds over all points (default 4; quick 2)")
    ap.add_argument("--point-steps", type=int, default=2, help="steps per memory subprocess")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000])
    ap.add_argument("--max-corpus", type=int, help="largest index size (default 1000000; quick 100000)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--search-repeats", type=int, help="default 7; quick 3")
    ap.add_argument("--skip-jsa", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-index", action="store_true")
    ap.add_argument(
        "--plots", default=str(REPO / "docs" / "benchmarks"), help="folder for PNG plots ('' for none)"
    )
    ap.add_argument("--threads", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    ap.add_argument("--point", type=int, nargs=2, metavar=("K", "M"), help=argparse.SUPPRESS)
    ap.add_argument("--vectors", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    q = args.quick
    args.ks = args.ks or ([2, 10] if q else [2, 5, 10, 20])
    args.ms = args.ms or ([1, 50] if q else [1, 10, 50, 100])
    args.passages = args.passages or (300 if q else 1000)
    args.questions = args.questions or (2 if q else 3)
    args.max_passage_tokens = args.max_passage_tokens or (96 if q else 192)
    args.repeats = args.repeats or (2 if q else 4)
    args.max_corpus = args.max_corpus or (100_000 if q else 1_000_000)
    args.search_repeats = args.search_repeats or (3 if q else 7)
    if args.point:
        return run_point(args)

    quiet_libraries()
    import numpy as np
    import torch

    if args.threads:
        import faiss

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    began = time.perf_counter()
    points = jsa_points(args)
    host = machine()
    result = {
        "benchmark": "scaling",
        "quick": q,
        "machine": host,
        "shape": {
            "batch_size": 1,
            "points": [list(p) for p in points],
            "passages": args.passages,
            "max_passage_tokens": args.max_passage_tokens,
            "questions": args.questions,
            "timed_rounds": args.repeats,
            "precision": host["precision_auto"],  # what the steps' dist.autocast(cpu, "auto") resolves to
            "generator": "builtin:smollm2-135m-instruct + LoRA",
            "retriever": "builtin:minilm",
            "estimator": "jsa (textbook: distinct proposals / states scored once)",
            "index_sizes": [n for n in args.sizes if n <= args.max_corpus],
            "index_queries": args.queries,
        },
    }
    phases = {}
    if not args.skip_jsa:
        t = time.perf_counter()
        runner = StepRunner(args)
        say(
            f"setup {time.perf_counter() - t:.1f}s: {len(runner.corpus)} passages, {args.questions} questions"
        )
        t = time.perf_counter()
        result["jsa_time"] = jsa_timing(args, runner, points)
        phases["jsa_time_s"] = time.perf_counter() - t
        if not args.skip_memory:
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "vectors.npy")
                np.save(path, runner.vectors())
                del runner
                gc.collect()
                t = time.perf_counter()
                result["jsa_memory"] = jsa_memory(args, points, path)
                phases["jsa_memory_s"] = time.perf_counter() - t
        else:
            del runner
        gc.collect()
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
    search = result.get("index_search", {})
    for key, rec in search.items():
        result[f"search_{key}_ms_per_query"] = rec["median_ms_per_query"]
    result["plots"] = plots(result, args, Path(args.plots)) if args.plots else []
    result["phases_s"] = phases
    result["wall_s"] = time.perf_counter() - began

    if jt:
        say("")
        say(
            f"{'K':>4}{'m':>5}{'median s':>10}{'distinct props':>16}{'distinct states':>17}{'peak MiB':>10}"
            f"{'step adds MiB':>15}"
        )
        nan = float("nan")
        for key, rec in jt.items():
            mem = jm.get(key, {})
            say(
                f"{rec['top_k']:>4}{rec['proposals']:>5}{rec['median_s']:>10.3f}"
                f"{rec['mean_distinct_proposals']:>16.2f}{rec['mean_distinct_states']:>17.2f}"
                f"{mem.get('peak_mib') or nan:>10.0f}{mem.get('step_delta_mib') or nan:>15.0f}"
            )
    for path in result["plots"]:
        say(f"plot: {path}")
    say(f"wall {result['wall_s']:.0f}s")
    emit(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
