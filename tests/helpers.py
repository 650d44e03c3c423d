"""Small shared test data."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

def _shared_data() -> Path:
    """The project's real datasets: $JSARAG_SHARED_DATA, ../shared/data beside the checkout, or /work."""
    for candidate in (os.environ.get("JSARAG_SHARED_DATA"), REPO.parent / "shared" / "data", "/work/shared/data"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return REPO.parent / "shared" / "data"


SHARED_DATA = _shared_data()


def tiny_passages(n: int = 5):
    from jsarag.data import Passage

    texts = [
        ("Paris", "Paris is the capital of France and sits on the Seine."),
        ("Oxygen", "Oxygen is a chemical element with symbol O and atomic number 8."),
        ("Rhine", "The Rhine flows from the Swiss Alps to the North Sea."),
        ("Tesla", "Nikola Tesla was an inventor known for alternating current."),
        ("Amazon", "The Amazon rainforest covers much of the Amazon basin of South America."),
        ("Steam", "A steam engine performs mechanical work using steam as its working fluid."),
        ("Tokyo", "Tokyo is the capital of Japan."),
        ("Nile", "The Nile is a major north-flowing river in northeastern Africa."),
    ]
    return [Passage(id=f"p{i}", title=t, text=x) for i, (t, x) in enumerate(texts[:n])]
