"""Evaluation throughput: questions per second of ``jsarag.eval.evaluate.evaluate`` by decoding strategy.

    python benchmarks/eval_throughput.py             # 40 SQuAD dev questions, full 2,067-paragraph corpus
    python benchmarks/eval_throughput.py --quick     # 10 questions, 300 paragraphs

Variants (greedy, max_new_tokens 24, eval batch size 8, under ``train.precision: auto`` as ``evaluate`` resolves it):
- ``per_passage`` with K=5: one generation per (question, passage), the answer with the best
  length-normalised confidence + log p_r is kept (5 generations per question);
- ``concat`` with K=5: the 5 passages in one prompt, one generation per question;
- the same two with K=1 (one generation of a one-passage prompt per question either way).
The model is SmolLM2-135M-Instruct with a LoRA adapter (what a trained checkpoint evaluates; peft keeps
the adapter unmerged), MiniLM prior retriever, Flat index. Every variant answers the same questions;
variants are interleaved round by round after a warm-up (one batch per variant) and reported as medians.
Headline: ``concat_over_per_passage_qps`` (K=5) = qps(concat) / qps(per_passage), the median of
per-round time ratios per_passage / concat. EM/F1 of each variant are recorded for orientation.
"""

from __future__ import annotations

import gc
import time

import _common as common

NAME = "eval_throughput"


def parse_args(argv=None):
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--questions", type=int, help="SQuAD dev questions (default 40; quick 10; smoke 4)")
    p.add_argument("--passages", type=int, help="corpus size (default: all 2,067 paragraphs; quick 300; smoke 40)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, help="default 24; smoke 4")
    p.add_argument("--eval-batch-size", type=int, default=8)
    p.add_argument("--max-passage-tokens", type=int, help="default 192; smoke 32")
    p.add_argument("--no-lora", action="store_true", help="evaluate the base generator without an adapter")
    p.add_argument("--no-k1", action="store_true", help="skip the K=1 variants")
    p.add_argument("--repeats", type=int, help="timed rounds (default 3; quick 2; smoke 1)")
    return p.parse_args(argv)


def measure(args) -> dict:
    common.quiet_libraries()
    common.apply_threads(args.threads)
    import torch

    from jsarag.config import EvalConfig
    from jsarag.eval.evaluate import evaluate
    from jsarag.train import distributed as dist

    began = time.perf_counter()
    pick = common.pick
    repeats, K = pick(args, "repeats", 3, 2, 1), args.top_k
    max_new_tokens = pick(args, "max_new_tokens", 24, 24, 4)
    max_passage_tokens = pick(args, "max_passage_tokens", 192, 192, 32)
    result = {"benchmark": NAME, "size": common.size(args), "quick": args.quick, "machine": common.machine()}
    corpus, questions = common.squad_setup(common.data_dir(args), pick(args, "questions", 40, 10, 4),
                                           pick(args, "passages", 10**9, 300, 40), args.seed, split="dev")
    model, cfg = common.build_rag(corpus, max_passage_tokens=max_passage_tokens, lora=not args.no_lora,
                                  seed=args.seed, **common.models(args))
    model.eval()
    device = torch.device("cpu")
    precision = dist.resolve_precision("auto", device)
    variants = {f"per_passage_K{K}": ("per_passage", K), f"concat_K{K}": ("concat", K)}
    if not args.no_k1 and K != 1:
        variants.update({"per_passage_K1": ("per_passage", 1), "concat_K1": ("concat", 1)})

    def run(name: str, examples) -> object:
        decode, k = variants[name]
        cfg = EvalConfig(top_k=k, decode=decode, num_beams=1, max_new_tokens=max_new_tokens,
                         batch_size=args.eval_batch_size, retrieval_ks=[1, 5, 10])
        return evaluate(model, examples, cfg, device=device, precision=precision, progress=False)

    result["shape"] = {"questions": len(questions), "passages": len(corpus), "top_k": K,
                       "max_new_tokens": max_new_tokens, "eval_batch_size": args.eval_batch_size,
                       "max_passage_tokens": max_passage_tokens, "num_beams": 1, "precision": precision,
                       "generator": cfg.generator.model + ("" if args.no_lora else " + LoRA (unmerged)"),
                       "retriever": cfg.retriever.model, "timed_rounds": repeats, "search_depth": max(K, 10)}
    common.say(f"eval_throughput: {len(questions)} dev questions, {len(corpus)} passages, K={K}, greedy, "
               f"max_new_tokens={max_new_tokens} ({time.perf_counter() - began:.1f}s setup)")
    for name in variants:  # warm-up: one batch per variant
        run(name, questions[:args.eval_batch_size])
    times, summaries = {v: [] for v in variants}, {}
    for r in range(repeats):
        for name in variants:
            gc.collect()
            t = time.perf_counter()
            summaries[name] = run(name, questions).summary
            times[name].append(time.perf_counter() - t)
        common.say(f"  round {r}: " + " | ".join(f"{name} {times[name][-1]:.1f}s" for name in variants))

    n = len(questions)
    result["variants"] = {name: {
        "decode": variants[name][0], "top_k": variants[name][1], "median_s": common.median(times[name]),
        "questions_per_s": n / common.median(times[name]), "times_s": [round(x, 3) for x in times[name]],
        "em": summaries[name].get("em"), "f1": summaries[name].get("f1"),
        "recall@5": summaries[name].get("recall@5")} for name in variants}
    for name in variants:
        result[f"{name}_qps"] = n / common.median(times[name])

    def qps_ratio(a: str, b: str) -> float | None:
        """qps(a) / qps(b) = median over rounds of time(b) / time(a)."""
        return common.median([tb / ta for ta, tb in zip(times[a], times[b])]) if a in times and b in times else None

    result["concat_over_per_passage_qps"] = qps_ratio(f"concat_K{K}", f"per_passage_K{K}")
    result["concat_over_per_passage_qps_K1"] = qps_ratio("concat_K1", "per_passage_K1")
    result["K1_over_K_per_passage_qps"] = qps_ratio("per_passage_K1", f"per_passage_K{K}")
    result["K1_over_K_concat_qps"] = qps_ratio("concat_K1", f"concat_K{K}")
    result["peak_rss_mib"] = round(common.peak_rss_mib(), 1)
    result["wall_s"] = time.perf_counter() - began
    return result


def report(results: dict) -> str:
    f, d, s = common.f, results, results["shape"]
    k = s["top_k"]
    return "\n".join([
        "## Evaluation throughput", "",
        f"`python benchmarks/eval_throughput.py`: {s['questions']} SQuAD dev questions, greedy, "
        f"{s['max_new_tokens']} new tokens at most, batches of {s['eval_batch_size']}.", "",
        "| decoding | K | questions / s |", "|---|---|---|",
        f"| per passage (best confidence x p_r) | {k} | {f(d[f'per_passage_K{k}_qps'], 3)} |",
        f"| passages concatenated | {k} | {f(d[f'concat_K{k}_qps'], 3)} |",
        f"| per passage | 1 | {f(d.get('per_passage_K1_qps'), 3)} |",
        f"| concatenated | 1 | {f(d.get('concat_K1_qps'), 3)} |", "",
        f"Concatenation / per passage at K={k}: {f(d['concat_over_per_passage_qps'])}."])


def main(argv=None) -> None:
    args = parse_args(argv)
    results = common.write_results(measure(args), args, NAME)
    print(report(results))


if __name__ == "__main__":
    main()
