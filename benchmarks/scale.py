"""Paper scale: a DPR-like knowledge base of millions of passages through the corpus store.

For each corpus size (synthetic 100-word passages with DPR-style ids, written as ``psgs_w100.tsv``):
1. ``jsarag data convert dpr`` (a subprocess): wall time, passages/s, peak RSS, store size on disk;
2. a fresh process opens the store: seconds to open, the RSS it adds after opening and after 10,000
   random lookups by row and by id;
3. for the largest size only: a Flat index of random vectors with the tiny encoder's identity, then
   ``jsarag ask`` with configs/tiny.yaml's models: wall time from the command's start to its answer.

    python benchmarks/scale.py --quick      # 100k, 300k, 1M passages (~5 minutes on 2 cores)
    python benchmarks/scale.py              # 100k, 1M, 5M passages

Writes the plot of open time and RSS against corpus size into docs/scale/; the last stdout line is
one JSON object (``passages``, ``open_seconds``, ``corpus_rss_mib``, ``ask_first_answer_seconds``, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, base_parser, emit, machine_info, pick, say  # noqa: E402

LOOKUPS = 10_000
QUESTION = "who wrote the first passage about the river?"


def synthesize_dpr(path: Path, n: int, seed: int) -> None:
    """``id \\t text \\t title`` with a header, ids 1..n, 100 words a passage, ten passages a title."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, size=rng.integers(2, 10))) for _ in range(20_000)]
    chunk = 20_000
    with open(path, "w", encoding="utf-8") as f:
        f.write("id\ttext\ttitle\n")
        for start in range(0, n, chunk):
            words = rng.integers(0, len(vocab), size=(min(chunk, n - start), 100))
            f.writelines(f"{start + i + 1}\t{' '.join(vocab[w] for w in row)}\tTitle {(start + i) // 10}\n"
                         for i, row in enumerate(words))


def run_measured(cmd: list[str], **kwargs) -> tuple[float, int, subprocess.CompletedProcess]:
    """(wall seconds, peak RSS in bytes, result) of a subprocess, from its own rusage."""
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    out, err = proc.communicate()
    seconds = time.perf_counter() - began
    # ru_maxrss of the children waited for so far: the largest is this one (the others were smaller).
    import resource

    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return seconds, peak, result


def probe(args: list[str], env: dict) -> dict:
    """Run one of this script's probes in a fresh process; its last stdout line is a JSON object."""
    out = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"probe {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def probe_convert(tsv: str, out: str) -> dict:
    """Run in a fresh process: ``jsarag data convert dpr`` as the library runs it, timed, with the peak
    resident memory it adds to the process (the baseline being the process after its imports)."""
    import resource

    import psutil

    from jsarag.data.convert import convert

    base = psutil.Process().memory_info().rss
    began = time.perf_counter()
    convert("dpr", [tsv], out, progress=False)
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": seconds, "peak_rss_added_mib": (peak - base) / 2**20}


def rss_parts() -> dict[str, int]:
    """Resident memory split into anonymous and file-backed bytes (Linux /proc/self/status)."""
    fields = {"RssAnon:": "anon", "RssFile:": "file"}
    parts = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, *rest = line.split()
        if name in fields:
            parts[fields[name]] = int(rest[0]) * 1024
    return parts


def probe_open(store: str, seed: int) -> dict:
    """Run in a fresh process: open the store, then random lookups; RSS deltas in MiB."""
    import psutil

    from jsarag.data import Corpus

    process = psutil.Process()
    base, base_parts = process.memory_info().rss, rss_parts()
    began = time.perf_counter()
    corpus = Corpus.open(store)
    opened = time.perf_counter() - began
    after_open = process.memory_info().rss
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(corpus), size=LOOKUPS)
    began = time.perf_counter()
    ids = [corpus[int(r)].id for r in rows]
    by_row = time.perf_counter() - began
    began = time.perf_counter()
    assert [corpus.row(i) for i in ids] == rows.tolist()
    by_id = time.perf_counter() - began
    after_lookups, parts = process.memory_info().rss, rss_parts()
    return {"open_seconds": opened, "rss_after_open_mib": (after_open - base) / 2**20,
            "rss_after_lookups_mib": (after_lookups - base) / 2**20,
            # Anonymous memory is what the process allocated; file-backed pages are the mapped store's,
            # clean page cache the kernel can drop at any time.
            **{f"rss_{k}_after_lookups_mib": (parts[k] - base_parts[k]) / 2**20 for k in parts},
            "lookup_by_row_us": by_row / LOOKUPS * 1e6, "lookup_by_id_us": by_id / LOOKUPS * 1e6}


def tiny_index(store: Path, out: Path, seed: int) -> float:
    """A Flat index of random unit vectors over the store, stamped with the tiny encoder's identity."""
    from jsarag.config import load_config
    from jsarag.data import Corpus
    from jsarag.index import PassageIndex
    from jsarag.pipeline import build_retriever

    began = time.perf_counter()
    corpus = Corpus.open(store)
    encoder = build_retriever(load_config(REPO / "configs" / "tiny.yaml")).passage
    vectors = np.random.default_rng(seed).standard_normal((len(corpus), encoder.dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    PassageIndex.from_vectors(vectors, corpus_hash=corpus.fingerprint(), corpus_source=corpus.source,
                              encoder=encoder.identity()).save(out)
    return time.perf_counter() - began


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure(args) -> dict:
    sizes = pick(args, "sizes", [100_000, 1_000_000, 5_000_000], [100_000, 300_000, 1_000_000])
    work = Path(args.work or tempfile.mkdtemp(prefix="jsarag-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JSARAG_CACHE": str(work / "cache")}
    rows = []
    for n in sizes:
        tsv, dataset = work / f"psgs_{n}.tsv", work / f"dpr_{n}"
        if not tsv.exists():
            say(f"[{n:,}] writing {tsv.name} ...")
            synthesize_dpr(tsv, n, args.seed)
        if (dataset / "corpus").exists():
            shutil.rmtree(dataset)
        conv = probe(["--probe-convert", str(tsv), str(dataset)], env)
        seconds, peak = conv["seconds"], conv["peak_rss_added_mib"]
        opened = probe(["--probe-open", str(dataset / "corpus")], env)
        row = {"passages": n, "tsv_mib": tsv.stat().st_size / 2**20,
               "store_mib": folder_bytes(dataset / "corpus") / 2**20, "convert_seconds": seconds,
               "convert_passages_per_second": n / seconds, "convert_peak_rss_added_mib": peak, **opened}
        say(f"[{n:,}] convert {seconds:.1f} s ({n / seconds:,.0f}/s, peak RSS +{peak:,.0f} MiB); "
            f"open {opened['open_seconds'] * 1e3:.1f} ms; RSS +{opened['rss_after_open_mib']:.1f} MiB after open, "
            f"+{opened['rss_after_lookups_mib']:.1f} MiB after {LOOKUPS:,} lookups (anonymous "
            f"+{opened['rss_anon_after_lookups_mib']:.1f}, mapped file +{opened['rss_file_after_lookups_mib']:.1f}) "
            f"({opened['lookup_by_row_us']:.0f} us by row, {opened['lookup_by_id_us']:.0f} us by id)")
        rows.append(row)
    largest = work / f"dpr_{sizes[-1]}"
    index_seconds = tiny_index(largest / "corpus", largest / "index", args.seed)
    ask_seconds, ask_peak, result = run_measured(
        [sys.executable, "-m", "jsarag", "ask", str(REPO / "configs" / "tiny.yaml"), "-q", QUESTION,
         f"data.corpus={largest / 'corpus'}", "data.train=null", "data.dev=null", f"index.path={largest / 'index'}"],
        env=env)
    say(f"[{sizes[-1]:,}] random Flat index built in {index_seconds:.0f} s; `jsarag ask` answered in "
        f"{ask_seconds:.1f} s (peak RSS {ask_peak / 2**20:,.0f} MiB)")
    top = rows[-1]
    return {"machine": machine_info(), "sizes": rows, "passages": top["passages"],
            "open_seconds": top["open_seconds"], "corpus_rss_mib": top["rss_after_lookups_mib"],
            "convert_passages_per_second": top["convert_passages_per_second"],
            "ask_first_answer_seconds": ask_seconds, "ask_peak_rss_mib": ask_peak / 2**20,
            "ask_answer_tail": result.stdout.strip().splitlines()[-1:], "extrapolated_21m": extrapolate(rows)}


def extrapolate(rows: list[dict], passages: int = 21_015_324) -> dict:
    """Store size, conversion time and peak memory at DPR Wikipedia's size: straight lines through the
    largest two measured sizes (each has a fixed part, e.g. the record batch being written)."""
    a, b = rows[-2], rows[-1]

    def line(key: str) -> float:
        slope = (b[key] - a[key]) / (b["passages"] - a["passages"])
        return b[key] + slope * (passages - b["passages"])

    return {"passages": passages, "store_gib": line("store_mib") / 2**10,
            "convert_hours": line("convert_seconds") / 3600,
            "convert_peak_rss_gib": line("convert_peak_rss_added_mib") / 2**10}


def report(result: dict, plot: Path | None) -> None:
    x = result["extrapolated_21m"]
    say(f"21M passages (DPR Wikipedia), extrapolated: store {x['store_gib']:.1f} GiB, conversion "
        f"{x['convert_hours']:.2f} h on this machine, conversion peak RSS {x['convert_peak_rss_gib']:.1f} GiB")
    if plot is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["passages"] for r in result["sizes"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(sizes, [r["open_seconds"] * 1e3 for r in result["sizes"]], "o-")
    a.set(xscale="log", xlabel="passages", ylabel="ms", title="opening the corpus store")
    b.plot(sizes, [r["rss_after_open_mib"] for r in result["sizes"]], "o-", label="after opening")
    b.plot(sizes, [r["rss_after_lookups_mib"] for r in result["sizes"]], "s-", label=f"after {LOOKUPS:,} lookups")
    b.set(xscale="log", xlabel="passages", ylabel="MiB", title="resident memory added by the corpus")
    b.legend()
    fig.tight_layout()
    plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(plot, dpi=110)
    say(f"wrote {plot}")


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=None,
                        help="comma-separated corpus sizes")
    parser.add_argument("--work", default=None, help="folder for the generated data (default: a new temp folder)")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "scale" / "corpus_store.png")
    parser.add_argument("--probe-open", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--probe-convert", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe_open:
        print(json.dumps(probe_open(args.probe_open, args.seed)))
        return
    if args.probe_convert:
        print(json.dumps(probe_convert(*args.probe_convert)))
        return
    result = measure(args)
    report(result, args.plot)
    emit(result, args.out)


if __name__ == "__main__":
    main()
