"""Evaluation throughput: questions per second of ``jsarag.eval.evaluate.evaluate`` by decoding strategy.

    python benchmarks/eval_throughput.py             # ~40 SQuAD dev questions, full 2,067-paragraph corpus
    python benchmarks/eval_throughput.py --quick     # 10 questions, 300 paragraphs
    python benchmarks/eval_throughput.py --out eval_throughput.json

Variants (greedy, max_new_tokens 24, eval batch size 8, under ``train.precision: auto`` as ``evaluate`` resolves it):
- ``per_passage`` with K=5: one generation per (question, passage), the answer with the best
  length-normalised confidence + log p_r is kept (5 generations per question);
- ``concat`` with K=5: the 5 passages in one prompt, one generation per question;
- the same two with K=1 (one generation of a one-passage prompt per question either way).
The model is SmolLM2-135M-Instruct with a LoRA adapter (what a trained checkpoint evaluates; peft keeps
the adapter unmerged), MiniLM prior retriever, Flat index. Every variant answers the same questions;
variants are interleaved round by round after a warm-up (one batch per variant) and reported as medians.
Headline: ``concat_over_per_passage_qps`` (K=5) = qps(concat) / qps(per_passage), the median of
per-round time ratios per_passage / concat. EM/F1 of each variant are printed for orientation.

The last stdout line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from step_cost import build_rag, emit, machine, median, peak_rss_mib, quiet_libraries, say, squad_setup


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="10 questions, 300 passages, 2 rounds")
    ap.add_argument("--questions", type=int, help="SQuAD dev questions (default 40; quick 10)")
    ap.add_argument("--passages", type=int, help="corpus size (default: all 2,067 paragraphs; quick 300)")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--eval-batch-size", type=int, default=8)
    ap.add_argument("--max-passage-tokens", type=int, default=192)
    ap.add_argument("--no-lora", action="store_true", help="evaluate the base SmolLM2 without an adapter")
    ap.add_argument("--no-k1", action="store_true", help="skip the K=1 variants")
    ap.add_argument("--repeats", type=int, help="timed rounds (default 3; quick 2)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    q = args.quick
    n_questions = args.questions or (10 if q else 40)
    n_passages = args.passages or (300 if q else 10**9)  # capped at the corpus size
    repeats = args.repeats or (2 if q else 3)

    quiet_libraries()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from jsarag.config import EvalConfig
    from jsarag.eval.evaluate import evaluate
    from jsarag.train import distributed as dist

    began = time.perf_counter()
    result = {"benchmark": "eval_throughput", "quick": q, "machine": machine()}
    corpus, questions = squad_setup(n_questions, n_passages, args.seed, split="dev")
    t = time.perf_counter()
    model, cfg = build_rag(
        corpus, max_passage_tokens=args.max_passage_tokens, lora=not args.no_lora, seed=args.seed
    )
    setup_s = time.perf_counter() - t
    model.eval()
    device = torch.device("cpu")
    precision = dist.resolve_precision("auto", device)

    variants = {
        f"per_passage_K{args.top_k}": ("per_passage", args.top_k),
        f"concat_K{args.top_k}": ("concat", args.top_k),
    }
    if not args.no_k1 and args.top_k != 1:
        variants.update({"per_passage_K1": ("per_passage", 1), "concat_K1": ("concat", 1)})

    def cfg_for(decode: str, k: int) -> EvalConfig:
        return EvalConfig(
            top_k=k,
            decode=decode,
            num_beams=1,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.eval_batch_size,
            retrieval_ks=[1, 5, 10],
        )

    result["shape"] = {
        "questions": len(questions),
        "passages": len(corpus),
        "top_k": args.top_k,
        "max_new_tokens": args.max_new_tokens,
        "eval_batch_size": args.eval_batch_size,
        "max_passage_tokens": args.max_passage_tokens,
        "num_beams": 1,
        "precision": precision,
        "generator": cfg.generator.model + ("" if args.no_lora else " + LoRA (unmerged)"),
        "retriever": cfg.retriever.model,
        "timed_rounds": repeats,
        "search_depth": max(args.top_k, 10),
    }
    say(
        f"eval_throughput: {len(questions)} dev questions, {len(corpus)} passages, K={args.top_k}, "
        f"greedy, max_new_tokens={args.max_new_tokens} (setup {setup_s:.1f}s)"
    )

    warm = questions[: min(len(questions), args.eval_batch_size)]
    for name, (decode, k) in variants.items():
        t = time.perf_counter()
        evaluate(model, warm, cfg_for(decode, k), device=device, precision=precision, progress=False)
        say(f"  warm-up {name}: {time.perf_counter() - t:.1f}s ({len(warm)} questions)")

    times = {v: [] for v in variants}
    summaries = {}
    for r in range(repeats):
        line = []
        for name, (decode, k) in variants.items():
            gc.collect()
            t = time.perf_counter()
            res = evaluate(
                model, questions, cfg_for(decode, k), device=device, precision=precision, progress=False
            )
            times[name].append(time.perf_counter() - t)
            summaries[name] = res.summary
            line.append(f"{name} {times[name][-1]:.1f}s")
        say(f"  round {r}: " + " | ".join(line))

    n = len(questions)
    per = {}
    for name in variants:
        med = median(times[name])
        per[name] = {
            "decode": variants[name][0],
            "top_k": variants[name][1],
            "median_s": med,
            "questions_per_s": n / med,
            "times_s": [round(x, 3) for x in times[name]],
            "em": summaries[name].get("em"),
            "f1": summaries[name].get("f1"),
            "recall@5": summaries[name].get("recall@5"),
        }
        result[f"{name}_qps"] = n / med
    result["variants"] = per

    def qps_ratio(a: str, b: str) -> float | None:
        """qps(a) / qps(b) = median over rounds of time(b) / time(a)."""
        if a not in times or b not in times:
            return None
        return median([tb / ta for ta, tb in zip(times[a], times[b])])

    K = args.top_k
    result["concat_over_per_passage_qps"] = qps_ratio(f"concat_K{K}", f"per_passage_K{K}")
    result["concat_over_per_passage_qps_K1"] = qps_ratio("concat_K1", "per_passage_K1")
    result["K1_over_K_per_passage_qps"] = qps_ratio("per_passage_K1", f"per_passage_K{K}")
    result["K1_over_K_concat_qps"] = qps_ratio("concat_K1", f"concat_K{K}")
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    result["setup_s"] = setup_s
    result["wall_s"] = time.perf_counter() - began

    say("")
    say(f"{'variant':<18}{'median s':>10}{'questions/s':>13}{'EM':>7}{'F1':>7}")
    for name, rec in per.items():
        say(
            f"{name:<18}{rec['median_s']:>10.2f}{rec['questions_per_s']:>13.3f}"
            f"{rec['em'] or 0:>7.1f}{rec['f1'] or 0:>7.1f}"
        )
    for key in (
        "concat_over_per_passage_qps",
        "concat_over_per_passage_qps_K1",
        "K1_over_K_per_passage_qps",
        "K1_over_K_concat_qps",
    ):
        if result[key] is not None:
            say(f"{key} = {result[key]:.3f} (median of per-round ratios)")
    say(f"wall {result['wall_s']:.0f}s")
    emit(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
