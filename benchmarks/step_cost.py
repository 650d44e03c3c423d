"""Cost of one training step for RAG-Sequence, VRAG (exact), JSA (textbook) and JSA "as released".

    python benchmarks/step_cost.py                 # the real measurement (B=4, 1,000 passages, 192 tokens)
    python benchmarks/step_cost.py --quick         # B=1, 300 passages, 96 tokens (~10 min on 2 quiet cores)
    python benchmarks/step_cost.py --device cuda --no-training      # on a GPU (at the initial weights)
    python benchmarks/step_cost.py --quick --no-training --variants rag_sequence,jsa_two_pass,jsa_one_pass
                                                   # JSA's scoring modes against each other (section 7)

A step is the training loop's (``_common.Stepper``): the estimator's forward under the autocast
``train.precision: auto`` resolves to, and backward, for each micro-batch, then the AdamW step. The B questions
run as micro-batches of 1 (``--micro-batch-size``) for every variant: the as-released variant keeps the graphs
of m=50 generator sequences per question (~15 GB at 192-token passages).

Variants, K=10 each: ``rag_sequence``; ``vrag`` (exact ELBO over the posterior top K); ``jsa`` (m=50, the
library's estimator as configured by default); ``jsa_released``: the same estimator with ``score_every_pick``
injected as its scorer, which runs all m proposals and all m chain states through the generator, duplicates
included: the released code's cost profile, same loss. On request: ``jsa_two_pass`` and ``jsa_one_pass``,
``jsa.scoring`` fixed to either mode (``jsa`` runs ``auto``, which depends on the device).

Fairness: every variant starts each step from the same initial weights, on the same batches with the same
torch seed per batch; after a warm-up round (all variants but the as-released one, which only adds duplicate
sequences to the same code paths; ``--warmup-all`` includes it; on a GPU one round per batch, since each new input
shape pays for kernel selection there) the variants are interleaved round by round.
Recorded per variant: distinct proposals and states per question, generator sequences run with and without
gradient, tokens run (with padding) and peak RSS.

At the initial weights the posterior is nearly flat; the headline ``jsa_over_rag_sequence`` is therefore measured
during training too: the first steps of real ``jsarag train`` runs per estimator, from the same weights and data,
with the loop's own per-step timer (``--no-training`` skips it).

On a machine without the packaged weights, ``--retriever`` and ``--generator`` take folders holding only a
model's config and tokenizer, and ``--random-weights`` builds those architectures with random weights: the same
arithmetic, but a random posterior makes the sampler propose more distinct passages (an upper bound for JSA).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import _common as common

NAME = "step_cost"
VARIANTS = ("rag_sequence", "vrag", "jsa", "jsa_released")
SCORING_VARIANTS = ("jsa_two_pass", "jsa_one_pass")  # jsa.scoring fixed; run when asked for
RATIOS = {"jsa_over_rag_sequence": ("jsa", "rag_sequence"), "released_over_jsa": ("jsa_released", "jsa"),
          "vrag_over_rag_sequence": ("vrag", "rag_sequence"),
          "released_over_rag_sequence": ("jsa_released", "rag_sequence"),
          "one_pass_over_two_pass": ("jsa_one_pass", "jsa_two_pass"),
          "one_pass_over_rag_sequence": ("jsa_one_pass", "rag_sequence"),
          "two_pass_over_rag_sequence": ("jsa_two_pass", "rag_sequence")}
TRAINED = {"rag_sequence": ["estimator.name=rag_sequence"],
           "vrag": ["estimator.name=vrag", "estimator.vrag.mode=exact"], "jsa": ["estimator.name=jsa"],
           # on request: JSA whose scoring without gradient runs every prompt in full (no shared head)
           "jsa_unshared": ["estimator.name=jsa", "generator.share_prefix=false"]}
TRAINED_DEFAULT = ("rag_sequence", "vrag", "jsa")
TARGET = "<= 0.8"  # JSA / RAG-Sequence during training on the CPU (issue 15)
SCORING_NOTES = Path(__file__).resolve().parent / "notes" / "step_cost_scoring.md"
TRAINING_NOTES = Path(__file__).resolve().parent / "notes" / "step_cost_training.md"


def score_every_pick(model, batch, rows, picks, reduction):
    """The released code's scoring, as a ``jsarag.estimators.jsa.Scorer``: every pick [B, M] runs through the
    generator, duplicates included. A candidate gets the mean of its copies' values (they differ only by
    dropout), so the count-weighted loss equals the released code's mean over all m states."""
    import torch

    from jsarag.estimators.base import count_states

    B, M = picks.shape
    corpus = model.retriever.corpus
    values = model.generator.pair_logprob(
        [q for q in batch.queries for _ in range(M)], batch.kind,
        [corpus[r] for r in rows.gather(1, picks).reshape(-1).tolist()],
        [a for a in batch.answers for _ in range(M)], reduction).view(B, M)
    sums = torch.zeros(rows.shape, device=values.device, dtype=values.dtype).scatter_add(
        1, picks.to(values.device), values)
    return sums / count_states(picks, rows.shape[1]).to(values.device).clamp(min=1)


def make_estimator(name: str, top_k: int, proposals: int):
    from jsarag.estimators import JSA, VRAG, JSAConfig, RagSequence, VRAGConfig

    if name == "rag_sequence":
        return RagSequence(top_k=top_k)
    if name == "vrag":
        return VRAG(VRAGConfig(mode="exact"), top_k=top_k)
    if name == "jsa":
        return JSA(JSAConfig(num_proposals=proposals), top_k=top_k)
    if name == "jsa_released":  # the released code scored in two passes
        return JSA(JSAConfig(num_proposals=proposals, scoring="two_pass"), top_k=top_k, scorer=score_every_pick)
    if name in SCORING_VARIANTS:
        return JSA(JSAConfig(num_proposals=proposals, scoring=name.removeprefix("jsa_")), top_k=top_k)
    raise ValueError(name)


def parse_args(argv=None):
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, help="questions per optimiser step (default 4; quick, smoke 1)")
    p.add_argument("--micro-batch-size", type=int, default=1, help="questions per forward/backward")
    p.add_argument("--top-k", type=int, help="K (default 10; smoke 3)")
    p.add_argument("--proposals", type=int, help="JSA m (default 50; smoke 8)")
    p.add_argument("--passages", type=int, help="corpus size (default 1000; quick 300; smoke 40)")
    p.add_argument("--max-passage-tokens", type=int, help="generator passage truncation (default 192; quick 96)")
    p.add_argument("--repeats", type=int, help="timed rounds (default 3; quick 2; smoke 1)")
    p.add_argument("--batches", type=int, help="distinct batches, cycled over rounds (default 3; quick 2)")
    p.add_argument("--training-steps", type=int, help="steps of each training run (default 16; quick 8)")
    p.add_argument("--warmup-all", action="store_true", help="also warm up the as-released variant")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {VARIANTS + SCORING_VARIANTS}")
    p.add_argument("--device", default="cpu", help="cpu or cuda (timed with cuda.synchronize)")
    p.add_argument("--retriever", help="encoder: built-in, hub name or folder (default builtin:minilm)")
    p.add_argument("--generator", help="decoder-only LM (default builtin:smollm2-135m-instruct)")
    p.add_argument("--random-weights", action="store_true", help="the models' architectures, random weights")
    p.add_argument("--temperature", type=float, help="retriever.temperature (default the config's, 0.1); lower "
                   "sharpens a random-weights posterior towards the few distinct states trained weights visit")
    p.add_argument("--logit-scale", type=float, help="multiply the random generator's logits (default 1): its "
                   "answer likelihoods then differ between passages as trained weights make them, and the chain "
                   "rejects more of its proposals")
    p.add_argument("--match-chain", metavar="PROPOSALS,STATES", help="before timing, pick the temperature and "
                   "logit scale (a grid, one untimed step per batch) whose chain comes closest to this many "
                   "distinct proposals and states per question (trained weights on SQuAD: about 11,4)")
    p.add_argument("--no-training", action="store_true", help="skip the in-training measurement")
    p.add_argument("--training-only", action="store_true", help="only the in-training measurement (results: "
                   "step_cost_training*.json by default; section 1's table of runs in training)")
    p.add_argument("--training-variants", default=",".join(TRAINED_DEFAULT),
                   help=f"estimators trained, in this order: rag_sequence and a subset of {tuple(TRAINED)}")
    args = p.parse_args(argv)
    args.training_variants = [v.strip() for v in args.training_variants.split(",") if v.strip()]
    if set(args.training_variants) - set(TRAINED) or "rag_sequence" not in args.training_variants:
        p.error(f"--training-variants: rag_sequence and a subset of {tuple(TRAINED)}, got {args.training_variants}")
    if args.training_only and args.no_training:
        p.error("--training-only and --no-training exclude each other")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if set(args.variants) - set(VARIANTS + SCORING_VARIANTS):
        p.error(f"unknown variant(s) {sorted(set(args.variants) - set(VARIANTS + SCORING_VARIANTS))}")
    if args.random_weights and not args.no_training:
        p.error("--random-weights times steps at the initial weights only: add --no-training")
    for flag in ("temperature", "logit_scale", "match_chain"):
        if getattr(args, flag) is not None and not (args.no_training and args.random_weights):
            p.error(f"--{flag.replace('_', '-')} shapes the chain of random weights: add --random-weights "
                    "--no-training")
    if args.logit_scale is not None and args.logit_scale <= 0:
        p.error(f"--logit-scale must be positive, got {args.logit_scale}")
    if args.match_chain is not None and (args.temperature is not None or args.logit_scale is not None):
        p.error("--match-chain chooses the temperature and the logit scale: leave out --temperature and --logit-scale")
    if args.match_chain is not None:
        try:
            args.match_chain = tuple(float(x) for x in args.match_chain.split(","))
            assert len(args.match_chain) == 2 and min(args.match_chain) > 0
        except (ValueError, AssertionError):
            p.error(f"--match-chain: expected two positive numbers PROPOSALS,STATES, got {args.match_chain!r}")
    return args


def measure(args) -> dict:
    common.quiet_libraries()
    common.apply_threads(args.threads)
    import torch

    from jsarag.data import Batch
    from jsarag.train import distributed as dist

    pick = common.pick
    B = pick(args, "batch_size", 4, 1)
    micro = max(1, min(args.micro_batch_size, B))
    if B % micro:
        raise SystemExit("--batch-size must be a multiple of --micro-batch-size")
    K, M = pick(args, "top_k", 10, 10, 3), pick(args, "proposals", 50, 50, 8)
    repeats, n_batches = pick(args, "repeats", 3, 2, 1), pick(args, "batches", 3, 2, 1)
    warm = [v for v in args.variants if args.warmup_all or v != "jsa_released"] or args.variants[:1]
    began = time.perf_counter()
    device = torch.device(args.device)
    precision = dist.resolve_precision("auto", device)
    warmups = n_batches if device.type == "cuda" else 1  # warm-up rounds
    n_passages, max_tokens = pick(args, "passages", 1000, 300, 40), pick(args, "max_passage_tokens", 192, 96, 32)
    result = {"benchmark": NAME, "size": common.size(args), "quick": args.quick, "machine": common.machine(args.device)}
    if args.training_only:  # section 1's second table (report_training)
        result["in_training"] = measure_training(args, B, K, M, n_passages, max_tokens)
        result["wall_s"] = round(time.perf_counter() - began, 2)
        return result
    corpus, examples = common.squad_setup(common.data_dir(args), B * n_batches, n_passages, args.seed)
    batches = [[Batch.from_examples(examples[i * B + j: i * B + j + micro]) for j in range(0, B, micro)]
               for i in range(n_batches)]
    names = common.models(args)
    model, cfg = common.build_rag(corpus, max_passage_tokens=max_tokens, seed=args.seed,
                                  random_weights=args.random_weights, temperature=args.temperature, **names)
    model.to(device)
    model.train()
    stepper = common.Stepper(model, cfg.optim, device, precision)
    scale = (LogitScale(model.generator, 1.0 if args.logit_scale is None else args.logit_scale)
             if args.logit_scale is not None or args.match_chain else None)
    if args.match_chain:
        result["calibration"] = match_chain(stepper, scale, batches, K, M, args.match_chain)
    counter = common.ScoreCounter(model.generator)
    result["shape"] = {
        "batch_size": B, "micro_batch_size": micro, "top_k": K, "proposals": M, "passages": len(corpus),
        "max_passage_tokens": max_tokens, "batches": n_batches, "warmup_variants": warm, "warmup_rounds": warmups,
        "timed_rounds": repeats,
        "precision": precision, "generator": cfg.generator.model + " + LoRA (r 8, alpha 16, peft default targets)",
        "device": str(device), "random_weights": args.random_weights, "retriever": cfg.retriever.model,
        "retriever_temperature": model.retriever.temperature, "generator_logit_scale": scale.factor if scale else 1.0,
        "score_batch_size": cfg.generator.score_batch_size,
        "seed": args.seed,
        "gradient_checkpointing": cfg.generator.gradient_checkpointing,
        "answer_tokens": [len(model.generator.prompts.answer_ids(e.answers[0])) for e in examples],
        "step": f"autocast({precision}) forward, backward, AdamW step, zero_grad (no clipping)"}
    common.say(f"step_cost: B={B} (micro-batches of {micro}) K={K} m={M} passages={len(corpus)} "
               f"max_passage_tokens={max_tokens} timed rounds={repeats} ({time.perf_counter() - began:.1f}s setup)")

    estimators = {v: make_estimator(v, K, M) for v in args.variants}
    times = {v: [] for v in args.variants}
    records = {v: [] for v in args.variants}
    rss_after_first = {}
    for r, (kind, round_variants) in enumerate([("warm-up", warm)] * warmups + [("timed", args.variants)] * repeats):
        b, line = r % n_batches, []
        for v in round_variants:
            counter.reset()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds, metrics = stepper.step(estimators[v], batches[b], seed=BATCH_SEED + b)
            if device.type == "cuda":
                metrics["gpu_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
            if kind == "timed":
                times[v].append(seconds)
                records[v].append({**metrics, **counter.counts})
                rss_after_first.setdefault(v, round(common.peak_rss_mib(), 1))
            line.append(f"{v} {seconds:.2f}s [{counter.counts['nograd_seqs']}+{counter.counts['grad_seqs']}g seqs]")
        common.say(f"  round {r} ({kind}, batch {b}): " + " | ".join(line))

    result["variants"] = {v: {
        "median_s": common.median(times[v]), "min_s": min(times[v]), "times_s": [round(t, 4) for t in times[v]],
        "peak_rss_mib_cumulative": rss_after_first.get(v),
        **{f"mean_{k}": statistics.fmean(rec[k] for rec in records[v] if k in rec)
           for k in sorted({k for rec in records[v] for k in rec})}} for v in args.variants}
    result["ratios"] = {key: common.ratio_summary(times[a], times[b])
                        for key, (a, b) in RATIOS.items() if a in times and b in times}
    for key in RATIOS:
        result[key] = result["ratios"][key]["median_of_round_ratios"] if key in result["ratios"] else None
    for v in args.variants:
        result[f"{v}_median_s"] = result["variants"][v]["median_s"]
    result["targets"] = {"jsa_over_rag_sequence": TARGET, "released_over_jsa": ">= 2"}
    tokens = [sum(result["variants"][v].get(f"mean_{g}_{what}", 0) for v in args.variants for g in ("grad", "nograd"))
              for what in ("tokens", "real_tokens")]
    result["padding_fraction"] = 1 - tokens[1] / tokens[0] if tokens[0] else None
    result["peak_rss_mib"] = round(common.peak_rss_mib(), 1)
    if not args.no_training and result["jsa_over_rag_sequence"] is not None:
        del model, stepper
        result["in_training"] = measure_training(args, B, K, M, len(corpus), max_tokens)
        result["jsa_over_rag_sequence_at_init"] = result["jsa_over_rag_sequence"]
        result["jsa_over_rag_sequence"] = result["in_training"]["jsa_over_rag_sequence"]
    result["wall_s"] = round(time.perf_counter() - began, 2)
    return result


class LogitScale:
    """Multiplies the generator's logits by ``factor`` (a forward hook on its output embeddings; 1 leaves them as
    they are). A random generator's logits are small, so its likelihood of an answer barely depends on the passage:
    scaling them makes some passages explain the answer far better than others, as trained weights do."""

    def __init__(self, generator, factor: float):
        self.factor = factor
        self.handle = generator.model.get_output_embeddings().register_forward_hook(
            lambda _m, _i, out: out * self.factor)

    def remove(self) -> None:
        self.handle.remove()


BATCH_SEED = 1000  # batch b's step runs under torch.manual_seed(BATCH_SEED + b): the same draws for every variant
TEMPERATURES = (0.0015, 0.003, 0.006, 0.012)  # 0.0008: ~6.5 proposals, 0.1: ~16 (an H200, bf16)
LOGIT_SCALES = (1.0, 2.0, 4.0, 8.0, 16.0)


def match_chain(stepper, scale: LogitScale, batches, top_k: int, proposals: int, target: tuple[float, float]
                ) -> dict:
    """The (retriever temperature, generator logit scale) of the grid whose chain comes closest to ``target``
    (distinct proposals, distinct states per question; distance: the sum of the two log ratios' absolute values),
    from one untimed two-pass step per batch at each point, every step from the same initial weights and with the
    seed the timed steps give that batch (so that the timed two-pass steps run the chosen chain again). Sets both
    on the model and returns the grid's measurements; the calibration's optimiser state is freed."""
    model = stepper.model
    estimator = make_estimator("jsa_two_pass", top_k, proposals)
    grid = []
    for t in TEMPERATURES:
        for c in LOGIT_SCALES:
            model.retriever.temperature, scale.factor = t, c
            seen = [stepper.step(estimator, batch, seed=BATCH_SEED + b)[1] for b, batch in enumerate(batches)]
            p, s = (statistics.fmean(m[k] for m in seen) for k in ("distinct_proposals", "distinct_states"))
            grid.append({"temperature": t, "logit_scale": c, "distinct_proposals": round(p, 2),
                         "distinct_states": round(s, 2),
                         "distance": round(abs(math.log(p / target[0])) + abs(math.log(s / target[1])), 3)})
            common.say(f"  match-chain: temperature {t}, logit scale {c}: {p:.1f} proposals / {s:.1f} states")
    stepper.forget(estimator)
    best = min(grid, key=lambda g: g["distance"])
    model.retriever.temperature, scale.factor = best["temperature"], best["logit_scale"]
    common.say(f"  match-chain: chose temperature {best['temperature']}, logit scale {best['logit_scale']}")
    return {"target": list(target), "chosen": best, "grid": grid, "optimiser_freed": True}


def measure_training(args, batch_size: int, top_k: int, proposals: int, passages: int, max_passage_tokens: int
                     ) -> dict:
    """Mean step time of the first N steps of ``jsarag train`` per estimator (same seed, data order, index and
    shapes), from the loop's own per-step timer (``seconds`` in metrics.jsonl), step 1 excluded (warm-up)."""
    import torch

    from jsarag.config import load_config
    from jsarag.index import build_index
    from jsarag.pipeline import build_model, load_corpus
    from jsarag.train import distributed as dist
    from jsarag.train.loop import train

    steps = common.pick(args, "training_steps", 16, 8, 2)
    common.say(f"in training (jsarag train, same seed and data, mean over steps 2..{steps}):")
    work = common.scratch_folder("jsarag-training-cost-")
    corpus, examples = common.squad_setup(common.data_dir(args), batch_size * steps, passages, args.seed)
    (work / "corpus.jsonl").write_text("".join(json.dumps({"id": p.id, "title": p.title, "text": p.text}) + "\n"
                                               for p in corpus))
    (work / "train.jsonl").write_text("".join(json.dumps({"id": e.id, "question": e.query, "answers": list(e.answers),
                                                          "positive_ids": list(e.positive_ids)}) + "\n"
                                              for e in examples))
    overrides = [f"data.corpus={work / 'corpus.jsonl'}", f"data.train={work / 'train.jsonl'}", "data.dev=null",
                 "data.test=null", f"estimator.top_k={top_k}", f"estimator.jsa.num_proposals={proposals}",
                 f"generator.max_passage_tokens={max_passage_tokens}", f"train.steps={steps}",
                 f"train.batch_size={batch_size}", f"train.save_every={steps}", "train.tensorboard=false",
                 "train.progress=false", f"train.seed={args.seed}", f"index.path={work / 'index'}"]
    base = common.TINY_CONFIG if args.smoke else common.REPO / "configs" / "squad" / "base.yaml"
    cfg = load_config(base, overrides[:-1])
    with dist.autocast(torch.device("cpu"), cfg.train.precision):  # as the runs would encode it
        build_index(load_corpus(cfg.data), build_model(cfg).retriever.passage, progress=False).save(work / "index")
    out = {}
    for name in args.training_variants:
        extra, began = TRAINED[name], time.perf_counter()
        train(load_config(base, overrides + extra), work / name)
        records = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines()]
        done = [r for r in records if "loss" in r]
        seconds = [r["seconds"] for r in done[1:]]
        out[name] = {"mean_s": statistics.mean(seconds), "seconds": [round(s, 3) for s in seconds],
                     "wall_s": round(time.perf_counter() - began, 1)}
        if name.startswith("jsa"):
            for key in ("distinct_proposals", "distinct_states", "accept_rate", "candidates"):
                out[name][f"mean_{key}"] = statistics.mean(r[key] for r in done)
            out[name]["distinct_states_by_step"] = [round(r["distinct_states"], 2) for r in done]
        common.say(f"  {name}: {out[name]['mean_s']:.2f} s/step over steps 2..{steps}")
    rag = out["rag_sequence"]["mean_s"]
    return {"per_estimator": out, **{f"{name}_over_rag_sequence": out[name]["mean_s"] / rag for name in out
                                     if name != "rag_sequence"},
            "shape": {"batch_size": batch_size, "steps": steps, "top_k": top_k, "proposals": proposals,
                      "seed": args.seed,
                      "passages": passages, "max_passage_tokens": max_passage_tokens,
                      "data": str(common.data_dir(args)), "lr": str(base.relative_to(common.REPO))}}


# ---- report ---------------------------------------------------------------------------------------
def report(results: dict) -> str:
    f, verdict, d, shape = common.f, common.verdict, results, results["shape"]
    lines = ["## Step cost: JSA-RAG against RAG-Sequence and VRAG", "",
             "`python benchmarks/step_cost.py` (and `--quick` for a reduced shape). One optimiser step: "
             f"estimator forward under {shape.get('precision', 'bf16')} autocast, backward, AdamW step. MiniLM "
             "retriever, SmolLM2-135M-"
             f"Instruct + LoRA generator; B={shape['batch_size']} SQuAD questions (micro-batches of "
             f"{shape['micro_batch_size']}), K={shape['top_k']}, m={shape['proposals']}, "
             f"{shape['passages']} passages of at most {shape['max_passage_tokens']} tokens.", "",
             "| ratio | measured | target | |", "|---|---|---|---|",
             f"| JSA / RAG-Sequence, during training | {f(d.get('jsa_over_rag_sequence'))} | {TARGET} | "
             f"{verdict(d.get('jsa_over_rag_sequence'), TARGET)} |",
             f"| JSA / RAG-Sequence, at the initial weights | {f(d.get('jsa_over_rag_sequence_at_init'))} | "
             f"({TARGET}) | " + verdict(d.get('jsa_over_rag_sequence_at_init'), TARGET) + " |",
             f"| JSA as released / JSA | {f(d.get('released_over_jsa'))} | >= 2 | "
             f"{verdict(d.get('released_over_jsa'), '>= 2')} |",
             f"| VRAG (exact) / RAG-Sequence | {f(d.get('vrag_over_rag_sequence'))} | | |", "",
             "At the initial weights (same weights before every step, variants interleaved):", "",
             "| variant | median s / step | generator seqs without / with gradient | distinct proposals | "
             "distinct states | acceptance |", "|---|---|---|---|---|---|"]
    for name, v in d["variants"].items():
        lines.append(f"| {name} | {f(v['median_s'])} | {f(v.get('mean_nograd_seqs'), 1)} / "
                     f"{f(v.get('mean_grad_seqs'), 1)} | {f(v.get('mean_distinct_proposals'), 1)} | "
                     f"{f(v.get('mean_distinct_states'), 1)} | {f(v.get('mean_accept_rate'))} |")
    training = d.get("in_training")
    if training:
        t = training["shape"]
        lines += ["", f"During training (`jsarag train` for {t['steps']} steps from the same weights and data, "
                  f"B={t['batch_size']}; mean of the loop's per-step timer over steps 2..{t['steps']}):", "",
                  "| estimator | mean s / step |", "|---|---|"]
        lines += [f"| {name} | {f(v['mean_s'])} |" for name, v in training["per_estimator"].items()]
        jsa, at_init = training["per_estimator"]["jsa"], d["variants"].get("jsa", {})
        lines += ["", f"During these steps JSA's chain visited {f(jsa['mean_distinct_states'], 1)} distinct passages "
                  f"per question on average (per step: {', '.join(map(str, jsa['distinct_states_by_step']))}), "
                  f"out of {f(jsa['mean_distinct_proposals'], 1)} distinct proposals; on the fixed batch timed at "
                  f"the initial weights it visited {f(at_init.get('mean_distinct_states'), 1)} of "
                  f"{f(at_init.get('mean_distinct_proposals'), 1)}.",
                  "A JSA step runs one forward pass without gradient per distinct proposal and one forward and "
                  "backward pass per distinct chain state; a RAG-Sequence step runs a forward and backward pass "
                  "for each of the K passages. JSA is therefore cheaper when the chain settles on few passages "
                  "and dearer when it wanders over most of the candidate set, which depends on the question and "
                  "on how far the posterior retriever has moved from the prior. The training measurement pairs "
                  "the estimators on the same questions in the same order."]
    return "\n".join(lines)


def report_training(runs: dict[str, dict]) -> str:
    """``--training-only`` runs (``step_cost_training*.json``): steps of ``jsarag train`` per estimator, one table a
    run, with the machine's kernels and precision beside the figures."""
    f, verdict = common.f, common.verdict
    lines = ["### Step cost in training, by machine", "",
             "`python benchmarks/step_cost.py --training-only [--training-variants rag_sequence,jsa,jsa_unshared]`: "
             "the in-training measurement above alone, for several estimators and CPUs. `jsa_unshared` is JSA with "
             "`generator.share_prefix: false`: its scoring pass runs every prompt in full instead of running the "
             "prompts' shared head once per chunk. The runs are sequential, not interleaved: a slower machine "
             "during one of them shows in its ratio."]
    for d in runs.values():
        m, t = d["machine"], d["in_training"]
        shape = t["shape"]
        lines += ["", f"{m.get('cpu_model')}, {m.get('torch_threads')} torch threads" + common.precision_note(m)
                  + f"; load average at start / end {m['load_average_at_start'][0]:.1f} / "
                  f"{m['load_average_at_end'][0]:.1f}. B={shape['batch_size']}, K={shape['top_k']}, "
                  f"m={shape['proposals']}, {shape['passages']} passages of at most {shape['max_passage_tokens']} "
                  f"tokens, seed {shape.get('seed', 0)}, mean over steps 2..{shape['steps']}:", "",
                  "| estimator | mean s / step | / RAG-Sequence | distinct proposals / states per question |",
                  "|---|---|---|---|"]
        for name, v in t["per_estimator"].items():
            ratio = t.get(f"{name}_over_rag_sequence")
            mark = f" ({verdict(ratio, TARGET)} {TARGET})" if name == "jsa" else ""
            chain = (f"{f(v['mean_distinct_proposals'], 1)} / {f(v['mean_distinct_states'], 1)}"
                     if "mean_distinct_states" in v else "-")
            lines.append(f"| {name} | {f(v['mean_s'])} | {f(ratio) if ratio is not None else '1'}{mark} | {chain} |")
    if TRAINING_NOTES.is_file():
        lines += ["", TRAINING_NOTES.read_text().strip()]
    return "\n".join(lines)


def report_gpu(runs: dict[str, dict]) -> str:
    """Step cost on a GPU: one row per run (``benchmarks/results/gpu/step_cost_gpu_*.json``)."""
    f, verdict = common.f, common.verdict
    first = next(iter(runs.values()))
    m, shape = first["machine"], first["shape"]
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    lines = ["### Step cost on a GPU", "",
             f"{common.gpu_name(m)}, {m.get('cpu_model')} ({m.get('usable_cores')} cores), Python {m.get('python')}; "
             f"{versions}. The GPU machine has no access to the packaged weights, so these runs use "
             "`--random-weights`: the MiniLM and SmolLM2-135M architectures and tokenizers with random weights "
             "(LoRA on the generator as on the CPU). The arithmetic of a step is the same, but a random posterior "
             "is flat, so the sampler proposes more distinct passages than a pretrained one would (see the "
             "distinct proposals below, against K): JSA's figure here is an upper bound on its cost at the "
             "initial weights, and nothing was measured during training on the GPU.", "",
             "    python benchmarks/step_cost.py --device cuda --no-training --random-weights \\",
             "        --retriever CONFIG_AND_TOKENIZER_DIR --generator CONFIG_AND_TOKENIZER_DIR "
             "[--micro-batch-size 4] --repeats 5", "",
             "| micro-batch | RAG-Seq s | VRAG s | JSA s | JSA released s | JSA / RAG-Seq | released / JSA | "
             "distinct proposals / states | peak GPU MiB (RAG-Seq / JSA / released) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for d in runs.values():
        v = d["variants"]
        lines.append(
            f"| {d['shape']['micro_batch_size']} of B={d['shape']['batch_size']} | "
            f"{f(v['rag_sequence']['median_s'])} | "
            f"{f(v['vrag']['median_s'])} | {f(v['jsa']['median_s'])} | {f(v['jsa_released']['median_s'])} | "
            f"{f(d['jsa_over_rag_sequence'])} ({verdict(d['jsa_over_rag_sequence'], '<= 1.0')}) | "
            f"{f(d['released_over_jsa'])} ({verdict(d['released_over_jsa'], '>= 2')}) | "
            f"{f(v['jsa'].get('mean_distinct_proposals'), 1)} / {f(v['jsa'].get('mean_distinct_states'), 1)} | "
            f"{f(v['rag_sequence'].get('mean_gpu_peak_mib'), 0)} / {f(v['jsa'].get('mean_gpu_peak_mib'), 0)} / "
            f"{f(v['jsa_released'].get('mean_gpu_peak_mib'), 0)} |")
    jsa, rag = first["variants"]["jsa"], first["variants"]["rag_sequence"]
    lines += ["", f"K={shape['top_k']}, m={shape['proposals']}, {shape['passages']} passages of at most "
              f"{shape['max_passage_tokens']} tokens, {shape['timed_rounds']} timed rounds after one warm-up round; "
              "medians of per-round ratios. Per step (first run), JSA ran "
              f"{f(jsa.get('mean_nograd_seqs'), 0)} generator sequences without gradient and "
              f"{f(jsa.get('mean_grad_seqs'), 0)} with gradient, against RAG-Sequence's "
              f"{f(rag.get('mean_grad_seqs'), 0)} with gradient: with random "
              "weights the chain visits more distinct passages than K, which is what makes JSA dearer here."]
    return "\n".join(lines)


def warm_rounds(d: dict) -> slice:
    """The timed rounds on batches that had run before (as warm-up or timed): on a GPU the first step of each new
    input shape pays for kernel selection and allocator growth. Runs from before ``warmup_rounds`` was recorded
    warmed up on batch 0 only."""
    return slice(max(0, d["shape"]["batches"] - d["shape"].get("warmup_rounds", 1)), None)


def report_scoring_gpu(runs: dict[str, dict]) -> str:
    """JSA's scoring modes on a GPU (``benchmarks/gpu_checks.sh``:
    ``benchmarks/results/gpu/step_cost_scoring_gpu_*.json``), one row per run."""
    f = common.f
    first = next(iter(runs.values()))
    m = first["machine"]
    lines = ["### JSA scoring on a GPU", "",
             f"{common.gpu_name(m)}, torch {m['versions'].get('torch')}, {first['shape']['precision']} autocast; "
             "`benchmarks/gpu_checks.sh` (`step_cost.py --device cuda --no-training --random-weights`): MiniLM's and "
             "SmolLM2-135M's architectures with random weights, LoRA; B=4, K=10, m=50, 1,000 SQuAD passages of at "
             "most 192 tokens. A random posterior is nearly flat; a lower `--temperature` (the retriever's) sharpens "
             "it, so that the chain visits about as many distinct states per question as trained weights do (~4); "
             "multiplying the random generator's logits (`--logit-scale`) makes its likelihoods differ between "
             "passages, so that the chain also rejects as many of its proposals as trained weights make it reject "
             "(SQuAD on the CPU: ~11 distinct proposals for ~4 states, 31-46% kept; `--match-chain 11,4` picks both "
             "from a grid).",
             "", "| retriever temperature, logit scale | micro-batch | distinct proposals / states per question "
             "(kept) | "
             "one_pass / two_pass | two_pass / RAG-Seq | one_pass / RAG-Seq | auto / RAG-Seq | peak GPU MiB "
             "(RAG-Seq / two / one) |", "|---|---|---|---|---|---|---|---|"]

    def ratio(d, a, b, part):
        return common.ratio_summary(d["variants"][a]["times_s"][part],
                                    d["variants"][b]["times_s"][part])["median_of_round_ratios"]

    cold, kept_shares = [], []
    for d in runs.values():
        v, part = d["variants"], warm_rounds(d)
        two, one = v["jsa_two_pass"], v["jsa_one_pass"]
        mixed = part.start > 0  # some timed rounds ran a batch for the first time: both figures shown
        cells = [f(ratio(d, a, b, part)) + (f" ({f(ratio(d, a, b, slice(None)))})" if mixed else "")
                 for a, b in (("jsa_one_pass", "jsa_two_pass"), ("jsa_two_pass", "rag_sequence"),
                              ("jsa_one_pass", "rag_sequence"), ("jsa", "rag_sequence"))]
        for x in v.values():
            warm = common.median(x["times_s"][part])
            cold += [t / warm for t in x["times_s"][:part.start]]
        kept = two["mean_distinct_states"] / two["mean_distinct_proposals"]
        kept_shares.append(kept)
        lines.append(f"| {d['shape']['retriever_temperature']}, {d['shape'].get('generator_logit_scale', 1.0):g} | "
                     f"{d['shape']['micro_batch_size']} of "
                     f"{d['shape']['batch_size']} | {f(two['mean_distinct_proposals'], 1)} / "
                     f"{f(two['mean_distinct_states'], 1)} ({100 * kept:.0f}%; one_pass: "
                     f"{f(one['mean_distinct_proposals'], 1)} / {f(one['mean_distinct_states'], 1)}) | "
                     + " | ".join(cells) + f" | {f(v['rag_sequence']['mean_gpu_peak_mib'], 0)} / "
                     f"{f(two['mean_gpu_peak_mib'], 0)} / {f(one['mean_gpu_peak_mib'], 0)} |")
    counts = sorted({len(d["variants"]["rag_sequence"]["times_s"][warm_rounds(d)]) for d in runs.values()})
    kept_calibration = [d for d in runs.values() if "calibration" in d and not d["calibration"].get("optimiser_freed")]
    low = [k for k in kept_shares if k < 0.5]
    low_ratios = [ratio(d, "jsa_one_pass", "jsa_two_pass", warm_rounds(d)) for d, k in zip(runs.values(), kept_shares)
                  if k < 0.5]
    lines += ["", "Medians of per-round ratios over the timed rounds whose batch had run before "
              f"({counts[0]}{f' to {counts[-1]}' if len(counts) > 1 else ''} rounds a run)" + (
                  f"; in brackets, over all timed rounds, which include a batch's first run (up to "
                  f"{max(cold):.0f}x its later steps)" if cold else "") + ". "
              + (f"{len(low)} of the {len(kept_shares)} runs kept under half of their distinct proposals, as trained "
                 "weights do, where one pass loses to two on the CPU (section 7); there one pass against two ran "
                 f"{f(min(low_ratios))}-{f(max(low_ratios))}. " if low else
                 f"Every run here kept {100 * min(kept_shares):.0f}% or more of its distinct proposals, where one "
                 "pass wins on the CPU as well (above ~60%: section 7). ")
              + (f"The peak GPU memory of the {'run' if len(kept_calibration) == 1 else 'runs'} chosen by "
                 "`--match-chain` includes the AdamW state of its calibration steps (freed since). "
                 if kept_calibration else "")
              + "`auto` runs one pass on CUDA: the same computation as `one_pass`, timed right after it; their "
              "difference is this table's noise. With micro-batches of 1, "
              "two passes draw other proposals than one pass after the first micro-batch: the second pass's LoRA "
              "dropout advances the random stream."]
    return "\n".join(lines)


def report_scoring(runs: dict[str, dict]) -> str:
    """JSA's scoring modes against each other (``--variants rag_sequence,jsa_two_pass,jsa_one_pass``), one table
    row per run, inside the hand-written analysis of benchmarks/notes/step_cost_scoring.md."""
    f = common.f
    rows = ["| run | one_pass / two_pass | two_pass / RAG-Seq | one_pass / RAG-Seq | distinct proposals / states "
            "kept |", "|---|---|---|---|---|"]
    for name, d in runs.items():
        seed = d["shape"].get("seed", name.rpartition("_seed")[2] if "_seed" in name else 0)
        r, jsa = d["ratios"], d["variants"]["jsa_two_pass"]
        proposals, states = jsa["mean_distinct_proposals"], jsa["mean_distinct_states"]
        rows.append(f"| seed {seed} | {f(r['one_pass_over_two_pass']['median_of_round_ratios'])} (ratio of medians "
                    f"{f(r['one_pass_over_two_pass']['ratio_of_medians'])}) | {f(d['two_pass_over_rag_sequence'])} | "
                    f"{f(d['one_pass_over_rag_sequence'])} | {f(proposals)} / {f(states)} "
                    f"({100 * states / proposals:.0f}%) |")
    return "\n".join(["## JSA scoring: one pass against two passes", "",
                      "The table is rendered from `benchmarks/results/step_cost_scoring*.json`; the text around it "
                      "is written by hand (`benchmarks/notes/step_cost_scoring.md`).", "",
                      SCORING_NOTES.read_text().strip("\n").replace("{table}", "\n".join(rows))])


def main(argv=None) -> None:
    args = parse_args(argv)
    results = common.write_results(measure(args), args, f"{NAME}_training" if args.training_only else NAME)
    print(report_training({"run": results}) if args.training_only else report(results))


if __name__ == "__main__":
    main()
