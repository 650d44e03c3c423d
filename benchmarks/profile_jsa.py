"""Where one JSA training step spends its time: torch.profiler's top ops, and wall time by phase.

    python benchmarks/profile_jsa.py                # B=2, K=10, m=50, 192-token passages, ~1,000 passages
    python benchmarks/profile_jsa.py --quick        # 96-token passages, ~300 passages, fewer rounds
    python benchmarks/profile_jsa.py --out profile_jsa.json

1. One step of ``jsarag.estimators.JSA`` (textbook defaults) + backward + AdamW step + zero_grad under
   ``torch.profiler`` (CPU activities, record_shapes off): the top 15 ops by self CPU time.
2. Wall time by phase, measured with ``time.perf_counter`` around the same calls the estimator makes,
   reproduced here from jsarag's public functions (``jsarag.estimators.jsa`` / ``base``), in the same
   order and with the same RNG draws (so the loss equals the estimator's):
     retriever        prior + posterior query encoders, FAISS search (both), candidate union,
                      candidate vectors + log-probabilities (``Retriever.log_probs``)
     gen_nograd       ``score_selected`` of the distinct proposals without gradient
     mis              proposals (``sample_candidates``), importance weights, ``mis_chain``, state counts
     gen_grad_fwd     ``score_selected`` of the distinct chain states with gradient, ``jsa_losses``
     gen_grad_bwd     backward of the generator loss
     retriever_bwd    backward of the prior + posterior losses (the three losses touch disjoint
                      parameters, so two backward calls give the same gradients as one)
     optimizer        AdamW step + zero_grad
   Rounds interleave the real estimator step and the reproduction (same seed, same restored weights);
   ``reproduction_over_estimator`` checks that the phases add up to a real step.
3. Diagnostics (``--no-diagnostics`` to skip), each timed interleaved on the step's own no-grad scoring
   call (the distinct proposals): frozen base weights kept fp32 and cast by autocast on every forward
   (as now) vs stored in bf16; dropout on (train mode, as in the step) vs off; and the time spent
   building token-id prompts (``Generator._pairs``) in Python.

The last stdout line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
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

PHASES = ("retriever", "gen_nograd", "mis", "gen_grad_fwd", "gen_grad_bwd", "retriever_bwd", "optimizer")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="96-token passages, 300 passages, 1 round")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--proposals", type=int, default=50)
    ap.add_argument("--passages", type=int, help="default 1000; quick 300")
    ap.add_argument("--max-passage-tokens", type=int, help="default 192; quick 96")
    ap.add_argument(
        "--repeats", type=int, help="rounds of (estimator step, phase-timed step) (default 3; quick 1)"
    )
    ap.add_argument("--diag-repeats", type=int, help="rounds per diagnostic (default 3; quick 2)")
    ap.add_argument("--no-diagnostics", action="store_true")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    q = args.quick
    n_passages = args.passages or (300 if q else 1000)
    max_tokens = args.max_passage_tokens or (96 if q else 192)
    repeats = args.repeats or (1 if q else 3)
    diag_repeats = args.diag_repeats or (2 if q else 3)

    quiet_libraries()
    import torch
    from torch.profiler import ProfilerActivity, profile

    if args.threads:
        torch.set_num_threads(args.threads)
    from jsarag.data import Batch
    from jsarag.estimators.base import candidate_union, count_states, sample_candidates, score_selected
    from jsarag.estimators.jsa import JSA, JSAConfig, jsa_losses, log_importance_weights, mis_chain
    from jsarag.train import distributed as dist
    from jsarag.train.optim import build_optimizer, component_parameters

    began = time.perf_counter()
    B, K, M = args.batch_size, args.top_k, args.proposals
    result = {"benchmark": "profile_jsa", "quick": q, "machine": machine()}
    corpus, examples = squad_setup(B * (repeats + 2), n_passages, args.seed)
    batches = [Batch.from_examples(examples[i * B : (i + 1) * B]) for i in range(repeats + 2)]
    t = time.perf_counter()
    model, cfg = build_rag(corpus, max_passage_tokens=max_tokens, seed=args.seed)
    setup_s = time.perf_counter() - t
    model.train()
    estimator = JSA(JSAConfig(num_proposals=M), top_k=K)
    model.set_trainable(set(estimator.trains) - {"passage"})
    initial = [(p, p.detach().clone()) for ps in component_parameters(model).values() for p in ps]
    opt = build_optimizer(model, cfg.optim)
    for group in opt.param_groups:  # AdamW state allocated outside the measured steps
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    device = torch.device("cpu")
    precision = dist.resolve_precision("auto", device)
    retriever = model.retriever
    counter = ScoreCounter(model.generator)
    result["shape"] = {
        "batch_size": B,
        "top_k": K,
        "proposals": M,
        "passages": len(corpus),
        "max_passage_tokens": max_tokens,
        "precision": precision,
        "rounds": repeats,
        "generator": cfg.generator.model + " + LoRA",
        "retriever": cfg.retriever.model,
    }
    say(
        f"profile_jsa: B={B} K={K} m={M} passages={len(corpus)} max_passage_tokens={max_tokens} "
        f"(setup {setup_s:.1f}s)"
    )

    def prepare(seed: int) -> None:
        with torch.no_grad():
            for p, p0 in initial:
                p.copy_(p0)
        opt.zero_grad(set_to_none=True)
        gc.collect()
        torch.manual_seed(seed)
        counter.reset()

    def estimator_step(batch) -> tuple[float, float]:
        t0 = time.perf_counter()
        with dist.autocast(device, precision):
            loss, _ = model(batch, estimator)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, loss.item()

    def phased_step(batch) -> tuple[dict, float, dict]:
        """JSA.__call__ (textbook, no chain cache, union candidates) + backward + optimiser, by phase."""
        ph, sub = {}, {}
        clock = time.perf_counter
        t_start = clock()
        with dist.autocast(device, precision):
            t0 = clock()
            prior_query = retriever.prior_vectors(batch.queries)
            post_query = retriever.posterior_vectors(batch.queries, batch.answers)
            t1 = clock()
            row_sets = [retriever.search(post_query, K)]
            row_sets.insert(0, retriever.search(prior_query, K))
            t2 = clock()
            rows, mask = candidate_union(row_sets)
            t3 = clock()
            log_prior = retriever.log_probs(prior_query, rows, mask)
            log_post = retriever.log_probs(post_query, rows, mask)
            t4 = clock()
            ph["retriever"] = t4 - t0
            sub.update(
                {
                    "retriever.encoders": t1 - t0,
                    "retriever.search": t2 - t1,
                    "retriever.union": t3 - t2,
                    "retriever.log_probs": t4 - t3,
                }
            )
            Kp = rows.shape[1]
            t0 = clock()
            proposals = sample_candidates(log_post, M)
            to_score = count_states(proposals, Kp) > 0
            ph["mis"] = clock() - t0
            t0 = clock()
            with torch.no_grad():
                seq_loglik = score_selected(model, batch, rows, to_score, "sum")
            ph["gen_nograd"] = clock() - t0
            t0 = clock()
            log_w = log_importance_weights(log_prior.detach(), seq_loglik, log_post.detach())
            log_u = torch.rand(proposals.shape, device=proposals.device).log()
            states, _accepted = mis_chain(log_w, proposals, log_u, None)
            weights = count_states(states, Kp) / M
            ph["mis"] += clock() - t0
            t0 = clock()
            seq_loglik_grad = score_selected(model, batch, rows, weights > 0, "sum")
            loss_gen, loss_prior, loss_post = jsa_losses(weights, seq_loglik_grad, log_prior, log_post)
            ph["gen_grad_fwd"] = clock() - t0
        loss_value = (loss_gen + loss_prior + loss_post).mean().item()
        t0 = clock()
        loss_gen.mean().backward()
        ph["gen_grad_bwd"] = clock() - t0
        t0 = clock()
        (loss_prior + loss_post).mean().backward()
        ph["retriever_bwd"] = clock() - t0
        t0 = clock()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ph["optimizer"] = clock() - t0
        ph["total"] = clock() - t_start
        info = {
            "distinct_proposals": to_score.sum(-1).float().mean().item(),
            "distinct_states": (weights > 0).sum(-1).float().mean().item(),
            "candidates": mask.sum(-1).float().mean().item(),
            **sub,
        }
        return ph, loss_value, info

    # 0. Warm-up, untimed.
    prepare(1)
    secs, _ = estimator_step(batches[0])
    say(f"  warm-up step: {secs:.2f}s")

    # 1. Profile one estimator step.
    prepare(2)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        secs, _ = estimator_step(batches[1])
    averages = prof.key_averages()
    total_self = sum(e.self_cpu_time_total for e in averages) or 1.0
    top = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]
    result["profiled_step_s"] = secs
    result["profiled_generator_seqs"] = dict(counter.counts)
    result["top_ops"] = [
        {
            "name": e.key,
            "self_cpu_ms": e.self_cpu_time_total / 1000,
            "self_cpu_pct": 100 * e.self_cpu_time_total / total_self,
            "cpu_total_ms": e.cpu_time_total / 1000,
            "calls": e.count,
        }
        for e in top
    ]
    say(f"\nprofiled step: {secs:.2f}s wall (profiler on); top {args.top} ops by self CPU time:")
    say(f"{'op':<52}{'self ms':>10}{'self %':>8}{'total ms':>10}{'calls':>8}")
    for r in result["top_ops"]:
        say(
            f"{r['name'][:51]:<52}{r['self_cpu_ms']:>10.1f}{r['self_cpu_pct']:>8.1f}"
            f"{r['cpu_total_ms']:>10.1f}"
            f"{r['calls']:>8}"
        )
    del prof, averages

    # 2. Estimator step vs the phase-timed reproduction, interleaved; same batch and seed per round.
    say("")
    est_times, phase_recs, infos, loss_pairs = [], [], [], []
    for r in range(repeats):
        batch, seed = batches[2 + r], 100 + r
        prepare(seed)
        e_secs, e_loss = estimator_step(batch)
        prepare(seed)
        ph, p_loss, info = phased_step(batch)
        est_times.append(e_secs)
        phase_recs.append(ph)
        infos.append(info)
        loss_pairs.append((e_loss, p_loss))
        say(
            f"  round {r}: estimator step {e_secs:.2f}s, reproduction {ph['total']:.2f}s "
            f"(loss {e_loss:.4f} vs {p_loss:.4f}); distinct proposals {info['distinct_proposals']:.1f}, "
            f"states {info['distinct_states']:.1f}"
        )
    phases = {k: median([p[k] for p in phase_recs]) for k in PHASES + ("total",)}
    fractions = {k: median([p[k] / p["total"] for p in phase_recs]) for k in PHASES}
    fractions["other"] = median([1 - sum(p[k] for k in PHASES) / p["total"] for p in phase_recs])
    subs = {k: median([i[k] for i in infos]) for k in infos[0] if k.startswith("retriever.")}
    result["phases_s"] = phases
    result["phase_fractions"] = fractions
    result["retriever_subphases_s"] = subs
    result["generator_grad_fraction"] = fractions["gen_grad_fwd"] + fractions["gen_grad_bwd"]
    result["generator_fraction"] = result["generator_grad_fraction"] + fractions["gen_nograd"]
    result["estimator_step_median_s"] = median(est_times)
    result["reproduction_over_estimator"] = median([p["total"] / e for p, e in zip(phase_recs, est_times)])
    result["loss_estimator_vs_reproduction"] = loss_pairs
    result["distinct_proposals"] = statistics.fmean(i["distinct_proposals"] for i in infos)
    result["distinct_states"] = statistics.fmean(i["distinct_states"] for i in infos)
    say(f"\nwall time by phase (median of {repeats} round(s); step {phases['total']:.2f}s):")
    for k in PHASES:
        say(f"  {k:<15}{phases[k]:>9.3f}s {100 * fractions[k]:>6.1f}%")
    say(f"  {'other':<15}{'':>10} {100 * fractions['other']:>6.1f}%")
    for k, v in subs.items():
        say(f"    {k:<22}{v:>9.4f}s")
    say(f"  reproduction / estimator step = {result['reproduction_over_estimator']:.3f}")

    # 3. Diagnostics on the no-grad scoring call.
    if not args.no_diagnostics:
        result["diagnostics"] = diagnostics(
            model, retriever, batches[2], K, M, diag_repeats, torch, dist, device
        )
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    result["setup_s"] = setup_s
    result["wall_s"] = time.perf_counter() - began
    say(f"wall {result['wall_s']:.0f}s")
    emit(result, args.out)


def diagnostics(model, retriever, batch, K, M, repeats, torch, dist, device) -> dict:
    """Cost of three things around the generator's no-grad scoring pass, on this step's proposals."""
    from jsarag.estimators.base import candidate_union, count_states, sample_candidates, score_selected

    gen = model.generator
    torch.manual_seed(7)
    with torch.no_grad(), dist.autocast(device, "bf16"):
        pq = retriever.prior_vectors(batch.queries)
        qq = retriever.posterior_vectors(batch.queries, batch.answers)
        rows, mask = candidate_union([retriever.search(pq, K), retriever.search(qq, K)])
        proposals = sample_candidates(retriever.log_probs(qq, rows, mask), M)
    selected = count_states(proposals, rows.shape[1]) > 0
    n_seqs = int(selected.sum())

    def score(seed: int):
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        with torch.no_grad(), dist.autocast(device, "bf16"):
            values = score_selected(model, batch, rows, selected, "sum")
        return time.perf_counter() - t0, values[selected].float()

    out = {"sequences": n_seqs}
    say(
        f"\ndiagnostics on the no-grad scoring of {n_seqs} distinct proposals ({repeats} interleaved rounds):"
    )

    # a) autocast re-casts frozen fp32 weights on every forward (its cache holds only leaves that
    #    require grad); a bf16 copy of the frozen base weights avoids that.
    fp32_model = gen.model
    bf16_model = copy.deepcopy(fp32_model)
    frozen = 0
    for p in bf16_model.parameters():
        if not p.requires_grad:
            p.data = p.data.to(torch.bfloat16)
            frozen += p.numel()
    times = {"fp32_frozen": [], "bf16_frozen": []}
    vals = {}
    score(0)
    for r in range(repeats + 1):
        for key, m in (("fp32_frozen", fp32_model), ("bf16_frozen", bf16_model)):
            gen.model = m
            s, v = score(11)
            if r:
                times[key].append(s)
            vals[key] = v
    gen.model = fp32_model
    del bf16_model
    gc.collect()
    ratio = median([a / b for a, b in zip(times["fp32_frozen"], times["bf16_frozen"])])
    out["autocast_recast"] = {
        "frozen_params": frozen,
        "fp32_frozen_s": median(times["fp32_frozen"]),
        "bf16_frozen_s": median(times["bf16_frozen"]),
        "fp32_over_bf16": ratio,
        "max_abs_logprob_diff": (vals["fp32_frozen"] - vals["bf16_frozen"]).abs().max().item(),
    }
    say(
        f"  frozen weights fp32 (autocast casts each forward) {median(times['fp32_frozen']):.3f}s"
        " vs stored bf16 "
        f"{median(times['bf16_frozen']):.3f}s: ratio {ratio:.3f}"
    )

    # b) dropout (LoRA dropout 0.05, MiniLM's 0.1 does not run here) in the no-grad MIS scoring pass.
    times = {"train": [], "eval": []}
    vals = {"train": [], "eval": []}
    for r in range(repeats + 1):
        for key in ("train", "eval"):
            gen.train(key == "train")
            s, v = score(20 + r)
            if r:
                times[key].append(s)
            vals[key].append(v)
    gen.train()
    noise = (
        max((a - b).abs().max().item() for a, b in zip(vals["train"], vals["train"][1:]))
        if repeats
        else float("nan")
    )
    ratio = median([a / b for a, b in zip(times["train"], times["eval"])])
    out["dropout_in_scoring"] = {
        "train_mode_s": median(times["train"]),
        "eval_mode_s": median(times["eval"]),
        "train_over_eval": ratio,
        "max_abs_logprob_change_between_dropout_draws": noise,
        "max_abs_logprob_train_vs_eval": (vals["train"][-1] - vals["eval"][-1]).abs().max().item(),
    }
    say(
        f"  dropout on (train mode) {median(times['train']):.3f}s vs off {median(times['eval']):.3f}s: "
        f"ratio {ratio:.3f}; "
        f"log p_g(y|x,h) moves by up to {noise:.3f} nats between two dropout draws"
    )

    # c) prompt building in Python (token ids, per pair) as a share of the scoring call.
    b_idx, k_idx = selected.nonzero(as_tuple=True)
    picked = rows[b_idx, k_idx].tolist()
    qs = [batch.queries[b] for b in b_idx.tolist()]
    ans = [batch.answers[b] for b in b_idx.tolist()]
    ps = [[retriever.corpus[r]] for r in picked]
    pair_s = []
    for _ in range(max(3, repeats)):
        t0 = time.perf_counter()
        gen._pairs(qs, batch.kind, ps, ans)
        pair_s.append(time.perf_counter() - t0)
    base = median(times["train"])
    out["prompt_building"] = {"pairs_s": median(pair_s), "fraction_of_scoring": median(pair_s) / base}
    say(
        f"  building token-id prompts ({len(ps)} pairs): {1000 * median(pair_s):.2f} ms "
        f"({100 * median(pair_s) / base:.2f}% of the scoring call)"
    )
    return out


if __name__ == "__main__":
    sys.exit(main())
