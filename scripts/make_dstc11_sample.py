"""Build the quickstart dataset `dstc11` shipped inside the package (standard library only).

    python scripts/make_dstc11_sample.py ../shared/data/dstc11_track5 src/jsarag/resources/datasets/dstc11

Source: the normalised DSTC11 track 5 files (see that folder's README for provenance and licence).
Kept: the whole knowledge base (10,882 FAQ and review snippets of 33 hotels and 110 restaurants), every
turn of the `train` split (1,516), and 60 turns of the `dev` split drawn by a seeded shuffle. Train and
dev turns come from different dialogues (the source splits by dialogue) and share the knowledge base.
Deterministic: the same input gives byte-identical output. The licence text is copied beside the data,
as CDLA-Sharing-1.0 requires.
"""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path

from jsonl_io import read, write  # scripts/jsonl_io.py

DEV_SIZE = 60
SEED = 11


def main(src: Path, dst: Path) -> None:
    corpus = read(src / "corpus.jsonl")
    train = read(src / "train.jsonl")
    dev = sorted(read(src / "dev.jsonl"), key=lambda t: t["id"])
    random.Random(SEED).shuffle(dev)
    dev = sorted(dev[:DEV_SIZE], key=lambda t: t["id"])
    dst.mkdir(parents=True, exist_ok=True)
    write(dst / "corpus.jsonl", corpus)
    write(dst / "train.jsonl", train)
    write(dst / "dev.jsonl", dev)
    shutil.copyfile(src / "raw" / "DATALICENSE", dst / "LICENSE")
    entities = len({p["title"] for p in corpus})
    print(f"{len(corpus)} snippets of {entities} hotels and restaurants, {len(train)} train and {len(dev)} dev "
          f"turns -> {dst}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
