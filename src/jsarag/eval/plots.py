"""PNG curves of a run from its ``metrics.jsonl``: losses, the estimator's own panels (e.g. JSA's
acceptance), gradient norms, evaluation, learning rates."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from jsarag.config import load_config
from jsarag.estimators import ESTIMATORS, Panel
from jsarag.train.logger import read_metrics

# What the training loop logs for every estimator: panel -> which keys it draws.
LOOP_PANELS = {
    "losses": lambda k: k == "loss",
    "grad_norms": lambda k: k.startswith("grad_norm/"),
    "eval": lambda k: k.startswith("eval/") and k != "eval/examples",
    "learning_rates": lambda k: k.startswith("lr/"),
}


def panel_keys(keys: Iterable[str], estimator_panels: Iterable[Panel]) -> dict[str, list[str]]:
    """Panel name -> the logged ``keys`` it draws: the loop's panels, each estimator panel after ``losses``
    (one named like a loop panel joins it). Panels without data are left out."""
    keys = sorted(keys)
    panels: dict[str, list[str]] = {"losses": [k for k in keys if LOOP_PANELS["losses"](k)]}
    for panel in estimator_panels:
        panels.setdefault(panel.name, []).extend(k for k in panel.metrics if k in keys)
    for name, wanted in LOOP_PANELS.items():
        panels.setdefault(name, [k for k in keys if wanted(k)])
    return {name: chosen for name, chosen in panels.items() if chosen}


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def line_plot(path: Path, curves: list[tuple[str, list[int], list[float]]], title: str, *,
              log_scale: bool = False) -> Path:
    """One PNG with a line per (label, steps, values)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, steps, values in curves:
        ax.plot(steps, values, label=label, marker="o" if len(steps) < 20 else None)
    ax.set_xlabel("step")
    ax.set_title(title)
    if log_scale:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write one PNG per panel that has data; returns the files written."""
    records = read_metrics(run_dir)
    if not records:
        raise FileNotFoundError(f"no metrics.jsonl with records in {run_dir}")
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    estimator = ESTIMATORS[load_config(Path(run_dir) / "config.yaml").estimator.name]
    keys = {k for r in records for k in r if k != "step"}
    written = []
    for panel, chosen in panel_keys(keys, estimator.panels).items():
        curves = [(key, *series(records, key)) for key in chosen]
        written.append(line_plot(out / f"{panel}.png", curves, f"{Path(run_dir).name}: {panel.replace('_', ' ')}",
                                 log_scale=panel == "grad_norms"))
    return written
