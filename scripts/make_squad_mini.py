"""Build the quickstart dataset `squad_mini` shipped inside the package (standard library only).

    python scripts/make_squad_mini.py ../shared/data/squad_v1_dev src/jsarag/resources/datasets/squad_mini

Source: the normalised SQuAD v1.1 dev files (see that folder's README for provenance). Kept: the
paragraphs of at most 110 words of six articles on distinct topics, and every question whose gold
paragraph is kept. Questions are split by a seeded shuffle into dev (60) and train (the rest); both
splits ask about the same passages (a fixed knowledge base with new questions), unlike the by-article
splits of the full dataset. Deterministic: the same input gives byte-identical output.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from jsonl_io import read, write  # scripts/jsonl_io.py

ARTICLES = ("Nikola Tesla", "Rhine", "Oxygen", "Southern California", "Amazon rainforest", "Steam engine")
MAX_WORDS = 110
DEV_SIZE = 60
SEED = 7


def main(src: Path, dst: Path) -> None:
    corpus = [p for p in read(src / "corpus.jsonl")
              if p["title"] in ARTICLES and len(p["text"].split()) <= MAX_WORDS]
    kept = {p["id"] for p in corpus}
    questions = [q for split in ("train", "dev", "test") for q in read(src / f"{split}.jsonl")
                 if q["positive_ids"][0] in kept]
    questions.sort(key=lambda q: q["id"])
    random.Random(SEED).shuffle(questions)
    dst.mkdir(parents=True, exist_ok=True)
    write(dst / "corpus.jsonl", corpus)
    write(dst / "dev.jsonl", questions[:DEV_SIZE])
    write(dst / "train.jsonl", questions[DEV_SIZE:])
    print(f"{len(corpus)} passages, {len(questions) - DEV_SIZE} train and {DEV_SIZE} dev questions -> {dst}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
