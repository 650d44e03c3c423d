"""Shared helpers for the benchmark scripts: interleaved timing, robust statistics, JSON output and
a description of the machine the figures came from.

Every comparison is timed as interleaved pairs after warm-up: A, B, A, B, ... so that background load
(a shared machine, frequency changes, another job) hits both sides alike. The headline figure is the
median over pairs of the per-pair ratio A_i / B_i; absolute seconds are reported beside it.

Conventions for every script:
- defaults are the real measurement; ``--quick`` is a reduced run (under about two minutes);
- human-readable lines go to stdout, and the LAST stdout line is one JSON object with all figures;
- ``--out FILE.json`` also writes that JSON object to a file.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parent.parent
def shared_data() -> Path:
    """The project's real datasets: $JSARAG_SHARED_DATA, or ../shared/data beside the checkout."""
    env = os.environ.get("JSARAG_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


DEFAULT_DATA = shared_data() / "squad_v1_dev"

# Library downloads and loaders print progress bars to stderr; a benchmark needs none of them.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def quiet_libraries() -> None:
    """Silence transformers' loading bars and advisory warnings (they would interleave with results)."""
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers is a dependency, but never fail on this
        pass


# ---- statistics ---------------------------------------------------------------------------------
def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), without numpy."""
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


# ---- timing -------------------------------------------------------------------------------------
@dataclass
class Pair:
    """Result of an interleaved A/B timing: per-repeat seconds of each side and their ratios."""

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
        return {
            "ratio_a_over_b": self.ratio,
            "ratio": summarize(self.ratios),
            f"{self.a_name}_seconds": summarize(self.a_seconds),
            f"{self.b_name}_seconds": summarize(self.b_seconds),
            "repeats": len(self.ratios),
            "samples": {f"{self.a_name}_seconds": list(self.a_seconds),
                        f"{self.b_name}_seconds": list(self.b_seconds)},
        }


def _time_once(fn: Callable[[], Any], before: Callable[[], None] | None) -> tuple[float, Any]:
    if before is not None:
        before()
    gc.collect()
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    return elapsed, result  # whatever the call built is freed by the caller, outside the timed region


def interleaved(a: Callable[[], Any], b: Callable[[], Any], *, repeats: int, warmup: int = 1,
                a_name: str = "ours", b_name: str = "peer", before: Callable[[], None] | None = None,
                progress: Callable[[str], None] | None = None, keep_last: bool = False) -> Pair:
    """Time ``a`` and ``b`` alternately: ``warmup`` untimed rounds, then ``repeats`` rounds A, B.

    ``before`` runs untimed before every call (e.g. ``zero_grad``). Python's garbage collector runs
    before each call and stays enabled, as in real use. Return values are dropped after the clock stops
    (``keep_last``: the last round's are kept in ``pair.a_last`` / ``pair.b_last``).
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for _ in range(warmup):
        _time_once(a, before)
        _time_once(b, before)
    pair = Pair(a_name, b_name)
    for i in range(repeats):
        last = i == repeats - 1 and keep_last
        seconds, result = _time_once(a, before)
        pair.a_seconds.append(seconds)
        pair.a_last = result if last else None
        del result
        seconds, result = _time_once(b, before)
        pair.b_seconds.append(seconds)
        pair.b_last = result if last else None
        del result
        if progress is not None:
            progress(f"  repeat {i + 1}/{repeats}: {a_name} {pair.a_seconds[-1]:.4f}s  "
                     f"{b_name} {pair.b_seconds[-1]:.4f}s  ratio {pair.ratios[-1]:.3f}")
    return pair


def describe_pair(label: str, pair: Pair, *, unit: float = 1.0, unit_name: str = "s") -> str:
    """One human-readable line: both medians and the median ratio with its IQR."""
    r = summarize(pair.ratios)
    a, b = median(pair.a_seconds) / unit, median(pair.b_seconds) / unit
    return (f"{label}: {pair.a_name} {a:.4g}{unit_name}, {pair.b_name} {b:.4g}{unit_name} (medians); "
            f"{pair.a_name}/{pair.b_name} = {r['median']:.4f} [IQR {r['q1']:.4f}..{r['q3']:.4f}, "
            f"n={r['n']}]")


# ---- machine description ------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in flags]
    except OSError:
        pass
    return []


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, thread settings, load, the precision ``train.precision: auto`` resolves to here,
    and the versions of the libraries involved."""
    import torch

    from jsarag.train import distributed as dist

    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cpu_capability": dist.cpu_capability(),
        "precision_auto": dist.resolve_precision("auto", torch.device("cuda" if torch.cuda.is_available() else "cpu")),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {name: _version(name) for name in (
            "jsarag", "torch", "transformers", "tokenizers", "sentence-transformers", "faiss-cpu", "numpy")},
    }
    try:
        import faiss

        info["faiss_omp_threads"] = faiss.omp_get_max_threads()
    except Exception:  # pragma: no cover
        info["faiss_omp_threads"] = None
    return info


# ---- command line and output --------------------------------------------------------------------
def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced run (under about two minutes)")
    parser.add_argument("--out", type=Path, default=None, help="also write the final JSON object here")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch (and faiss) threads; default: the libraries' own default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="print every timed repeat")
    return parser


def pick(args: argparse.Namespace, name: str, full: Any, quick: Any) -> Any:
    """An option's value: what the user gave, else the quick or the full default."""
    value = getattr(args, name)
    if value is not None:
        return value
    return quick if args.quick else full


def apply_threads(threads: int | None) -> None:
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except Exception:  # pragma: no cover
        pass


def say(text: str = "") -> None:
    print(text, flush=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


def emit(result: dict[str, Any], out: Path | None) -> None:
    """Print ``result`` as the last stdout line (one JSON object) and write it to ``out`` if given."""
    if isinstance(result.get("machine"), dict) and hasattr(os, "getloadavg"):
        result["machine"]["load_average_at_end"] = list(os.getloadavg())
    text = json.dumps(_jsonable(result), sort_keys=False)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(_jsonable(result), indent=2) + "\n")
        say(f"wrote {out}")
    sys.stdout.flush()
    print(text, flush=True)
