"""JSON Lines in and out for the dataset scripts beside this file (standard library only).

Output is byte-stable: one object per line, UTF-8 without escaping, keys in their given order.
"""

from __future__ import annotations

import json
from pathlib import Path


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
