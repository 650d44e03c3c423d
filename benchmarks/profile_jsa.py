"""Where a JSA training step spends its time: the library's own step under torch.profiler, by range and by op.

    python benchmarks/profile_jsa.py                # B=2, K=10, m=50, 192-token passages, 1,000 passages
    python benchmarks/profile_jsa.py --quick        # 96-token passages, 300 passages, one profiled step

The step is the training loop's (``_common.Stepper``: what train/loop.py runs per step, gradient clipping
aside): the model built by ``jsarag.pipeline.build_model``, the estimator by ``jsarag.estimators.build_estimator``
from the config (``estimator.name: jsa``, defaults otherwise), its forward under the autocast ``train.precision:
auto`` resolves to, the backward, the AdamW step. After a warm-up step, each round runs one step unprofiled
and the same step (same weights, batch and seed) under ``torch.profiler`` (CPU activities), which reports:

- time per range: the estimator's ``record_function`` ranges (jsa/candidates, jsa/propose,
  jsa/score_proposals, jsa/chain, jsa/states_forward) and the step's (step/forward, step/backward,
  step/optimizer), as shares of the profiled step; ``phase_fractions`` splits the step into the JSA ranges,
  the rest of the forward, the backward and the optimiser;
- the top ops by self CPU time.
"""

from __future__ import annotations

import time
from collections import defaultdict

import _common as common

NAME = "profile_jsa"
JSA_RANGES = ("jsa/candidates", "jsa/propose", "jsa/score_proposals", "jsa/chain", "jsa/states_forward")
STEP_RANGES = ("step/forward", "step/backward", "step/optimizer")


def parse_args(argv=None):
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--top-k", type=int, help="K (default 10; smoke 3)")
    p.add_argument("--proposals", type=int, help="m (default 50; smoke 8)")
    p.add_argument("--passages", type=int, help="default 1000; quick 300; smoke 40")
    p.add_argument("--max-passage-tokens", type=int, help="default 192; quick 96; smoke 32")
    p.add_argument("--repeats", type=int, help="rounds of (unprofiled step, profiled step) (default 3; quick 1)")
    p.add_argument("--top", type=int, default=15, help="ops listed")
    return p.parse_args(argv)


def measure(args) -> dict:
    common.quiet_libraries()
    common.apply_threads(args.threads)
    import torch
    from torch.profiler import ProfilerActivity, profile

    from jsarag.data import Batch
    from jsarag.estimators import build_estimator
    from jsarag.train import distributed as dist

    began = time.perf_counter()
    pick = common.pick
    B, K, M = args.batch_size, pick(args, "top_k", 10, 10, 3), pick(args, "proposals", 50, 50, 8)
    repeats, max_tokens = pick(args, "repeats", 3, 1), pick(args, "max_passage_tokens", 192, 96, 32)
    corpus, examples = common.squad_setup(common.data_dir(args), B * (repeats + 1),
                                          pick(args, "passages", 1000, 300, 40), args.seed)
    batches = [[Batch.from_examples(examples[i * B:(i + 1) * B])] for i in range(repeats + 1)]
    model, cfg = common.build_rag(corpus, max_passage_tokens=max_tokens, seed=args.seed, **common.models(args))
    cfg.estimator.name, cfg.estimator.top_k, cfg.estimator.jsa.num_proposals = "jsa", K, M
    estimator = build_estimator(cfg.estimator)
    device = torch.device("cpu")
    precision = dist.resolve_precision(cfg.train.precision, device)
    model.train()
    stepper = common.Stepper(model, cfg.optim, device, precision)
    result = {"benchmark": NAME, "size": common.size(args), "quick": args.quick, "machine": common.machine(),
              "shape": {"batch_size": B, "top_k": K, "proposals": M, "passages": len(corpus),
                        "max_passage_tokens": max_tokens, "precision": precision, "rounds": repeats,
                        "generator": cfg.generator.model + " + LoRA", "retriever": cfg.retriever.model,
                        "estimator": f"build_estimator({cfg.estimator})"}}
    common.say(f"profile_jsa: B={B} K={K} m={M} passages={len(corpus)} max_passage_tokens={max_tokens} "
               f"({time.perf_counter() - began:.1f}s setup)")
    common.say(f"  warm-up step: {stepper.step(estimator, batches[0], seed=1)[0]:.2f}s")

    profiles, plain_s, profiled_s, metrics = [], [], [], []

    def profiled():
        profiles.append(profile(activities=[ProfilerActivity.CPU], record_shapes=False))
        return profiles[-1]

    for r in range(repeats):
        plain_s.append(stepper.step(estimator, batches[1 + r], seed=100 + r)[0])
        seconds, step_metrics = stepper.step(estimator, batches[1 + r], seed=100 + r, around=profiled)
        profiled_s.append(seconds)
        metrics.append(step_metrics)
        common.say(f"  round {r}: step {plain_s[-1]:.2f}s, profiled {seconds:.2f}s; distinct proposals "
                   f"{step_metrics['distinct_proposals']:.1f}, states {step_metrics['distinct_states']:.1f}")

    # Per key over all profiled steps: self and total CPU microseconds, calls. A record_function range's total
    # is its wall time on the thread that ran it.
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for prof in profiles:
        for e in prof.key_averages():
            t = totals[e.key]
            t[0], t[1], t[2] = t[0] + e.self_cpu_time_total, t[1] + e.cpu_time_total, t[2] + e.count
    step_us = 1e6 * sum(profiled_s)
    ranges = {name: {"ms_per_step": totals[name][1] / 1000 / repeats, "share": totals[name][1] / step_us}
              for name in JSA_RANGES + STEP_RANGES if name in totals}
    share = {name: r["share"] for name, r in ranges.items()}
    fractions = {name: share.get(name, 0.0) for name in JSA_RANGES}
    fractions["forward_other"] = share.get("step/forward", 0.0) - sum(fractions.values())
    fractions["backward"] = share.get("step/backward", 0.0)
    fractions["optimizer"] = share.get("step/optimizer", 0.0)
    fractions["other"] = 1 - sum(fractions.values())
    ops = {k: t for k, t in totals.items() if k not in ranges}
    total_self = sum(t[0] for t in totals.values()) or 1.0
    result.update({
        "ranges": ranges, "phase_fractions": fractions,
        "top_ops": [{"name": k, "self_cpu_ms": t[0] / 1000, "self_cpu_pct": 100 * t[0] / total_self,
                     "cpu_total_ms": t[1] / 1000, "calls": t[2]}
                    for k, t in sorted(ops.items(), key=lambda kv: kv[1][0], reverse=True)[:args.top]],
        "step_median_s": common.median(plain_s), "profiled_step_median_s": common.median(profiled_s),
        "profiler_overhead": common.median([p / s for p, s in zip(profiled_s, plain_s)]) - 1,
        "distinct_proposals": sum(m["distinct_proposals"] for m in metrics) / len(metrics),
        "distinct_states": sum(m["distinct_states"] for m in metrics) / len(metrics),
        "peak_rss_mib": round(common.peak_rss_mib(), 1), "wall_s": time.perf_counter() - began})
    return result


def report(results: dict) -> str:
    f, d = common.f, results
    lines = ["## Where a JSA step spends its time", "",
             f"`python benchmarks/profile_jsa.py` (B={d['shape']['batch_size']}, K={d['shape']['top_k']}, "
             f"m={d['shape']['proposals']}): {f(d['distinct_proposals'], 1)} distinct proposals and "
             f"{f(d['distinct_states'], 1)} distinct states per question."]
    if "ranges" in d:
        lines[-1] += (f" The library's training step under torch.profiler ({d['shape']['rounds']} step(s), "
                      f"{f(d['profiled_step_median_s'])} s a step profiled against {f(d['step_median_s'])} s "
                      "without): phases are the estimator's and the step's `record_function` ranges.")
        m = d["machine"]
        loads = [f"{m[key][0]:.1f}" for key in ("load_average_at_start", "load_average_at_end") if key in m]
        lines[-1] += (f" Machine: {m.get('cpu_model')}, {m.get('torch_threads')} torch threads"
                      f"{common.precision_note(m)}; 1-minute load average at start / end {' / '.join(loads)}.")
    else:  # results of the script's first version
        lines[-1] += (" Measured by an earlier version of the script, which timed its own copy of the step (it "
                      "scored the proposals with dropout on, unlike the library) by phase; the script now profiles "
                      "the library's step by its `record_function` ranges, and these figures await a rerun.")
    lines += ["", "| phase | share of the step |", "|---|---|"]
    lines += [f"| {phase} | {100 * share:.1f}% |" for phase, share in d["phase_fractions"].items()]
    lines += ["", "| op (torch.profiler, self CPU) | share |", "|---|---|"]
    lines += [f"| {op['name']} | {op['self_cpu_pct']:.1f}% |" for op in d["top_ops"][:8]]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    results = common.write_results(measure(args), args, NAME)
    print(report(results))


if __name__ == "__main__":
    main()
