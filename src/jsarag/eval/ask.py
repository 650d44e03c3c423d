"""Answer one question and show how: the retrieved passages with their scores, then the answer."""

from __future__ import annotations

import torch
from rich.console import Console
from rich.table import Table

from jsarag.data import Batch
from jsarag.eval.evaluate import answer_batch
from jsarag.train.distributed import autocast


def answer_and_show(model, question: str, cfg, device: torch.device, kind: str = "question",
                    console: Console | None = None) -> dict:
    """``kind`` is the training data's: a dialogue model gets the line as the user's turn."""
    console = console or Console()
    if kind == "context" and not question.startswith(("User:", "System:")):
        question = f"User: {question}"
    batch = Batch(ids=["question"], queries=[question], answers=[""], all_answers=[("",)],
                  positive_ids=[()], kind=kind)
    model.eval()
    with autocast(device, cfg.train.precision):
        prediction = answer_batch(model, batch, cfg.eval, cfg.eval.top_k)[0]
    corpus = model.retriever.corpus
    table = Table(title=f"top {cfg.eval.top_k} passages", show_lines=True)
    for column in ("#", "p_r(h|x)", "id", "passage"):
        table.add_column(column)
    for rank, (pid, prob) in enumerate(zip(prediction["retrieved"], prediction["prior"]), start=1):
        passage = corpus[corpus.row(pid)]
        text = passage.text if len(passage.text) < 300 else passage.text[:300] + "..."
        marker = " *" if prediction["chosen"] == rank - 1 else ""
        table.add_row(f"{rank}{marker}", f"{prob:.3f}", pid, f"{passage.title}: {text}" if passage.title else text)
    console.print(table)
    console.print(f"[bold]answer:[/bold] {prediction['prediction']}")
    return prediction
