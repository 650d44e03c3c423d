"""`jsarag quickstart`: the whole product on a small real dataset, offline, in minutes.

1. Materialise the offline models (MiniLM; SmolLM2-135M-Instruct from its GGUF, once, cached).
2. Index the shipped dialogue sample (`builtin:dstc11`: the FAQs and review sentences of 33 hotels and
   110 restaurants, from DSTC11 track 5).
3. Evaluate the untrained model on its dev turns.
4. Train JSA-RAG briefly (the training loop of `jsarag train`).
5. Evaluate again and print the before/after table; write `quickstart.json` in the run folder.
"""

from __future__ import annotations

import importlib.resources
import json
import shutil
import time
from pathlib import Path

from rich.console import Console

from jsarag.config import load_config
from jsarag.errors import UserError
from jsarag.eval.evaluate import evaluate, summary_table, write_result
from jsarag.outdirs import is_empty, is_quickstart
from jsarag.pipeline import load_run
from jsarag.train.loop import train


def quickstart_config_path() -> Path:
    return Path(str(importlib.resources.files("jsarag") / "resources" / "configs" / "quickstart.yaml"))


def _clear_previous(out: Path) -> None:
    """The quickstart is rerunnable: it replaces its own previous run, never another folder."""
    if not out.exists():
        return
    if not is_quickstart(out) and not is_empty(out):
        raise UserError(f"{out} exists and is not a quickstart run; choose another --out")
    shutil.rmtree(out)


def run_quickstart(out: str | Path, overrides: list[str]) -> dict:
    console = Console()
    out = Path(out)
    began = time.perf_counter()
    cfg = load_config(quickstart_config_path(), overrides)
    _clear_previous(out)
    console.rule("1-2. offline models and index")
    run = load_run(cfg, build_dir=out / "index")
    dev = run.split()

    console.rule(f"3. evaluate the untrained model ({len(dev)} dev examples)")
    before = evaluate(run.model, dev, cfg.eval, device=run.device, precision=cfg.train.precision)
    write_result(before, out / "eval_before")
    del run

    console.rule(f"4. train JSA-RAG ({cfg.train.steps} steps x {cfg.train.batch_size} examples)")
    trained_at = time.perf_counter()
    train(cfg, out)
    train_seconds = time.perf_counter() - trained_at

    console.rule("5. before / after")
    after = json.loads((out / "eval" / cfg.eval.split / "summary.json").read_text())
    console.print(summary_table({"untrained": before.summary, "JSA-RAG trained": after},
                                title=f"{cfg.data.dev} ({len(dev)} examples)"))
    report = {"before": before.summary, "after": after, "train_seconds": round(train_seconds, 1),
              "total_seconds": round(time.perf_counter() - began, 1), "run_dir": str(out)}
    (out / "quickstart.json").write_text(json.dumps(report, indent=2))
    console.print(f"training took {train_seconds:.0f} s; everything {report['total_seconds']:.0f} s. "
                  f"Run folder: {out}. Next: `jsarag ask {out}` and `jsarag plot {out}`.")
    return report
