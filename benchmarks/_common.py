"""What the benchmark scripts share: sizes and command line, the machine, data and models, the training
step they time, interleaved timing and statistics, results files and report formatting.

Every script has the same shape:

    measure(args) -> dict      does the work; JSON-able results with a "machine" section
    report(results) -> str     renders its section of docs/benchmarks.md (benchmarks/report.py joins them)
    main()                     parses arguments, measures, writes benchmarks/results/NAME.json, prints the report

Sizes: the defaults are the real measurement; ``--quick`` a reduced one (minutes); ``--smoke`` the smallest
run that goes through every part (tiny random models and the shipped SQuAD sample: seconds), for
tests/test_benchmarks_smoke.py. Timings interleave the variants round by round (A, B, A, B, ...) after a
warm-up, so that background load on a shared machine hits them alike; headline figures are medians of
per-round ratios, absolute seconds beside them.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import json
import math
import os
import platform
import random
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
DPR_WIKIPEDIA_PASSAGES = 21_015_324  # the knowledge base the extrapolations are for
SQUAD_MINI = REPO / "src" / "jsarag" / "resources" / "datasets" / "squad_mini"
TINY_CONFIG = REPO / "configs" / "tiny.yaml"
MODELS = {"retriever": "builtin:minilm", "generator": "builtin:smollm2-135m-instruct"}
TINY_MODELS = {"retriever": "builtin:tiny-bert", "generator": "builtin:tiny-llama"}

# Library downloads and loaders print progress bars to stderr; a benchmark needs none of them. Tokenizers run on
# one thread unless the caller says otherwise (the CPU timings share two cores with torch's threads); jsarag
# itself leaves the tokenizers' default, all cores, which a GPU measurement of encoding should keep
# (benchmarks/gpu_checks.sh sets TOKENIZERS_PARALLELISM=true there).
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def shared_data() -> Path:
    """The project's real datasets: $JSARAG_SHARED_DATA, or ../shared/data beside the checkout."""
    env = os.environ.get("JSARAG_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


SQUAD = shared_data() / "squad_v1_dev"


def quiet_libraries() -> None:
    """No loading bars or advisory warnings from transformers / peft between the progress lines."""
    import warnings

    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


# ---- command line -------------------------------------------------------------------------------
def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sizes = p.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help="reduced run (minutes)")
    sizes.add_argument("--smoke", action="store_true", help="smallest run: tiny random models, shipped sample data")
    p.add_argument("--out", type=Path, default=None,
                   help="results file (default benchmarks/results/NAME.json, NAME_quick.json, NAME_smoke.json)")
    p.add_argument("--threads", type=int, default=None, help="torch (and faiss) threads; default: the libraries'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="print every timed repeat")
    return p


def size(args: argparse.Namespace) -> str:
    return "smoke" if args.smoke else "quick" if args.quick else "full"


def pick(args: argparse.Namespace, name: str, full: Any, quick: Any, smoke: Any = None) -> Any:
    """An option's value: what the user gave, else the default of the run's size (smoke falls back to quick)."""
    value = getattr(args, name)
    if value is not None:
        return value
    return {"full": full, "quick": quick, "smoke": quick if smoke is None else smoke}[size(args)]


def models(args: argparse.Namespace) -> dict[str, str]:
    """Retriever and generator names: the packaged pretrained ones, or tiny random ones for a smoke run."""
    chosen = TINY_MODELS if args.smoke else MODELS
    return {k: getattr(args, k, None) or v for k, v in chosen.items()}


def apply_threads(threads: int | None) -> None:
    if threads is None:
        return
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def say(*parts) -> None:
    print(*parts, flush=True)


# ---- machine ------------------------------------------------------------------------------------
def _cpuinfo(field_name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(field_name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# Environment variables that cap the kernels torch, oneDNN and MKL pick, below what the CPU has.
KERNEL_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def machine(device: str = "cpu") -> dict[str, Any]:
    """Where the figures came from: CPU, cores, threads, memory, load, library versions, and in ``precision``
    the training log's header (``jsarag.train.distributed.precision_header``): the CPU's kernel capability and
    native bf16, and what ``train.precision: auto`` resolves to on ``device``."""
    import faiss
    import torch

    from jsarag.train import distributed as dist

    flags = set((_cpuinfo("flags") or "").split())
    try:
        memory_gib = round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)
    except (ValueError, OSError):
        memory_gib = None
    return {
        "cpu_model": _cpuinfo("model name") or platform.processor() or platform.machine(),
        "cpu_flags": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma") if f in flags],
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": memory_gib,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "faiss_omp_threads": faiss.omp_get_max_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "tokenizers_parallelism_env": os.environ.get("TOKENIZERS_PARALLELISM"),
        # Set when a run stands in for an older CPU by holding the kernels back (e.g. at AVX2).
        "kernel_limits_env": {name: os.environ[name] for name in KERNEL_LIMITS if name in os.environ},
        "load_average_at_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in ("jsarag", "torch", "transformers", "peft", "faiss-cpu",
                                                       "sentence-transformers", "numpy")},
        "precision": dist.precision_header("auto", torch.device(device)),
    }


def gpu_name(m: dict) -> str | None:
    """The GPU of a results file's machine section (the run header's, or the older top-level key)."""
    return m.get("precision", {}).get("gpu") or m.get("gpu")


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (monotonic), MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- statistics and interleaved timing ----------------------------------------------------------
def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default)."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return quantile(values, 0.5)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """median, quartiles, IQR, min, max and count of a sample."""
    q1, q3 = quantile(values, 0.25), quantile(values, 0.75)
    return {"median": median(values), "q1": q1, "q3": q3, "iqr": q3 - q1,
            "min": min(values) if values else float("nan"), "max": max(values) if values else float("nan"),
            "n": len(values)}


def ratio_summary(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """A against B timed in the same rounds: the median of per-round ratios (the headline), the ratio of medians."""
    per_round = [x / y for x, y in zip(a, b)]
    return {"median_of_round_ratios": median(per_round), "ratio_of_medians": median(a) / median(b),
            "round_ratios": [round(x, 4) for x in per_round]}


@dataclass
class Pair:
    """An interleaved A/B timing: per-repeat seconds of each side and their ratios."""

    a_name: str
    b_name: str
    a_seconds: list[float] = field(default_factory=list)
    b_seconds: list[float] = field(default_factory=list)
    a_last: Any = None  # the last timed call's return values, when asked to keep them
    b_last: Any = None

    @property
    def ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.a_seconds, self.b_seconds)]

    @property
    def ratio(self) -> float:
        """Median over repeats of A_i / B_i (the headline figure)."""
        return median(self.ratios)

    @property
    def inverse_ratios(self) -> list[float]:
        """B_i / A_i: for throughputs (work per second of A over that of B, same work on both sides)."""
        return [b / a for a, b in zip(self.a_seconds, self.b_seconds)]

    def summary(self) -> dict[str, Any]:
        return {"ratio_a_over_b": self.ratio, "ratio": summarize(self.ratios),
                f"{self.a_name}_seconds": summarize(self.a_seconds),
                f"{self.b_name}_seconds": summarize(self.b_seconds), "repeats": len(self.ratios),
                "samples": {f"{self.a_name}_seconds": list(self.a_seconds),
                            f"{self.b_name}_seconds": list(self.b_seconds)}}

    def describe(self, label: str, *, unit: float = 1.0, unit_name: str = "s") -> str:
        """One line: both medians and the median ratio with its IQR."""
        r = summarize(self.ratios)
        a, b = median(self.a_seconds) / unit, median(self.b_seconds) / unit
        return (f"{label}: {self.a_name} {a:.4g}{unit_name}, {self.b_name} {b:.4g}{unit_name} (medians); "
                f"{self.a_name}/{self.b_name} = {r['median']:.4f} [IQR {r['q1']:.4f}..{r['q3']:.4f}, n={r['n']}]")


def time_once(fn: Callable[[], Any], before: Callable[[], None] | None) -> tuple[float, Any]:
    if before is not None:
        before()
    gc.collect()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result  # what the call built is freed by the caller, untimed


def interleaved(a: Callable[[], Any], b: Callable[[], Any], *, repeats: int, warmup: int = 1,
                a_name: str = "ours", b_name: str = "peer", before: Callable[[], None] | None = None,
                progress: Callable[[str], None] | None = None, keep_last: bool = False) -> Pair:
    """Time ``a`` and ``b`` alternately: ``warmup`` untimed rounds, then ``repeats`` rounds A, B.

    ``before`` runs untimed before every call (e.g. ``zero_grad``); the garbage collector runs before each
    call. Return values are dropped after the clock stops (``keep_last``: the last round's are kept).
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for _ in range(warmup):
        time_once(a, before)
        time_once(b, before)
    pair = Pair(a_name, b_name)
    for i in range(repeats):
        last = keep_last and i == repeats - 1
        seconds, result = time_once(a, before)
        pair.a_seconds.append(seconds)
        pair.a_last = result if last else None
        del result
        seconds, result = time_once(b, before)
        pair.b_seconds.append(seconds)
        pair.b_last = result if last else None
        del result
        if progress is not None:
            progress(f"  repeat {i + 1}/{repeats}: {a_name} {pair.a_seconds[-1]:.4f}s  "
                     f"{b_name} {pair.b_seconds[-1]:.4f}s  ratio {pair.ratios[-1]:.3f}")
    return pair


# ---- data and models ----------------------------------------------------------------------------
def data_dir(args: argparse.Namespace) -> Path:
    """SQuAD v1.1 dev from the shared data, or the shipped sample for a smoke run."""
    return getattr(args, "data", None) or (SQUAD_MINI if args.smoke else SQUAD)


def squad_setup(data: Path, num_examples: int, num_passages: int, seed: int, split: str = "train"):
    """``num_examples`` questions of ``split`` (seeded choice) and a corpus of ``num_passages`` paragraphs that
    holds their gold paragraphs plus randomly chosen others (in the file's order)."""
    from jsarag.data import Corpus, load_examples

    full = Corpus.from_jsonl(data / "corpus.jsonl")
    examples = load_examples(data / f"{split}.jsonl", full)
    rng = random.Random(seed)
    chosen = rng.sample(examples, num_examples)
    gold = {full.row(p) for e in chosen for p in e.positive_ids}
    others = [r for r in range(len(full)) if r not in gold]
    rows = sorted(gold | set(rng.sample(others, max(0, min(len(others), num_passages - len(gold))))))
    corpus = Corpus([full[r] for r in rows], source=f"{data.name}[{len(rows)} paragraphs, seed {seed}]")
    return corpus, chosen


def scratch_folder(prefix: str) -> Path:
    """A new temporary folder, removed when this process exits (not after a kill): a benchmark's scratch data
    (training runs, model copies) is gigabytes, and a benchmark run from the tests must leave none behind."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


def random_weights_copy(name: str, causal_lm: bool, seed: int) -> str:
    """A folder with ``name``'s config and tokenizer and freshly initialised weights (seeded), removed when this
    process exits."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    from jsarag.models.pretrained import resolve_model

    source = Path(resolve_model(name))
    torch.manual_seed(seed)
    model = (AutoModelForCausalLM if causal_lm else AutoModel).from_config(AutoConfig.from_pretrained(str(source)))
    target = scratch_folder("jsarag-random-weights-") / source.name
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(target)
    for extra in ("generation_config.json", "chat_template.jinja"):
        if (source / extra).is_file():
            shutil.copy(source / extra, target / extra)
    return str(target)


def build_rag(corpus, *, retriever: str, generator: str, max_passage_tokens: int, lora: bool = True, seed: int = 0,
              vectors=None, random_weights: bool = False, temperature: float | None = None):
    """The RAG model as the training loop builds it (``jsarag.pipeline.build_model``, seeded first: LoRA
    initialises randomly) with a Flat index over ``corpus``: passages encoded by the frozen passage encoder
    under the resolved ``auto`` precision, or ``vectors`` when given (that encoding, saved by a parent process).
    ``temperature``: the retriever's (``retriever.temperature``; default the config's)."""
    import torch

    from jsarag.config import Config, GeneratorConfig, LoraConfig, RetrieverConfig
    from jsarag.index import PassageIndex, build_index
    from jsarag.pipeline import build_model
    from jsarag.train import distributed as dist

    if random_weights:
        retriever = random_weights_copy(retriever, causal_lm=False, seed=seed)
        generator = random_weights_copy(generator, causal_lm=True, seed=seed)
    cfg = Config(retriever=RetrieverConfig(model=retriever, **({} if temperature is None else
                                                               {"temperature": temperature})),
                 generator=GeneratorConfig(model=generator, lora=LoraConfig(enabled=lora),
                                           max_passage_tokens=max_passage_tokens))
    dist.seed_everything(seed)
    model = build_model(cfg)
    if vectors is None:
        with dist.autocast(torch.device("cpu"), "auto"):
            index = build_index(corpus, model.retriever.passage, progress=False)
    else:
        index = PassageIndex.from_vectors(vectors, corpus_hash=corpus.fingerprint(), corpus_source=corpus.source,
                                          encoder=model.retriever.passage.identity())
    model.retriever.attach(index, corpus)
    return model, cfg


class ScoreCounter:
    """Counts the (prompt, answer) sequences the generator runs, with and without gradient, by wrapping the
    instance's ``_chunk_logprobs`` (jsarag's source is untouched)."""

    def __init__(self, generator):
        self._orig = generator._chunk_logprobs
        generator._chunk_logprobs = self
        self.reset()

    def reset(self) -> None:
        self.counts = {f"{g}_{what}": 0 for g in ("nograd", "grad") for what in ("seqs", "tokens", "real_tokens")}

    def __call__(self, prompts, targets, length):
        import torch

        key = "grad" if torch.is_grad_enabled() else "nograd"
        self.counts[f"{key}_seqs"] += len(prompts)
        self.counts[f"{key}_tokens"] += len(prompts) * (max(map(len, prompts)) + length)  # as run, padded
        self.counts[f"{key}_real_tokens"] += sum(len(p) + len(t) for p, t in zip(prompts, targets))
        return self._orig(prompts, targets, length)


class Stepper:
    """The training loop's optimiser step on a fixed model, every step from the same initial weights.

    A step: for each micro-batch the estimator's forward under the autocast of ``precision`` and the backward of
    its share of the loss, then the AdamW step (``jsarag.train.optim.build_optimizer``) and ``zero_grad``.
    Gradient clipping and norm logging are left out (milliseconds). Each estimator gets its own optimiser over
    the components it trains (the passage encoder frozen), its AdamW state allocated before any timed step;
    the trainable weights are copied back before every step, outside the timed region.
    """

    def __init__(self, model, optim_cfg, device, precision: str):
        import torch

        from jsarag.train.optim import component_parameters

        self.model, self.optim_cfg, self.device, self.precision = model, optim_cfg, device, precision
        model.set_trainable({"prior", "posterior", "generator"})
        self.initial = [(p, p.detach().clone()) for ps in component_parameters(model).values() for p in ps]
        self.optimizers: dict[int, Any] = {}
        self.torch = torch

    def restore(self) -> None:
        with self.torch.no_grad():
            for p, p0 in self.initial:
                p.copy_(p0)

    def _optimizer(self, estimator):
        self.model.set_trainable(set(estimator.trains) - {"passage"})
        if id(estimator) not in self.optimizers:
            from jsarag.train.optim import build_optimizer

            opt = build_optimizer(self.model, self.optim_cfg)
            for group in opt.param_groups:  # AdamW's state allocated now (zero gradients), untimed
                for p in group["params"]:
                    p.grad = self.torch.zeros_like(p)
            opt.step()
            opt.zero_grad(set_to_none=True)
            self.optimizers[id(estimator)] = opt
            self.restore()
        return self.optimizers[id(estimator)]

    def forget(self, estimator) -> None:
        """Free the optimiser (and its AdamW state) kept for ``estimator``, e.g. one used only to calibrate."""
        self.optimizers.pop(id(estimator), None)

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def step(self, estimator, micro_batches, seed: int, around: Callable[[], Any] = contextlib.nullcontext
             ) -> tuple[float, dict[str, float]]:
        """Seconds of one step from the initial weights, and the estimator's metrics averaged over micro-batches.
        ``around()`` is a context entered just outside the timed region (e.g. a profiler)."""
        from torch.profiler import record_function

        from jsarag.train import distributed as dist

        torch, opt = self.torch, self._optimizer(estimator)
        self.restore()
        opt.zero_grad(set_to_none=True)
        gc.collect()
        torch.manual_seed(seed)  # same dropout masks and proposals for every variant
        sums: dict[str, float] = {}
        with around():
            self.sync()
            began = time.perf_counter()
            for mb in micro_batches:
                with record_function("step/forward"), dist.autocast(self.device, self.precision):
                    loss, metrics = self.model(mb, estimator)
                with record_function("step/backward"):
                    (loss / len(micro_batches)).backward()
                del loss
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + value / len(micro_batches)
            with record_function("step/optimizer"):
                opt.step()
                opt.zero_grad(set_to_none=True)
            self.sync()
            seconds = time.perf_counter() - began
        return seconds, sums


# ---- results files ------------------------------------------------------------------------------
def jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


def write_results(results: dict, args: argparse.Namespace, name: str) -> dict:
    """``results`` (with the load average at the end added to its machine section) as JSON in ``args.out``, or
    benchmarks/results/NAME.json (NAME_quick.json, NAME_smoke.json for the smaller sizes); what was written."""
    results.setdefault("machine", {})["load_average_at_end"] = list(os.getloadavg())
    path = args.out or RESULTS / f"{name}{'' if size(args) == 'full' else '_' + size(args)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    written = jsonable(results)
    path.write_text(json.dumps(written, indent=2) + "\n")
    say(f"wrote {path}")
    return written


def load_results(folder: Path, pattern: str) -> dict[str, dict]:
    """The results files of ``folder`` matching ``pattern`` (a glob), by name without ``.json``, sorted."""
    return {str(p.relative_to(folder).with_suffix("")): json.loads(p.read_text())
            for p in sorted(folder.glob(pattern))}


# ---- report formatting --------------------------------------------------------------------------
def f(value, digits: int = 2, pct: bool = False) -> str:
    if value is None:
        return "-"
    if pct:
        return f"{100 * value:+.1f}%"
    return f"{value:.{digits}f}"


def verdict(value, target: str) -> str:
    if value is None:
        return "not measured"
    op, bound = target.split()
    ok = value <= float(bound) if op == "<=" else value >= float(bound)
    return "met" if ok else "**not met**"


def precision_note(m: dict) -> str:
    """"; torch AVX512 kernels, native bf16, `train.precision: auto` resolves to bf16" from a machine section
    (older results: the flat keys they had, or nothing)."""
    header = m.get("precision")
    limits = " ".join(f"{k}={v}" for k, v in m.get("kernel_limits_env", {}).items())
    held = f" (held there by `{limits}`)" if limits else ""
    if isinstance(header, dict):
        return f"; torch {header['cpu']}{held}, `train.precision: auto` resolves to {header['precision']}"
    if "precision_auto" in m:
        return f"; torch {m['cpu_capability']}, `train.precision: auto` resolves to {m['precision_auto']}"
    return ""


def machine_lines(m: dict, run: str) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    return [f"- CPU: {m.get('cpu_model')} ({', '.join(m.get('cpu_flags', []))}), "
            f"{m.get('usable_cores', m.get('logical_cores'))} cores, torch threads {m.get('torch_threads')}, "
            f"{m.get('memory_gib', '?')} GiB" + precision_note(m),
            f"- {m.get('platform')}, Python {m.get('python')}; {versions}",
            f"- load average at start / end of the {run} run: {m.get('load_average_at_start')} / "
            f"{m.get('load_average_at_end')}"]
