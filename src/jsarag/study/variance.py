"""`jsarag variance`: the JSA paper's gradient-variance diagnostic.

At fixed parameters and one fixed mini-batch, redraw an estimator's randomness N times and report,
per component (prior, posterior, generator), log of the summed per-parameter variance of the
gradient:  log sum_j Var_n[g_j].  Dropout is off (eval mode) so that only the estimator's own
sampling varies. An estimator that says it is deterministic (``Estimator.deterministic``: RAG-Sequence,
RAG-Token, exact VRAG) has zero variance by construction, reported as such, not estimated.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from jsarag.config import load_config
from jsarag.data import Batch
from jsarag.errors import UserError
from jsarag.estimators import build_estimator
from jsarag.pipeline import load_run
from jsarag.study.methods import all_methods
from jsarag.train import distributed as dist

PARTS = ("prior", "posterior", "generator")
NOT_SAMPLED = "not sampled"  # a component whose gradient was the same at every redraw


class RunningVariance:
    """Welford's online mean and variance of a flat vector (memory: two vectors)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, x: torch.Tensor) -> None:
        x = x.double()
        self.n += 1
        if self.mean is None:
            self.mean, self.m2 = x.clone(), torch.zeros_like(x)
            return
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def log_total_variance(self) -> float:
        """log of the summed unbiased per-coordinate variance (-inf if it is exactly zero, NaN if a gradient was
        not finite)."""
        total = (self.m2 / (self.n - 1)).sum().item()
        return math.log(total) if total > 0 else (float("-inf") if total == 0 else math.nan)


def _flat_grad(module: torch.nn.Module) -> torch.Tensor:
    grads = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel())
             for p in module.parameters() if p.requires_grad]
    return torch.cat(grads) if grads else torch.zeros(0)


def gradient_variance(config: str | Path, overrides: list[str], methods: list[str], *, draws: int = 20,
                      batch_size: int = 4, seed: int = 0, progress: bool = True) -> dict[str, dict]:
    """{method: {component: log summed variance, or 'deterministic' (the whole estimator), or NOT_SAMPLED}}."""
    if draws < 2:
        raise UserError(f"{draws} redraw(s): a variance needs at least 2")
    run = load_run(config, overrides, progress=progress)
    batch = Batch.from_examples(run.split("train", limit=batch_size))
    model = run.model
    model.eval()
    results: dict[str, dict] = {}
    known = all_methods()
    for method in methods:
        cfg = load_config(config, overrides + known[method].overrides())
        estimator = build_estimator(cfg.estimator)
        if estimator.deterministic:
            results[method] = {part: "deterministic" for part in PARTS}
            continue
        model.set_trainable(set(estimator.trains) & set(PARTS))
        stats = {part: RunningVariance() for part in PARTS}
        for n in tqdm(range(draws), desc=f"variance {method}", disable=not progress):
            torch.manual_seed(seed * 100_003 + n)
            model.zero_grad(set_to_none=True)
            with dist.autocast(run.device, cfg.train.precision):
                loss, _ = model(batch, estimator)
            loss.backward()
            for part in PARTS:
                stats[part].add(_flat_grad(model.component(part)).cpu())
        results[method] = {part: _cell(stats[part].log_total_variance()) for part in PARTS}
    return results


def _cell(log_variance: float) -> float | str:
    """A component's log variance, or ``NOT_SAMPLED`` where its gradient did not vary over the redraws (a
    component the estimator does not train, or trains without sampling); JSON has no -inf."""
    return NOT_SAMPLED if log_variance == float("-inf") else log_variance


def format_variance(results: dict[str, dict]) -> list[str]:
    """Markdown table rows: method | prior | posterior | generator."""
    rows = ["| method | prior | posterior | generator |", "|---|---|---|---|"]
    for method, parts in results.items():
        cells = []
        for part in PARTS:
            value = parts[part]
            if value == "deterministic":
                cells.append("0 (deterministic)")
            elif value in (NOT_SAMPLED, float("-inf")):  # -inf: a table saved before NOT_SAMPLED
                cells.append("0 (not sampled)")
            elif value is None or math.isnan(value):  # a gradient that was not finite (saved as null)
                cells.append("not finite")
            else:
                cells.append(f"{value:.2f}")
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    return rows
