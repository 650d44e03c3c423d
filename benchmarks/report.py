"""Render docs/benchmarks.md from the results files, by calling each benchmark script's ``report``.

    python benchmarks/report.py [--results benchmarks/results] [--out docs/benchmarks.md]

Every number on the page comes from those files. Text that is not rendered from them is written by hand in
benchmarks/notes/ and included by the script whose section it belongs to.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import _common as common
import eval_throughput
import index_encoding
import peer_rag
import profile_jsa
import scale
import scaling
import step_cost

INTRO = ("Every figure below comes from `bash benchmarks/run_all.sh`, which runs each script at its default size on "
         "an otherwise idle machine and then renders this page from `benchmarks/results/*.json` "
         "(`python benchmarks/report.py`). Timings are ratios measured in the same run (variants interleaved), "
         "because absolute times on a shared 2-core machine are noisy.")


def sections(folder: Path) -> list[tuple[Callable[[dict], str], dict | None]]:
    """The page's sections in order: a renderer and what it renders (None where nothing was measured). A glob
    gives the renderer its runs by file name; several files of one script's parts are merged."""
    def one(name: str) -> dict | None:
        return common.load_results(folder, f"{name}.json").get(name)

    def runs(*patterns: str) -> dict | None:
        found = {k: v for pattern in patterns for k, v in common.load_results(folder, pattern).items()}
        return found or None

    def merged(*names: str) -> dict | None:
        parts = [one(name) for name in names]
        return {k: v for part in parts if part for k, v in part.items()} if any(parts) else None

    return [(step_cost.report, one("step_cost")),
            (step_cost.report_training, runs("step_cost_training.json", "step_cost_training_*.json")),
            (step_cost.report_gpu, runs("gpu/step_cost_gpu_*.json")),
            (step_cost.report_scoring_gpu, runs("gpu/step_cost_scoring_gpu_*.json")),
            (index_encoding.report_gpu, runs("gpu/index_encoding_gpu_*.json")),
            (peer_rag.report, one("peer_rag")),
            (index_encoding.report, one("index_encoding")),
            (scaling.report, one("scaling")),
            (eval_throughput.report, one("eval_throughput")),
            (profile_jsa.report, one("profile_jsa")),
            (step_cost.report_scoring, runs("step_cost_scoring.json", "step_cost_scoring_seed*.json")),
            (scale.report, merged("scale", "scale_index", "scale_train"))]


def render(folder: Path) -> str:
    step = common.load_results(folder, "step_cost.json").get("step_cost")
    lines = ["# Benchmarks", "", INTRO, "", "## Machine", ""]
    lines += common.machine_lines(step["machine"], "step-cost") if step else ["- (step_cost.json missing)"]
    lines.append("- GPU: step cost, JSA's scoring modes and passage encoding, reported separately at the end of "
                 "section 1 (`benchmarks/gpu_checks.sh`; its log is in `benchmarks/results/gpu/`)."
                 if (folder / "gpu").is_dir() else "- GPU: none; no GPU figures.")
    number = 0
    for renderer, results in sections(folder):
        if results is None:
            continue
        text = renderer(results)
        if text.startswith("## "):  # sections are numbered in page order
            number += 1
            text = f"## {number}. {text[3:]}"
        lines += ["", text]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, default=common.RESULTS)
    ap.add_argument("--out", type=Path, default=common.REPO / "docs" / "benchmarks.md")
    args = ap.parse_args(argv)
    args.out.write_text(render(args.results))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
