"""``jsarag ask``: an empty question is refused (one line, exit 2, before any model loads); an over-long one
is truncated with a one-line note instead of the tokenizer's "indexing errors" warning (issue 16 item 7)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jsarag.errors import UserError

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
EMPTY = "error: the question is empty: ask something, e.g. --question 'Who discovered oxygen?'"


@pytest.mark.parametrize("question", ["", "  \t "])
def test_empty_question_is_refused(question):
    from jsarag.eval.ask import check_question

    with pytest.raises(UserError) as info:
        check_question(question)
    assert f"error: {info.value}" == EMPTY


def test_cli_refuses_an_empty_question(tmp_path):
    env = {**os.environ, "JSARAG_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "jsarag", "ask", str(TINY), "-q", " "], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == EMPTY
    assert not (tmp_path / "cache").exists()  # refused before the corpus or a model was read


def test_long_question_is_truncated_with_a_note(tmp_path, capfd):
    from rich.console import Console

    from jsarag.eval.ask import answer_and_show
    from jsarag.pipeline import load_run

    run = load_run(TINY, build_dir=tmp_path / "index", progress=False)
    capfd.readouterr()
    shown = io.StringIO()
    prediction = answer_and_show(run.model, "word " * 3000, run.cfg, run.device, run.kind,
                                 console=Console(file=shown))
    err = capfd.readouterr().err
    assert err.splitlines() == [
        "note: the question is truncated: the retriever reads its last 32 of 3002 tokens "
        "(retriever.max_query_length); the generator reads its first 24 of 3002 tokens "
        "(generator.max_query_tokens)"]
    assert len(prediction["retrieved"]) == run.cfg.eval.top_k and "answer:" in shown.getvalue()
    # A question that fits says nothing.
    answer_and_show(run.model, "Who discovered oxygen?", run.cfg, run.device, run.kind, console=Console(file=shown))
    assert capfd.readouterr().err == ""
