"""Mean step time during real training (`jsarag train`), per estimator, from the same weights and data.

    python benchmarks/training_cost.py [--quick] [--steps N] [--out FILE.json]

The cost of a JSA step depends on how spread the posterior is: at the initial weights it proposes
most candidates and the chain visits many of them; as q learns, proposals and states concentrate.
`step_cost.py` measures steps at the initial weights; this script measures the first N steps of an
actual training run for each estimator (same seed, same data order, same index, same shapes), with
the training loop's own per-step timer (`seconds` in metrics.jsonl), step 1 excluded (warm-up).
Runs are sequential: keep the machine otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from step_cost import SQUAD, emit, machine, quiet_libraries, say, squad_setup  # noqa: E402

ESTIMATORS = {
    "rag_sequence": ["estimator.name=rag_sequence"],
    "vrag": ["estimator.name=vrag", "estimator.vrag.mode=exact"],
    "jsa": ["estimator.name=jsa"],
}


def write_jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def training_step_times(*, batch_size: int, steps: int, top_k: int, proposals: int, passages: int,
                        max_passage_tokens: int, seed: int = 0, workdir: Path | None = None) -> dict:
    import torch

    from jsarag.config import load_config
    from jsarag.index import build_index
    from jsarag.pipeline import build_model, load_corpus
    from jsarag.train import distributed as dist
    from jsarag.train.loop import train

    work = Path(workdir or tempfile.mkdtemp(prefix="jsarag-training-cost-"))
    corpus, examples = squad_setup(batch_size * steps, passages, seed)
    write_jsonl(work / "corpus.jsonl", [{"id": p.id, "title": p.title, "text": p.text} for p in corpus])
    write_jsonl(work / "train.jsonl", [{"id": e.id, "question": e.query, "answers": list(e.answers),
                                        "positive_ids": list(e.positive_ids)} for e in examples])
    common = [f"data.corpus={work / 'corpus.jsonl'}", f"data.train={work / 'train.jsonl'}", "data.dev=null",
              "data.test=null", f"estimator.top_k={top_k}", f"estimator.jsa.num_proposals={proposals}",
              f"generator.max_passage_tokens={max_passage_tokens}", f"train.steps={steps}",
              f"train.batch_size={batch_size}", f"train.save_every={steps}", "train.tensorboard=false",
              "train.progress=false", f"train.seed={seed}", f"index.path={work / 'index'}"]
    base = Path(__file__).resolve().parents[1] / "configs" / "squad" / "base.yaml"
    cfg = load_config(base, common[:-1])
    model = build_model(cfg)
    with dist.autocast(torch.device("cpu"), cfg.train.precision):  # as the runs would encode it
        build_index(load_corpus(cfg.data), model.retriever.passage, progress=False).save(work / "index")
    del model
    out = {}
    for name, extra in ESTIMATORS.items():
        began = time.perf_counter()
        run = work / name
        train(load_config(base, common + extra), run)
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        steps_done = [r for r in records if "loss" in r]
        seconds = [r["seconds"] for r in steps_done[1:]]
        out[name] = {"mean_s": statistics.mean(seconds), "seconds": [round(s, 3) for s in seconds],
                     "wall_s": round(time.perf_counter() - began, 1)}
        if name == "jsa":
            for key in ("distinct_proposals", "distinct_states", "accept_rate", "candidates"):
                out[name][f"mean_{key}"] = statistics.mean(r[key] for r in steps_done)
            out[name]["distinct_states_by_step"] = [round(r["distinct_states"], 2) for r in steps_done]
        say(f"  {name}: {out[name]['mean_s']:.2f} s/step over steps 2..{steps}")
    rag = out["rag_sequence"]["mean_s"]
    return {"per_estimator": out, "jsa_over_rag_sequence": out["jsa"]["mean_s"] / rag,
            "vrag_over_rag_sequence": out["vrag"]["mean_s"] / rag,
            "shape": {"batch_size": batch_size, "steps": steps, "top_k": top_k, "proposals": proposals,
                      "passages": passages, "max_passage_tokens": max_passage_tokens, "data": str(SQUAD),
                      "lr": "configs/squad/base.yaml"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="B=1, 8 steps, 96-token passages, 300 passages")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--out")
    args = ap.parse_args()
    quiet_libraries()
    shape = (dict(batch_size=1, steps=8, passages=300, max_passage_tokens=96) if args.quick
             else dict(batch_size=4, steps=16, passages=1000, max_passage_tokens=192))
    if args.steps:
        shape["steps"] = args.steps
    result = {"benchmark": "training_cost", "quick": args.quick, "machine": machine(),
              **training_step_times(top_k=10, proposals=50, **shape)}
    say(f"jsa_over_rag_sequence (in training) = {result['jsa_over_rag_sequence']:.3f}")
    emit(result, args.out)


if __name__ == "__main__":
    main()
