"""Answer one question and show how: the retrieved passages with their scores, then the answer."""

from __future__ import annotations

import sys

import torch
from rich.console import Console
from rich.table import Table

from jsarag.data import Batch
from jsarag.errors import UserError
from jsarag.eval.evaluate import answer_batch
from jsarag.train.distributed import autocast


def check_question(question: str) -> str:
    """The question without surrounding blanks; an empty one is refused."""
    if not question.strip():
        raise UserError("the question is empty: ask something, e.g. --question 'Who discovered oxygen?'")
    return question.strip()


def truncation_note(model, question: str, kind: str) -> str | None:
    """What the retriever and the generator leave out of an over-long question, or None."""
    encoder, prompts = model.retriever.prior, model.generator.prompts
    parts = []
    length = len(encoder.tokenizer(question, verbose=False)["input_ids"])
    if length > encoder.max_length:
        side = "last" if encoder.tokenizer.truncation_side == "left" else "first"
        parts.append(f"the retriever reads its {side} {encoder.max_length} of {length} tokens "
                     f"(retriever.max_query_length)")
    length = prompts.query_length(question, kind)
    if length > prompts.max_query_tokens:
        side = "last" if kind == "context" else "first"
        parts.append(f"the generator reads its {side} {prompts.max_query_tokens} of {length} tokens "
                     f"(generator.max_query_tokens)")
    return f"note: the question is truncated: {'; '.join(parts)}" if parts else None


def answer_and_show(model, question: str, cfg, device: torch.device, kind: str = "question",
                    console: Console | None = None) -> dict:
    """``kind`` is the training data's: a dialogue model gets the line as the user's turn. A question
    longer than the retriever or the generator reads is truncated, with a note on stderr."""
    console = console or Console()
    question = check_question(question)
    if kind == "context" and not question.startswith(("User:", "System:")):
        question = f"User: {question}"
    note = truncation_note(model, question, kind)
    if note:
        print(note, file=sys.stderr, flush=True)
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
