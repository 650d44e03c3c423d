"""Build the quickstart dataset `dstc11_hotels` shipped inside the package (standard library only).

    python scripts/make_dstc11_hotels.py ../shared/data/dstc11_track5 src/jsarag/resources/datasets/dstc11_hotels

Source: the normalised DSTC11 track 5 files (see that folder's README for provenance and licence).
Kept: the hotel domain. The knowledge base is every snippet (FAQ or review sentence) of the 33 hotels;
`train.jsonl` is every knowledge-seeking turn of the `train` split whose gold snippets are all hotel
snippets; `dev.jsonl` is 60 such turns of the `dev` split, drawn by a seeded shuffle. The two splits
come from different dialogues (the source splits by dialogue) and share the knowledge base.
Deterministic: the same input gives byte-identical output. The licence text is copied beside the data,
as CDLA-Sharing-1.0 requires.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

DOMAIN = "hotel"
DEV_SIZE = 60
SEED = 11


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def in_domain(snippet_id: str) -> bool:
    return snippet_id.split("-", 1)[0] == DOMAIN


def turns(path: Path) -> list[dict]:
    rows = [t for t in read(path) if all(in_domain(p) for p in t["positive_ids"])]
    return sorted(rows, key=lambda t: t["id"])


def main(src: Path, dst: Path) -> None:
    corpus = [p for p in read(src / "corpus.jsonl") if in_domain(p["id"])]
    train = turns(src / "train.jsonl")
    dev = turns(src / "dev.jsonl")
    random.Random(SEED).shuffle(dev)
    dev = sorted(dev[:DEV_SIZE], key=lambda t: t["id"])
    dst.mkdir(parents=True, exist_ok=True)
    write(dst / "corpus.jsonl", corpus)
    write(dst / "train.jsonl", train)
    write(dst / "dev.jsonl", dev)
    shutil.copyfile(src / "raw" / "DATALICENSE", dst / "LICENSE")
    entities = len({p["title"] for p in corpus})
    print(f"{len(corpus)} snippets of {entities} hotels, {len(train)} train and {len(dev)} dev turns -> {dst}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
