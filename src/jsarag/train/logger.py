"""Run logs: ``metrics.jsonl`` (one JSON object per line, each with ``step``) and TensorBoard.

Each start of a run (fresh or resumed) first logs a header, ``{"step": START, "run": {...}}``: the precision
set and resolved, the device and the CPU's capability (``distributed.precision_header``), the number of processes
and the process group's backend if there is one (``distributed.process_header``), jsarag's version and
commit (``provenance.code_header``); TensorBoard skips it.

Only the main process writes. On resume, lines logged after the checkpoint (by the run that was
killed) are dropped, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of ``metrics.jsonl``; a last line torn by a kill in the middle of a write is left out."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise
    return records


class RunLogger:
    def __init__(self, run_dir: Path, *, enabled: bool, tensorboard: bool, resume_step: int = 0):
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self.writer = None
        if not enabled:
            return
        if resume_step > 0 or self.path.exists():
            kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= resume_step]
            # Into a new file that replaces the old one whole: a kill meanwhile must not lose the kept lines.
            tmp = self.path.with_name(f".{METRICS_FILE}.resume")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, self.path)
        self.file = self.path.open("a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_step + 1)

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        # JSON lines any parser reads: a value that is not finite (NaN; an infinity, e.g. the gradient norm of a step
        # skipped for overflowing, flagged by skipped_nonfinite) is null
        record = {"step": step, **{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                   for k, v in values.items()}}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.writer is not None:
                self.writer.close()
