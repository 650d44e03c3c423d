"""Render docs/benchmarks.md from the JSON files that the benchmark scripts wrote.

    python benchmarks/report.py --results benchmarks/results --out docs/benchmarks.md

Every number on the page comes from those files; nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def load(results: Path, name: str) -> dict | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


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


def machine_section(m: dict) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    return [f"- CPU: {m.get('cpu_model')} ({', '.join(m.get('cpu_flags', []))}), "
            f"{m.get('usable_cores', m.get('logical_cores'))} cores, torch threads {m.get('torch_threads')}, "
            f"{m.get('memory_gib', '?')} GiB"
            + (f"; torch {m['cpu_capability']}, `train.precision: auto` resolves to {m['precision_auto']}"
               if "precision_auto" in m else ""),
            f"- {m.get('platform')}, Python {m.get('python')}; {versions}",
            f"- load average at start / end of the step-cost run: {m.get('load_average_at_start')} / "
            f"{m.get('load_average_at_end')}"]


def step_cost_section(d: dict) -> list[str]:
    shape = d["shape"]
    lines = ["## 1. Step cost: JSA-RAG against RAG-Sequence and VRAG", "",
             "`python benchmarks/step_cost.py` (and `--quick` for a reduced shape). One optimiser step: "
             f"estimator forward under {shape.get('precision', 'bf16')} autocast, backward, AdamW step. MiniLM "
             "retriever, SmolLM2-135M-"
             f"Instruct + LoRA generator; B={shape['batch_size']} SQuAD questions (micro-batches of "
             f"{shape['micro_batch_size']}), K={shape['top_k']}, m={shape['proposals']}, "
             f"{shape['passages']} passages of at most {shape['max_passage_tokens']} tokens.", "",
             "| ratio | measured | target | |", "|---|---|---|---|",
             f"| JSA / RAG-Sequence, during training | {f(d.get('jsa_over_rag_sequence'))} | <= 1.0 | "
             f"{verdict(d.get('jsa_over_rag_sequence'), '<= 1.0')} |",
             f"| JSA / RAG-Sequence, at the initial weights | {f(d.get('jsa_over_rag_sequence_at_init'))} | "
             "(<= 1.0) | " + verdict(d.get('jsa_over_rag_sequence_at_init'), '<= 1.0') + " |",
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
        for name, v in training["per_estimator"].items():
            lines.append(f"| {name} | {f(v['mean_s'])} |")
        jsa = training["per_estimator"]["jsa"]
        at_init = d["variants"].get("jsa", {})
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
    return lines


def gpu_section(results: Path) -> list[str]:
    """Step cost on a GPU (``benchmarks/results/gpu/step_cost_gpu_*.json``), reported apart from the CPU."""
    runs = sorted((results / "gpu").glob("step_cost_gpu_*.json"))
    if not runs:
        return []
    first = json.loads(runs[0].read_text())
    m, shape = first["machine"], first["shape"]
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    lines = ["### Step cost on a GPU", "",
             f"{m.get('gpu')}, {m.get('cpu_model')} ({m.get('usable_cores')} cores), Python {m.get('python')}; "
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
    for path in runs:
        d = json.loads(path.read_text())
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
    lines += ["", f"K={shape['top_k']}, m={shape['proposals']}, {shape['passages']} passages of at most "
              f"{shape['max_passage_tokens']} tokens, {shape['timed_rounds']} timed rounds after one warm-up round; "
              "medians of per-round ratios. Per step (first run), JSA ran "
              f"{f(first['variants']['jsa'].get('mean_nograd_seqs'), 0)} generator sequences without gradient and "
              f"{f(first['variants']['jsa'].get('mean_grad_seqs'), 0)} with gradient, against RAG-Sequence's "
              f"{f(first['variants']['rag_sequence'].get('mean_grad_seqs'), 0)} with gradient: with random "
              "weights the chain visits more distinct passages than K, which is what makes JSA dearer here."]
    return lines


def peer_section(d: dict) -> list[str]:
    eq, cfg = d["equality"], d["config"]
    return ["## 2. Peer: our RAG-Sequence step against transformers' RagSequenceForGeneration", "",
            "`python benchmarks/peer_rag.py`. Same question encoder "
            f"({cfg['retriever']}), same generator ({cfg['generator']}, {cfg['generator_type']}), "
            f"B={cfg['B']}, K={cfg['K']}, same retrieved passages and inputs.", "",
            f"- Same loss: ours {eq['loss_ours']:.6f}, transformers {eq['loss_transformers']:.6f} "
            f"(relative difference {eq['relative_difference']:.1e}; gradients agree to "
            f"{eq['gradient_max_abs_diff_over_max_abs_grad']:.1e} of the largest). {d.get('equality_note', '')}",
            f"- Step time (forward + backward), median of {d['timing']['ratio']['n']} interleaved pairs: "
            f"ours {f(d['ours_step_seconds_median'], 3)} s, transformers "
            f"{f(d['transformers_step_seconds_median'], 3)} s; **ours / transformers = "
            f"{f(d['ours_over_transformers'])}** (target <= 1.0: {verdict(d['ours_over_transformers'], '<= 1.0')}; "
            f"interquartile range of the ratio {f(d['timing']['ratio']['q1'])}-{f(d['timing']['ratio']['q3'])}).",
            f"- Timed: ours = {d['what_is_timed']['ours']}; transformers = {d['what_is_timed']['transformers']}."]


def index_section(d: dict) -> list[str]:
    enc, idx = d["encoding"], d["index"]
    return ["## 3. Index and encoding against raw FAISS and sentence-transformers", "",
            "`python benchmarks/index_encoding.py --encode-repeats 3`.", "",
            f"| | overhead over raw FAISS ({idx['n']:,} x {idx['dim']} vectors, {idx['queries']} queries, "
            f"k={idx['k']}) | target |", "|---|---|---|",
            f"| Flat build | {f(d['build_overhead'], pct=True)} | <= +5% |",
            f"| Flat search | {f(d['search_overhead'], pct=True)} | <= +5% |",
            f"| HNSW32 build | {f(d['hnsw32_build_overhead'], pct=True)} | <= +5% |",
            f"| HNSW32 search | {f(d['hnsw32_search_overhead'], pct=True)} | <= +5% |", "",
            f"Flat results identical to raw FAISS: {idx['flat']['identical_ids']}.", "",
            f"| encoding {enc['passages']} SQuAD passages (max {enc['max_length']} tokens) | jsarag passages/s | "
            "sentence-transformers passages/s | ratio (target >= 1.0) |", "|---|---|---|---|",
            f"| fp32 | {f(enc['fp32']['ours_passages_per_s'], 1)} | {f(enc['fp32']['st_passages_per_s'], 1)} | "
            f"{f(d['encode_throughput_ratio'])} |",
            f"| bf16 autocast | {f(enc['bf16_autocast']['ours_passages_per_s'], 1)} | "
            f"{f(enc['bf16_autocast']['st_passages_per_s'], 1)} | {f(d['encode_throughput_ratio_bf16'])} |", "",
            f"Embeddings agree: max abs difference {enc['fp32']['agreement']['max_abs_diff']:.1e} (fp32)."]


def scaling_section(d: dict, out: Path) -> list[str]:
    lines = ["## 4. Scaling", "", "`python benchmarks/scaling.py --plots docs/benchmarks`. JSA step (B=1, "
             f"{d['shape']['passages']} passages, {d['shape']['max_passage_tokens']}-token passages) against K and "
             "m; peak memory measured in a separate process per point.", "",
             "| K | m | median s / step | peak RSS MiB | added by the steps MiB |", "|---|---|---|---|---|"]
    for key, v in d["jsa_time"].items():
        mem = d.get("jsa_memory", {}).get(key, {})
        lines.append(f"| {v['top_k']} | {v['proposals']} | {f(v['median_s'])} | {f(d['peak_mib'].get(key), 0)} | "
                     f"{f(d['step_delta_mib'].get(key), 0)} |" if mem or key in d.get("peak_mib", {}) else
                     f"| {v['top_k']} | {v['proposals']} | {f(v['median_s'])} | - | - |")
    lines += ["", "| index | vectors | build s | ms per query (batch of 1,000) | recall@10 against flat |",
              "|---|---|---|---|---|"]
    for v in d["index_search"].values():
        per_query = v.get("median_ms_per_query", 1000 * v["median_s_per_batch"] / d["shape"]["index_queries"])
        recall = v.get("recall_at_10_vs_flat", 1.0 if v["index"] == "flat" else None)
        lines.append(f"| {v['index']} | {v['corpus_size']:,} | {f(v.get('build_s'))} | {f(per_query, 4)} | "
                     f"{f(recall, 3)} |")
    lines += ["", "Random unit vectors are HNSW's hard case (high-dimensional points with no neighbourhood "
              "structure), so the recall column is a lower bound for real embeddings, which were not measured "
              "here; raise `efSearch` (or use Flat up to ~100k passages) where recall matters. Times at "
              "efSearch 64.", ""]
    lines += [f"![{Path(p).stem}]({os.path.relpath(p, out.parent)})" for p in d.get("plots", [])]
    return lines


def eval_section(d: dict) -> list[str]:
    s = d["shape"]
    return ["## 5. Evaluation throughput", "",
            f"`python benchmarks/eval_throughput.py`: {s['questions']} SQuAD dev questions, greedy, "
            f"{s['max_new_tokens']} new tokens at most, batches of {s['eval_batch_size']}.", "",
            "| decoding | K | questions / s |", "|---|---|---|",
            f"| per passage (best confidence x p_r) | {s['top_k']} | {f(d['per_passage_K5_qps'], 3)} |",
            f"| passages concatenated | {s['top_k']} | {f(d['concat_K5_qps'], 3)} |",
            f"| per passage | 1 | {f(d.get('per_passage_K1_qps'), 3)} |",
            f"| concatenated | 1 | {f(d.get('concat_K1_qps'), 3)} |", "",
            f"Concatenation / per passage at K={s['top_k']}: {f(d['concat_over_per_passage_qps'])}."]


def profile_section(d: dict) -> list[str]:
    lines = ["## 6. Where a JSA step spends its time", "",
             f"`python benchmarks/profile_jsa.py` (B={d['shape']['batch_size']}, K={d['shape']['top_k']}, "
             f"m={d['shape']['proposals']}): {f(d['distinct_proposals'], 1)} distinct proposals and "
             f"{f(d['distinct_states'], 1)} distinct states per question.", "",
             "| phase | share of the step |", "|---|---|"]
    for phase, share in d["phase_fractions"].items():
        lines.append(f"| {phase} | {100 * share:.1f}% |")
    lines += ["", "| op (torch.profiler, self CPU) | share |", "|---|---|"]
    for op in d["top_ops"][:8]:
        lines.append(f"| {op['name']} | {op['self_cpu_pct']:.1f}% |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    args = ap.parse_args()
    step = load(args.results, "step_cost")
    lines = ["# Benchmarks", "",
             "Every figure below comes from `bash benchmarks/run_all.sh`, which runs each script at its default "
             "size on an otherwise idle machine and then renders this page from `benchmarks/results/*.json` "
             "(`python benchmarks/report.py`). Timings are ratios measured in the same run (variants "
             "interleaved), because absolute times on a shared 2-core machine are noisy.", "",
             "## Machine", ""]
    lines += machine_section(step["machine"]) if step else ["- (step_cost.json missing)"]
    lines += ["- GPU: the step-cost benchmark only, reported separately at the end of section 1."
              if (args.results / "gpu").is_dir() else "- GPU: none; no GPU figures."]
    sections = (("step_cost", step_cost_section), ("peer_rag", peer_section), ("index_encoding", index_section),
                ("scaling", lambda data: scaling_section(data, args.out)), ("eval_throughput", eval_section),
                ("profile_jsa", profile_section))
    for name, render in sections:
        data = load(args.results, name)
        lines += [""] + (render(data) if data else [f"## {name}", "", "not run"])
        if name == "step_cost":
            lines += [""] + gpu_section(args.results)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
