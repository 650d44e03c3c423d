"""PNG curves of a run from its ``metrics.jsonl``: losses, acceptance, gradient norms, evaluation."""

from __future__ import annotations

from pathlib import Path

from jsarag.train.logger import read_metrics

PANELS = {
    "losses": lambda k: k == "loss" or k.startswith("loss_") or k in ("kl", "expected_loglik"),
    "acceptance": lambda k: k in ("accept_rate", "distinct_states", "distinct_proposals"),
    "grad_norms": lambda k: k.startswith("grad_norm/"),
    "eval": lambda k: k.startswith("eval/") and k != "eval/examples",
    "learning_rates": lambda k: k.startswith("lr/"),
}


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
    keys = sorted({k for r in records for k in r if k != "step"})
    written = []
    for panel, wanted in PANELS.items():
        chosen = [k for k in keys if wanted(k)]
        if chosen:
            curves = [(key, *series(records, key)) for key in chosen]
            written.append(line_plot(out / f"{panel}.png", curves,
                                     f"{Path(run_dir).name}: {panel.replace('_', ' ')}",
                                     log_scale=panel == "grad_norms"))
    return written
