"""`jsarag compare`: every estimator trained from the same weights on the same data, then evaluated.

    jsarag compare configs/squad/base.yaml --name squad --out runs/compare-squad --seeds 0,1,2

For each seed and method: the same pretrained retriever and generator, the same LoRA initialisation
(seeded), the same data order (seeded), the same K and budget; only the estimator differs. Each run
is a `jsarag train` subprocess (so that its peak memory is its own) into OUT/seed<s>/<method>; a
finished run is not redone, an interrupted one is resumed. The untrained model and the generator
fine-tuned on a frozen retriever are the reference points. The report (markdown table, paired
significance, plots) is written to docs/results/<name>.md. Nothing here knows a particular estimator: the
methods, their options and the statistics each estimator logs (its ``panels``) come from the registry.

The report is built from result files, not from run folders. Once a run has finished, what the report reads
of it (``RunResult``, with the settings it ran with; about 28 KB for 150 questions and 24 steps, see
``jsarag.study.results``) goes to docs/results/<name>/runs/seed<s>/<method>.json (runs/untrained.json for the
untrained models), the gradient-variance numbers to docs/results/<name>/variance.json. A run with a result file
but no run folder is read from its file, never trained again; so a long comparison can run one seed per machine:

    jsarag compare CONFIG --name squad --out runs/compare-squad --seeds 0                    # machine A
    jsarag compare CONFIG --name squad --out runs/compare-squad --seeds 1 --variance-draws 0 # machine B
    # each commits docs/results/squad/runs/ (A also docs/results/squad/variance.json); then anywhere:
    jsarag compare CONFIG --name squad --out runs/compare-squad --seeds 0,1 --from-results

``--from-results`` trains, evaluates and loads nothing (no run folder, index or model): every result file that
the seeds and methods name must be there, and the variance table is the committed one or is left out, saying
why. A result file from other settings is refused (those that change only how it computed excepted; the page
lists them). Every machine writes runs/untrained.json: the same bytes on machines of one kind; where two kinds
differ (e.g. one computes in bf16, the other in fp32), keep either.
"""

from __future__ import annotations

import json
import math
import os
import random
import shlex
import statistics
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from jsarag.config import load_config
from jsarag.configtools import to_dict
from jsarag.errors import UserError
from jsarag.estimators import ESTIMATORS, Panel
from jsarag.eval.metrics import exact_match, token_f1
from jsarag.eval.plots import line_plot
from jsarag.pipeline import save_run_config
from jsarag.study.diagnostics import learning_signal, retriever_recall, run_state
from jsarag.study.methods import BASELINES, UNTRAINED, all_methods
from jsarag.study.results import (
    RunResult,
    cached_json,
    check,
    groups_text,
    how_settings_differ,
    load_result,
    read_cached,
    result_path,
    run_settings,
    runs_by_value,
    save_result,
    settings_changed,
    settings_of,
)
from jsarag.study.variance import format_variance, gradient_variance
from jsarag.train.checkpoint import latest_checkpoint, remove_checkpoints
from jsarag.train.logger import read_metrics

REPORT_METRICS = ("em", "f1", "rougeL", "bleu4", "recall@1", "recall@5", "mrr@10")
PAIRED_METRICS = ("em", "f1", "recall@1")
SIGNAL_METRICS = ("prior_top1", "likelihood_top1", "posterior_top1", "prior_gold_mass", "posterior_gold_mass")
UNEVEN_STEPS = 0.25  # a run whose step_spread exceeds this is flagged in the report


def _jsarag(args: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write("$ jsarag " + " ".join(shlex.quote(a) for a in args) + "\n")
        f.flush()
        done = subprocess.run([sys.executable, "-m", "jsarag", *args], stdout=f, stderr=subprocess.STDOUT,
                              env=dict(os.environ, TQDM_DISABLE="1"))
    if done.returncode != 0:
        raise RuntimeError(f"`jsarag {args[0]}` failed (exit {done.returncode}); see {log}")


def _per_question(predictions_file: Path) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {"em": {}, "f1": {}, "recall@1": {}}
    for line in predictions_file.read_text().splitlines():
        p = json.loads(line)
        out["em"][p["id"]] = exact_match(p["prediction"], p["answers"])
        out["f1"][p["id"]] = token_f1(p["prediction"], p["answers"])
        out["recall@1"][p["id"]] = float(bool(set(p["retrieved"][:1]) & set(p["positive_ids"])))
    return out


def step_seconds(records: list[dict]) -> list[float]:
    """The training steps' times from a run's ``metrics.jsonl`` records, step 1 (warm-up) left out."""
    steps = [r for r in records if "loss" in r]
    return [r["seconds"] for r in steps[1:]] or [r["seconds"] for r in steps]


def step_spread(seconds: list[float]) -> float:
    """How unevenly a run's steps ran: (p90 - p10) / median of its step times. Deciles rather than the extremes
    or the standard deviation: a few slow steps (a garbage collection, a cold cache) leave it alone, while a
    stretch of slowed steps, e.g. another process on the machine for more than a tenth of the run, widens it."""
    if len(seconds) < 2:
        return math.nan
    deciles = statistics.quantiles(seconds, n=10, method="inclusive")
    return (deciles[-1] - deciles[0]) / statistics.median(seconds)


def curve_keys(method: str) -> set[str]:
    """The keys of a run's logged steps that the report reads: the loop's plots and its estimator's panels."""
    panels = ESTIMATORS[all_methods()[method].estimator].panels
    return {"step", *(key for _, key, _, _ in LOOP_PLOTS), *(k for p in panels for k in (*p.metrics, *p.compared))}


def _collect(method: str, seed: int, folder: Path, eval_dir: Path, signal_examples: int) -> RunResult:
    """A finished run's results: its evaluation in ``eval_dir``; from its ``folder`` (a run folder, or the untrained
    models' with their config.yaml), its settings, log and diagnostics (cached there); with ``signal_examples``,
    its learning signal."""
    cfg, checkpoint, index_dir = run_state(folder)
    summary = json.loads((eval_dir / "summary.json").read_text())
    summary.update(cached_json(folder / "eval" / "retriever_recall.json",
                               lambda: retriever_recall(cfg, checkpoint, index_dir)))
    result = RunResult(method, seed, summary, _per_question(eval_dir / "predictions.jsonl"),
                       settings=run_settings(cfg, folder / "config.yaml"))
    if signal_examples > 0:
        result.signal = cached_json(folder / "learning_signal.json",
                                    lambda: learning_signal(cfg, checkpoint, index_dir, limit=signal_examples),
                                    key={"examples": signal_examples, "checkpoint": str(checkpoint)})
    records = read_metrics(folder)
    seconds = step_seconds(records)
    if seconds:
        result.seconds_per_100_steps = 100 * statistics.mean(seconds)
        result.median_seconds_per_100_steps = 100 * statistics.median(seconds)
        result.step_spread = step_spread(seconds)
        result.peak_memory_mib = next((r["peak_memory_mib"] for r in reversed(records) if "peak_memory_mib" in r),
                                      math.nan)
        keep = curve_keys(method)
        result.curves = [{k: v for k, v in r.items() if k in keep} for r in records if "loss" in r]
        result.headers = [r["run"] for r in records if "run" in r]
    return result


def _study_index(config: str | Path, out: Path, overrides: list[str]) -> Path:
    """The study's index, OUT/index, built the first time something needs it."""
    index_dir = out / "index"
    if not (index_dir / "meta.json").is_file():
        _jsarag(["index", "build", str(config), "--out", str(index_dir), *overrides], out / "study.log")
    return index_dir


def run_comparison(config: str | Path, out: str | Path, *, seeds: list[int], methods: list[str],
                   overrides: list[str], runs_dir: Path, signal_examples: int = 0,
                   from_results: bool = False, drop_checkpoints: bool = False) -> list[RunResult]:
    """The results of the untrained models and of every method (and baseline) at every seed, each read from its
    file in ``runs_dir`` and checked against this comparison's settings.

    A run whose folder in ``out`` holds its evaluation is collected into its file (again, so that the file follows
    the folder); one with neither that nor a file is trained, or resumed, first. A trained run whose checkpoints
    are gone (``drop_checkpoints``: deleted once its file is written) is read from its file: its diagnostics cannot
    be computed again, and without a file it is an error. With ``from_results`` only the files are read: nothing is
    trained or computed, and a missing file is an error."""
    out = Path(out)
    log = out / "study.log"
    known = all_methods()
    plan = [(UNTRAINED, -1, []), *((m, s, known[m].overrides()) for s in seeds for m in [*methods, *BASELINES])]
    # Each method's settings; loading them first also fails early on a bad config, before hours of training.
    extras = {m: extra for m, _, extra in plan}  # one config load per method, not per seed and method
    expected = {m: settings_of(load_config(config, [*overrides, *extra])) for m, extra in extras.items()}
    paths = {(m, s): result_path(runs_dir, m, s) for m, s, _ in plan}
    if from_results:
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise UserError(f"--from-results: no result file {missing[0]}{more}; run those seeds without "
                            f"--from-results (where their run folders are) and commit {runs_dir}")
    else:
        common = [*overrides, f"index.path={out / 'index'}"]
        split = load_config(config, overrides).eval.split
        for method, seed, extra in plan:
            if method == UNTRAINED:  # evaluated from a saved config, so that its folder says what it ran with
                folder = out / UNTRAINED
                eval_dir = folder / "eval"
                command = ["eval", str(folder / "config.yaml"), "--out", str(eval_dir)]
            else:
                folder = out / f"seed{seed}" / method
                eval_dir = folder / "eval" / split
                resume = ["--resume"] if (folder / "config.yaml").is_file() else []
                command = ["train", str(config), "--out", str(folder), *resume, *common, *extra,
                           f"train.seed={seed}", "train.progress=false"]
            finished = (folder / "config.yaml").is_file() and (eval_dir / "summary.json").is_file()
            if not finished and paths[method, seed].is_file():
                continue  # run elsewhere, or its folder deleted: its file is its record
            if finished and method != UNTRAINED and latest_checkpoint(folder) is None:
                if paths[method, seed].is_file():
                    continue  # its checkpoints dropped: its file is its record
                raise UserError(f"{folder} finished training but holds no checkpoint and {paths[method, seed]} does "
                                f"not exist: its retriever recall and learning signal would be measured on the "
                                f"untrained weights. Delete the folder to train it again")
            if not finished:
                _study_index(config, out, overrides)
                if method == UNTRAINED:
                    save_run_config(load_config(config, common), folder)
                _jsarag(command, log)
            result = _collect(method, seed, folder, eval_dir, signal_examples)
            save_result(paths[method, seed], check(result, method=method, seed=seed, settings=expected[method],
                                                   source=folder))
            if drop_checkpoints and method != UNTRAINED:
                remove_checkpoints(folder)
    return [check(load_result(path), method=m, seed=s, settings=expected[m], source=path)
            for (m, s), path in paths.items()]


def variance_rows(config: str | Path, out: Path, *, methods: list[str], overrides: list[str], draws: int,
                  path: Path, from_results: bool = False) -> tuple[list[str], str]:
    """The gradient-variance table (``jsarag variance`` at the untrained models), saved in ``path`` and read back
    while the draws, methods and settings stay; or no rows and the sentence that says why."""
    if draws <= 0:
        return [], "Not computed for this page (`--variance-draws 0`)."
    key = {"draws": draws, "methods": methods, "settings": settings_of(load_config(config, overrides))}
    if from_results:
        value = read_cached(path, key, _same_variance_key)
        if value is None:
            return [], (f"Not among the committed results: `{path}` is missing or holds other draws, methods or "
                        f"settings (`jsarag compare` without `--from-results` computes it).")
    else:
        value = cached_json(path, lambda: gradient_variance(
            config, [*overrides, f"index.path={_study_index(config, out, overrides)}"], methods, draws=draws), key,
            _same_variance_key)
    return format_variance(value), ""


def _same_variance_key(saved: dict | None, key: dict) -> bool:
    """Whether a saved variance table is this page's: the same draws and methods, settings that differ at most in
    how they compute (``settings_changed``)."""
    return (saved is not None and (saved["draws"], saved["methods"]) == (key["draws"], key["methods"])
            and not settings_changed(saved["settings"], key["settings"]))


def _precision_text(setting: str, results: Sequence[RunResult]) -> str:
    """The precision the runs trained in, from their logs' headers: ``auto`` resolves on the training machine."""
    used = sorted({(h["precision"], f"GPU {h['gpu']}" if "gpu" in h else f"CPU {h['cpu']}")
                   for r in results for h in r.headers})
    if not used:  # runs logged before the header existed
        return setting
    return " / ".join(f"{precision} (train.precision {setting}; {where})" for precision, where in used)


def _methods_run(results: Iterable[RunResult]) -> list[str]:
    """The methods (registered ones and baselines) among ``results``, in first-seen order."""
    known = all_methods()
    return list(dict.fromkeys(r.method for r in results if r.method in known))


def estimator_options_lines(config: str | Path, overrides: list[str], methods: Iterable[str]) -> list[str]:
    """One markdown list item per method: its estimator and that estimator's resolved options."""
    known = all_methods()
    lines = []
    for method in methods:
        spec = known[method]
        options = to_dict(load_config(config, [*overrides, *spec.overrides()]).estimator.options())
        values = ", ".join(f"{key} {value}" for key, value in options.items()) or "no options"
        extra = "".join(f"; `{o}`" for o in spec.extra)
        lines.append(f"  - `{method}`: `{spec.estimator}`, {values}{extra}")
    return lines


def settings_text(cfg, *, config: str | Path, overrides: list[str], results: Sequence[RunResult] = ()) -> str:
    """The settings every method shares, from the resolved config (the methods differ only in the estimator),
    each method's estimator options, and, for the precision, the runs' logs."""
    e, g, o, t, r = cfg.estimator, cfg.generator, cfg.optim, cfg.train, cfg.retriever
    lora = f" + LoRA (r {g.lora.r}, alpha {g.lora.alpha})" if g.lora.enabled else ""
    options = estimator_options_lines(config, overrides, _methods_run(results))
    return "\n".join([
        f"- Config `{config}`, overrides `{' '.join(overrides) or '(none)'}`; each run's result file holds the "
        "resolved config it ran with (its `settings`).",
        f"- Retriever `{r.model}` (temperature {r.temperature}, passage encoder "
        f"{'trained' if r.train_passage_encoder else 'frozen'}); generator `{g.model}`{lora}; passages cut at "
        f"{g.max_passage_tokens} tokens, answers at {g.max_answer_tokens}.",
        f"- K = {e.top_k}" + ("; each method's estimator and its options:" if options else "."),
        *options,
        f"- {t.steps} steps of {t.batch_size} questions ({t.steps * t.batch_size} training questions seen), "
        f"AdamW, learning rates generator {o.lr_generator:g}, prior {o.lr_prior:g}, posterior {o.lr_posterior:g}, "
        f"{o.warmup_steps} warm-up steps then {o.schedule}, clipping {o.max_grad_norm}, "
        f"precision {_precision_text(t.precision, results)}.",
        f"- Evaluation on `{cfg.eval.split}` ({cfg.data.max_eval_examples or 'all'} examples): the prior's top "
        f"{cfg.eval.top_k}, decoding `{cfg.eval.decode}`, at most {cfg.eval.max_new_tokens} new tokens.",
        *_how_lines(results),
        *_code_lines(results),
    ])


def _code_lines(results: Sequence[RunResult]) -> list[str]:
    """The code the runs trained with, from their logs' headers (``provenance.code_header``), if any recorded it."""
    def code(r: RunResult) -> str:
        ran = sorted({h.get("commit", h["jsarag"]) for h in r.headers if "jsarag" in h})
        return ", ".join(f"`{c}`" for c in ran) or "not recorded"

    groups = runs_by_value(results, code)
    if set(groups) == {"not recorded"}:
        return []
    return ["- Code the runs trained with (jsarag's commit, or its version outside a git checkout): "
            + groups_text(groups, results) + "."]


def _how_lines(results: Sequence[RunResult]) -> list[str]:
    """The settings line on runs that computed the same things differently (``how_settings_differ``), if any."""
    phrases = how_settings_differ(results)
    if not phrases:
        return []
    return ["- The runs differ in how they computed, not in what: " + "; ".join(phrases) + ". The arithmetic is the "
            "same up to floating-point rounding, which can still move a sampler's path (an acceptance near a tie "
            "goes the other way), as a change of machine can."]


# ---- statistics ---------------------------------------------------------------------------------
def paired_bootstrap(a: list[RunResult], b: list[RunResult], metric: str, samples: int = 2000,
                     seed: int = 0) -> tuple[float, float, float, int]:
    """Mean difference a - b over seeds and questions, its 95% bootstrap interval (resampling
    questions), and in how many seeds a beat b. Runs are paired by seed (same init, same data)."""
    by_seed_b = {r.seed: r for r in b}
    pairs = [(r, by_seed_b[r.seed]) for r in a if r.seed in by_seed_b]
    questions = sorted(set.intersection(*(set(x.per_question[metric]) for p in pairs for x in p)))
    diffs = [[ra.per_question[metric][q] - rb.per_question[metric][q] for q in questions] for ra, rb in pairs]
    per_q = [statistics.mean(d[i] for d in diffs) for i in range(len(questions))]
    mean = statistics.mean(per_q)
    rng = random.Random(seed)
    boots = sorted(statistics.mean(rng.choices(per_q, k=len(per_q))) for _ in range(samples))
    wins = sum(statistics.mean(d) > 0 for d in diffs)
    return mean, boots[int(0.025 * samples)], boots[int(0.975 * samples) - 1], wins


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _by_method(results: list[RunResult], keep=lambda r: True) -> dict[str, list[RunResult]]:
    """The runs kept by ``keep``, grouped by method in first-seen order."""
    groups: dict[str, list[RunResult]] = {}
    for r in results:
        if keep(r):
            groups.setdefault(r.method, []).append(r)
    return groups


def results_table(results: list[RunResult]) -> list[str]:
    groups = _by_method(results)
    head = ["method", "seeds", *REPORT_METRICS, "s / 100 steps", "median s / 100 steps", "uneven steps", "peak MiB"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, runs in groups.items():
        scale = {k: (100.0 if k.startswith(("recall", "mrr")) else 1.0) for k in REPORT_METRICS}
        cells = [method, str(len(runs))]
        cells += [_mean_std([r.summary.get(k, math.nan) * scale[k] for r in runs]) for k in REPORT_METRICS]
        uneven = [f"seed {r.seed} ({100 * r.step_spread:.0f}%)" for r in runs if r.step_spread > UNEVEN_STEPS]
        cells += [_mean_std([r.seconds_per_100_steps for r in runs]),
                  _mean_std([r.median_seconds_per_100_steps for r in runs]), ", ".join(uneven) or "-",
                  _mean_std([r.peak_memory_mib for r in runs])]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def retriever_table(results: list[RunResult]) -> list[str]:
    keys = ["prior_recall@1", "prior_recall@5", "posterior_recall@1", "posterior_recall@5"]
    groups = _by_method(results, lambda r: keys[0] in r.summary)
    rows = ["| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for method, runs in groups.items():
        rows.append(f"| {method} | " + " | ".join(_mean_std([100 * r.summary[k] for r in runs]) for k in keys) + " |")
    return rows


def estimators_used(methods: Iterable[str]) -> dict[str, list[str]]:
    """Registered estimator name -> the methods among ``methods`` that train with it, in the registry's order
    (names that are no method, e.g. ``untrained``, are left out)."""
    known = all_methods()
    chosen = [m for m in dict.fromkeys(methods) if m in known]
    used = {name: [m for m in chosen if known[m].estimator == name] for name in ESTIMATORS}
    return {name: ms for name, ms in used.items() if ms}


def _run_mean(run: RunResult, key: str) -> float:
    values = [c[key] for c in run.curves if c.get(key) is not None]
    return statistics.mean(values) if values else math.nan


def panel_table(panel: Panel, groups: dict[str, list[RunResult]]) -> list[str]:
    """A row per method: each metric's mean over a run's steps, then mean ± std over the method's seeds."""
    keys = list(panel.metrics)
    rows = ["| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    return rows + [f"| {method} | " + " | ".join(_mean_std([_run_mean(r, k) for r in runs]) for k in keys) + " |"
                   for method, runs in groups.items()]


def _panel_groups(results: list[RunResult]) -> list[tuple[Panel, dict[str, list[RunResult]]]]:
    """Each panel of the estimators that ran, with the runs of the methods that logged its metrics. Estimators
    that share a panel (the same title and metrics, e.g. EMDR2, PDist and LOOP's retriever and generator terms)
    share one entry."""
    merged: dict[tuple, tuple[Panel, dict[str, list[RunResult]]]] = {}
    for name, methods in estimators_used(r.method for r in results).items():
        groups = _by_method(results, lambda r, methods=methods: r.method in methods)
        for panel in ESTIMATORS[name].panels:
            logged = {m: runs for m, runs in groups.items()
                      if any(k in c for r in runs for c in r.curves for k in panel.metrics)}
            if logged:
                merged.setdefault((panel.title, tuple(panel.metrics.items())), (panel, {}))[1].update(logged)
    return list(merged.values())


def panel_tables(results: list[RunResult]) -> list[tuple[Panel, list[str]]]:
    """Each panel of the estimators that ran, with its table over the methods that logged the panel's metrics."""
    return [(panel, panel_table(panel, logged)) for panel, logged in _panel_groups(results)]


def panel_sections(results: list[RunResult]) -> list[str]:
    """The report's sections of the panels' tables; a title that two different panels share is followed by the
    methods of each, so that every heading is unique."""
    groups = _panel_groups(results)
    titles = [panel.title for panel, _ in groups]
    lines = []
    for panel, logged in groups:
        heading = f"{panel.title} during training" + (f" ({', '.join(logged)})" if titles.count(panel.title) > 1
                                                      else "")
        legend = "; ".join(f"`{key}`: {meaning}" for key, meaning in panel.metrics.items())
        lines += [f"## {heading}", "", *panel_table(panel, logged), "", "Logged at every step; each cell is the "
                  f"mean over a run's steps, then mean ± std over seeds. {legend}.", ""]
    return lines


def posterior_text(results: list[RunResult]) -> str:
    """Which of the methods that ran train the posterior retriever (their estimator's ``trains``)."""
    known = all_methods()
    training = [m for m in _methods_run(results) if "posterior" in ESTIMATORS[known[m].estimator].trains]
    if not training:
        return "None of these methods trains the posterior."
    return f"The posterior trains in {', '.join(training)}; the other rows keep it as loaded."


def significance_rows(results: list[RunResult], reference: str) -> list[str]:
    groups = _by_method(results)
    if reference not in groups:
        return []
    rows = [f"| {reference} minus | " + " | ".join(PAIRED_METRICS) + " |", "|---|" + "---|" * len(PAIRED_METRICS)]
    for method, runs in groups.items():
        if method in (reference, UNTRAINED):
            continue
        cells = []
        for metric in PAIRED_METRICS:
            mean, low, high, wins = paired_bootstrap(groups[reference], runs, metric)
            beyond = (low > 0 or high < 0) and wins in (0, len(runs))
            cells.append(f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] ({wins}/{len(runs)})"
                         + (" **beyond noise**" if beyond else ""))
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    return rows


# ---- plots and report ---------------------------------------------------------------------------
def _smooth(values: list[float], width: int = 10) -> list[float]:
    return [statistics.mean(values[max(0, i - width + 1): i + 1]) for i in range(len(values))]


# (file name, metric, title, log scale): what the training loop logs for every estimator
LOOP_PLOTS = (("learning_curves", "loss", "training loss, each method's own objective (smoothed)", False),
              ("posterior_grad_norm", "grad_norm/posterior", "posterior retriever gradient norm", True),
              ("prior_grad_norm", "grad_norm/prior", "prior retriever gradient norm", True))


def estimator_plots(methods: Iterable[str]) -> list[tuple[str, str, str, bool]]:
    """The plots of the metrics that the estimators of ``methods`` name in their panels' ``compared``."""
    plots = {key: (key, key, f"{panel.title}: {panel.metrics[key]} (smoothed)", False)
             for name in estimators_used(methods) for panel in ESTIMATORS[name].panels for key in panel.compared}
    return list(plots.values())


def write_plots(results: list[RunResult], plots_dir: Path, seed: int) -> list[Path]:
    plots_dir.mkdir(parents=True, exist_ok=True)
    runs = [r for r in results if r.seed == seed and r.curves]
    written = []
    for name, key, title, log_scale in [*LOOP_PLOTS, *estimator_plots(r.method for r in runs)]:
        curves = []
        for r in runs:
            points = [(c["step"], c[key]) for c in r.curves if c.get(key) is not None]
            if points:
                values = [v for _, v in points]
                curves.append((r.method, [s for s, _ in points], values if log_scale else _smooth(values)))
        if curves:
            written.append(line_plot(plots_dir / f"{name}.png", curves, f"{title}, seed {seed}",
                                     log_scale=log_scale))
    return written


def signal_table(results: list[RunResult]) -> list[str]:
    """A row per method (and the untrained models) whose runs carry a learning signal: each statistic in %, mean ±
    std over seeds."""
    groups = _by_method(results, lambda r: bool(r.signal))
    if not groups:
        return []
    keys = SIGNAL_METRICS
    rows = ["| model | seeds | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    return rows + [f"| {method} | {len(runs)} | " + " | ".join(_mean_std([100 * r.signal[k] for r in runs])
                                                             for k in keys) + " |"
                   for method, runs in groups.items()]


def signal_section(results: list[RunResult]) -> list[str]:
    lines = ["## Learning signal: does the generator's likelihood point at the gold passage?", ""]
    table = signal_table(results)
    if not table:
        return lines + ["Not among these results: their files were collected with `--signal-examples 0`.", ""]
    questions = "/".join(sorted({f"{r.signal['examples']:.0f}" for r in results if r.signal}, key=int))
    return lines + [
        *table, "",
        f"On the first {questions} training questions with a gold passage; candidates: the prior's top K plus the "
        "gold passage. `*_top1`: % of questions where the gold passage is the argmax of the prior, of the "
        "generator's log-likelihood of the gold answer, and of the posterior p_r p_g / Z that every estimator here "
        "moves the prior towards; `*_gold_mass`: mean probability (%) of the gold passage under the prior and "
        "under that posterior. Rows after `untrained` use each method's trained weights, mean ± std over its "
        "seeds.", ""]


def variance_section(rows: list[str], note: str) -> list[str]:
    lines = ["## Gradient variance (log of the summed per-parameter variance, fixed batch)", ""]
    if not rows:
        return lines + [note, ""]
    return lines + [*rows, "", "Cells give log sum_j Var[g_j] over the redraws; `0 (...)` marks a variance that is "
                                "exactly zero (no randomness reaches that component), not a logarithm.", ""]


def write_report(path: Path, *, name: str, command: str, settings: str, results: list[RunResult], runs_dir: Path,
                 plots: list[Path], reference: str, signal: list[str], variance: list[str], notes: str = "") -> None:
    """The results page; ``signal`` and ``variance`` are its optional sections (``signal_section``,
    ``variance_section``)."""
    lines = [f"# {name}: end-to-end estimators compared", "",
             "Produced by the command below; no number here was edited by hand. The page is built from each "
             f"run's result file in `{os.path.relpath(runs_dir, path.parent)}/`: the same command with "
             "`--from-results` rebuilds it from them alone, so its seeds can run on different machines.", "",
             "```bash", command, "```", "", "## Settings", "", settings, "",
             "## Results (held-out split; mean ± standard deviation over seeds)", "",
             *results_table(results), "",
             "EM, F1, ROUGE-L and BLEU-4 are on a 0-100 scale; Recall@k and MRR@10 are percentages. "
             "`s / 100 steps` and `median s / 100 steps` are the mean and the median step time (first step "
             "excluded) x 100; `uneven steps` names the seeds whose step times spread by more than "
             f"{100 * UNEVEN_STEPS:.0f}% ((p90 - p10) / median over the run's steps, in brackets): most often "
             "another process shared the machine for part of the run, so their times, not their results, are "
             "suspect (a step cost that varies with the batch widens the spread too). `peak MiB` is the "
             "training process's peak resident memory.", "",
             "## Which differences are beyond noise", "",
             "Paired by seed (same initial weights, same data order) and by question: mean difference in "
             "points, its 95% bootstrap interval over questions, and the number of seeds in which the "
             "reference method was ahead. A difference is called beyond noise when the interval excludes 0 "
             "and the sign is the same in every seed.", "",
             *significance_rows(results, reference), "",
             "## Retrievers after training (Recall@k against the gold passages)", "",
             *retriever_table(results), "",
             "The prior reads the question (this is what the model uses at inference); the posterior reads "
             f"question [SEP] gold answer, as in training. {posterior_text(results)}", "",
             *panel_sections(results),
             *signal, *variance,
             "## Plots", "", *[f"![{p.stem}]({os.path.relpath(p, path.parent)})" for p in plots], ""]
    if notes:
        lines += ["## Notes", "", notes, ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


# ---- the command ----------------------------------------------------------------------------------
def run_study(config: str | Path, *, name: str, out: str | Path, seeds: list[int], methods: list[str],
              reference: str, variance_draws: int, signal_examples: int, report_dir: str | Path,
              overrides: list[str], from_results: bool = False, drop_checkpoints: bool = False) -> list[RunResult]:
    """`jsarag compare`: the runs (trained, collected or read from their files), the variance table, then
    REPORT_DIR/NAME.md and its plots in REPORT_DIR/NAME/. Returns the results the page shows."""
    out, report_dir = Path(out), Path(report_dir)
    if variance_draws == 1:  # refused before the training, not after it
        raise UserError("--variance-draws 1: a variance needs at least 2 redraws (0 leaves the table out)")
    folder = report_dir / name
    results = run_comparison(config, out, seeds=seeds, methods=methods, overrides=overrides,
                             runs_dir=folder / "runs", signal_examples=signal_examples, from_results=from_results,
                             drop_checkpoints=drop_checkpoints)
    variance = variance_rows(config, out, methods=methods, overrides=overrides, draws=variance_draws,
                             path=folder / "variance.json", from_results=from_results)
    plots = write_plots(results, folder, seed=seeds[0])
    # The command that trains what the page shows; --from-results only changes where the numbers are read from.
    command = " ".join(["jsarag compare", str(config), f"--name {name}", f"--out {out}",
                        f"--seeds {','.join(map(str, seeds))}", f"--methods {','.join(methods)}",
                        f"--reference {reference}", f"--variance-draws {variance_draws}",
                        f"--signal-examples {signal_examples}", *overrides])
    settings = settings_text(load_config(config, overrides), config=config, overrides=overrides, results=results)
    write_report(report_dir / f"{name}.md", name=name, command=command, settings=settings, results=results,
                 runs_dir=folder / "runs", plots=plots, reference=reference,
                 signal=signal_section(results) if signal_examples > 0 else [],
                 variance=variance_section(*variance))
    return results
