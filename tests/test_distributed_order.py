"""`local_main_first`: under two processes, the block runs on local rank 0 before the other enters it."""

from __future__ import annotations

import json
import os
import time


def _worker(rank: int, port: int, log: str) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    from jsarag.train import distributed as dist

    env = dist.setup("cpu")
    try:
        with dist.local_main_first(env):
            began = time.monotonic()
            if rank == 0:
                time.sleep(0.5)  # e.g. converting a data file into the store cache
            with open(log, "a") as f:
                f.write(json.dumps({"rank": rank, "began": began, "ended": time.monotonic()}) + "\n")
    finally:
        dist.cleanup(env)


def test_local_main_first_runs_the_block_on_local_rank_0_first(tmp_path):
    import torch.multiprocessing as mp

    log = tmp_path / "order.jsonl"
    mp.start_processes(_worker, args=(29541, str(log)), nprocs=2, start_method="spawn", join=True)
    first, second = [json.loads(line) for line in log.read_text().splitlines()]
    assert (first["rank"], second["rank"]) == (0, 1)
    assert second["began"] >= first["ended"]
