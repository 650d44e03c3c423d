"""The ``jsarag`` command line: thin subcommands, each calling one library function.

A user's mistake (unknown config key, wrong type, missing file, bad data line, an index built for
another corpus or encoder, an --out folder of another kind or in use) prints one line on stderr and
exits with code 2, writing nothing. A training run that diverges (``train.max_nonfinite_steps``
non-finite steps in a row) prints one line and exits with code 3; its checkpoints are all finite.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from jsarag.errors import USER_ERRORS, TrainingDivergedError

app = typer.Typer(help="Train retrieval-augmented generation models end to end (JSA-RAG, RAG, VRAG).",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
index_app = typer.Typer(help="Build FAISS indexes.", no_args_is_help=True)
app.add_typer(index_app, name="index")
data_app = typer.Typer(help="Convert published datasets into the project's schema.", no_args_is_help=True)
app.add_typer(data_app, name="data")

OVERRIDES = typer.Argument(None, help="Config overrides, e.g. optim.lr_generator=1e-4 estimator.name=vrag",
                           show_default=False)
# Resolved from the estimator registry when the command runs (reading it here would import torch for --help).
METHODS = typer.Option(None, help="Comma-separated methods (default: every method of every registered "
                                  "estimator).", show_default=False)


# Verbs that load models; the others (help included) never import torch or transformers.
LOADS_MODELS = {"index_build", "train", "eval_cmd", "ask", "quickstart", "compare", "variance"}


def _quiet_model_loading() -> None:
    """jsarag shows its own progress bars; transformers' per-load "Loading weights" bars are noise."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def user_errors(fn):
    """Report user mistakes as one line and exit code 2, a diverged training run with exit code 3."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            if fn.__name__ in LOADS_MODELS:
                _quiet_model_loading()
            return fn(*args, **kwargs)
        except USER_ERRORS as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        except TrainingDivergedError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(3) from None
        except FileNotFoundError as err:
            typer.echo(f"error: file not found: {err.filename or err}", err=True)
            raise typer.Exit(2) from None
    return wrapper


@index_app.command("build")
@user_errors
def index_build(config: Path = typer.Argument(..., help="YAML config (data.corpus, retriever, index)."),
                out: Path = typer.Option(..., "--out", help="Folder to write the index into (new or empty)."),
                overwrite: bool = typer.Option(False, "--overwrite", help="Replace the index already in --out "
                                               "(only its own files)."),
                resume: bool = typer.Option(False, "--resume", help="Keep the passage vectors already encoded "
                                            "into --out by a build that was stopped; encode only the rest."),
                overrides: Optional[list[str]] = OVERRIDES):
    """Encode the corpus into float16 vector shards (resumable; one share per process under torchrun), build
    the FAISS index from them, and save both with their metadata."""
    from jsarag.pipeline import build_index_folder

    index = build_index_folder(config, out, overwrite=overwrite, resume=resume, overrides=overrides)
    if index is not None:
        recall = (f", recall@10 {index.meta.recall_at_10:.3f} against exact search on {index.meta.recall_queries}"
                  if index.meta.recall_at_10 is not None else "")
        typer.echo(f"indexed {len(index)} passages ({index.meta.factory}"
                   f"{', ' + index.meta.search_params if index.meta.search_params else ''}, d={index.meta.dim}"
                   f"{recall}) into {out}")


@data_app.command("convert")
@user_errors
def data_convert(fmt: str = typer.Argument(..., metavar="FORMAT", help="dpr, msmarco, beir, kilt, orquac or doqa."),
                 out: Path = typer.Option(..., "--out", help="New folder for corpus/ (a store) and the split files."),
                 sources: list[str] = typer.Argument(..., metavar="SOURCE...", help="Input files, as PATH or "
                                                     "ROLE=PATH (e.g. train=nq-train.json).")):
    """Convert a dataset (streaming, validated) into DIR/corpus/ and DIR/{train,dev,test}.jsonl."""
    from jsarag.data.convert import convert

    summary = convert(fmt, sources, out)
    splits = ", ".join(f"{name} {info['examples']:,}" for name, info in summary["splits"].items()) or "no splits"
    typer.echo(f"converted {summary['corpus']['passages']:,} passages and {splits} examples into {out}")
    keys = [f"data.corpus={out / 'corpus'}", *(f"data.{name}={out / (name + '.jsonl')}" for name in summary["splits"])]
    typer.echo("use it with: " + " ".join(keys))


@app.command()
@user_errors
def train(config: Path = typer.Argument(..., help="YAML config."),
          out: Path = typer.Option(..., "--out", help="Run folder (checkpoints, metrics, evaluation)."),
          resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its newest checkpoint."),
          overrides: Optional[list[str]] = OVERRIDES):
    """Train with the configured estimator; evaluates on the dev split at the end."""
    from jsarag.config import load_config

    cfg = load_config(config, overrides)  # a mistake in the config is reported before the training code loads
    from jsarag.train.loop import train as run_training

    final = run_training(cfg, out, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(f"final checkpoint: {final}")


@app.command("eval")
@user_errors
def eval_cmd(target: Path = typer.Argument(..., help="A run folder (newest checkpoint) or a config file "
                                                     "(untrained models)."),
             checkpoint: Optional[Path] = typer.Option(None, help="A specific checkpoint folder."),
             split: Optional[str] = typer.Option(None, help="dev, test or train (default: eval.split)."),
             out: Optional[Path] = typer.Option(None, help="Where to write predictions.jsonl and summary.json."),
             overrides: Optional[list[str]] = OVERRIDES):
    """Retrieve with the prior, generate, and report EM/F1/BLEU/ROUGE and Recall/MRR."""
    from rich.console import Console

    from jsarag.eval.evaluate import evaluate, summary_table, write_result
    from jsarag.pipeline import load_run

    extra = list(overrides or []) + ([f"eval.split={split}"] if split else [])
    run = load_run(target, extra, checkpoint=checkpoint)
    examples = run.split()
    result = evaluate(run.model, examples, run.cfg.eval, device=run.device, precision=run.cfg.train.precision)
    destination = out or (run.run_dir / "eval" / run.cfg.eval.split if run.run_dir is not None else None)
    if destination is not None:
        write_result(result, destination)
    name = run.checkpoint.name if run.checkpoint else "untrained"
    Console().print(summary_table({name: result.summary}, title=f"{run.cfg.eval.split} ({len(examples)} examples)"))


@app.command()
@user_errors
def ask(target: Path = typer.Argument(..., help="A run folder or a config file."),
        question: Optional[str] = typer.Option(None, "--question", "-q", help="Ask once; omit for a prompt loop."),
        top_k: Optional[int] = typer.Option(None, help="Passages to show and answer from (default: eval.top_k)."),
        overrides: Optional[list[str]] = OVERRIDES):
    """Answer questions: shows the retrieved passages with their scores, then the answer."""
    from jsarag.eval.ask import answer_and_show, check_question
    from jsarag.pipeline import load_run

    if question is not None:
        check_question(question)  # before the models load
    extra = [*(overrides or []), *([f"eval.top_k={top_k}"] if top_k is not None else [])]
    run = load_run(target, extra, progress=False)
    model, cfg, kind = run.model, run.cfg, run.kind
    if question is not None:
        answer_and_show(model, question, cfg, run.device, kind)
        return
    typer.echo("Ask a question (empty line or Ctrl-D to quit).")
    for line in sys.stdin if not sys.stdin.isatty() else iter(lambda: input("> "), ""):
        if not line.strip():
            break
        answer_and_show(model, line.strip(), cfg, run.device, kind)


@app.command()
@user_errors
def plot(run_dir: Path = typer.Argument(..., help="A run folder with metrics.jsonl."),
         out: Optional[Path] = typer.Option(None, help="Where to write the PNGs (default RUN_DIR/plots).")):
    """Write PNG curves: losses, acceptance rate, gradient norms, evaluation metrics."""
    from jsarag.eval.plots import plot_run

    for path in plot_run(run_dir, out):
        typer.echo(str(path))


@app.command()
@user_errors
def quickstart(out: Path = typer.Option(Path("runs/quickstart"), "--out", help="Run folder (replaced)."),
               overrides: Optional[list[str]] = OVERRIDES):
    """Index the shipped dialogue sample, evaluate, train JSA-RAG briefly, evaluate again, compare."""
    from jsarag.quickstart import run_quickstart

    run_quickstart(out, overrides or [])


@app.command(epilog="Each finished run's results are kept in REPORT_DIR/NAME/runs/seed<S>/<method>.json (small "
                     "JSON, with the settings it ran with) and the page is built from these files; a run that has "
                     "a file but no run folder is read, not trained again. To spread the seeds over machines: "
                     "`--seeds 0` on one, `--seeds 1 --variance-draws 0` on another, commit REPORT_DIR/NAME/runs/ "
                     "(and the first machine's REPORT_DIR/NAME/variance.json), then rebuild the page anywhere with "
                     "`--seeds 0,1 --from-results`. Files from other settings are refused.")
@user_errors
def compare(config: Path = typer.Argument(..., help="Dataset config (e.g. configs/squad/base.yaml)."),
            name: str = typer.Option(..., help="Dataset name for the report: docs/results/NAME.md."),
            out: Path = typer.Option(..., "--out", help="Study folder (runs, index, logs); rerun to resume."),
            seeds: str = typer.Option("0,1,2", help="Comma-separated seeds."),
            methods: Optional[str] = METHODS,
            reference: Optional[str] = typer.Option(None, help="The method the others are measured against in the "
                                                    "significance table (default: jsa_sum when it runs, else the "
                                                    "first method).", show_default=False),
            variance_draws: int = typer.Option(20, help="Redraws for the gradient-variance table (0: skip)."),
            report_dir: Path = typer.Option(Path("docs/results"), help="Where the report, its plots and the runs' "
                                            "result files go."),
            signal_examples: int = typer.Option(60, help="Training questions for the learning-signal table "
                                                "(0: skip)."),
            from_results: bool = typer.Option(False, "--from-results", help="Train, evaluate and load nothing: "
                                              "rebuild the report from the result files in REPORT_DIR/NAME/ alone "
                                              "(e.g. each seed's, committed from the machine that ran it)."),
            drop_checkpoints: bool = typer.Option(False, "--drop-checkpoints", help="Delete each run's "
                                                  "checkpoints once its result file is written: the study keeps "
                                                  "the runs' evaluations, logs and result files (a few MB a run "
                                                  "instead of the model and optimizer state), and a dropped run "
                                                  "can no longer be resumed or extended."),
            overrides: Optional[list[str]] = OVERRIDES):
    """Train every estimator from the same weights and data; write a results page with plots."""
    from rich.console import Console
    from rich.markdown import Markdown

    from jsarag.study.methods import choose_methods, choose_reference

    chosen = choose_methods(methods)  # an unknown method is reported before the study code loads
    from jsarag.study.compare import results_table, run_study

    results = run_study(config, name=name, out=out, seeds=[int(s) for s in seeds.split(",") if s], methods=chosen,
                        reference=choose_reference(chosen, reference), variance_draws=variance_draws,
                        signal_examples=signal_examples, report_dir=report_dir, overrides=list(overrides or []),
                        from_results=from_results, drop_checkpoints=drop_checkpoints)
    Console().print(Markdown("\n".join(results_table(results))))


@app.command()
@user_errors
def variance(config: Path = typer.Argument(..., help="Dataset config."),
             methods: Optional[str] = METHODS,
             draws: int = typer.Option(20, help="Redraws of each estimator's randomness."),
             batch_size: int = typer.Option(4, help="Examples in the fixed mini-batch."),
             out: Optional[Path] = typer.Option(None, help="Write the results as JSON here."),
             overrides: Optional[list[str]] = OVERRIDES):
    """Gradient variance per component at fixed parameters and a fixed mini-batch."""
    from jsarag.fileio import write_text_atomic
    from jsarag.study.methods import choose_methods
    from jsarag.study.results import finite_or_null
    from jsarag.study.variance import format_variance, gradient_variance

    chosen = choose_methods(methods)
    results = gradient_variance(config, list(overrides or []), chosen, draws=draws, batch_size=batch_size)
    if out is not None:
        write_text_atomic(out, json.dumps(finite_or_null(results), indent=2, allow_nan=False))
    typer.echo("\n".join(format_variance(results)))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
