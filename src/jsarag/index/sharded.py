"""Exact top-K search over an index sharded across the processes of a torch.distributed group.

Each rank holds the contiguous rows ``shard_bounds(n, rank, world)`` of an n-row index (the way Atlas
spreads its index over GPUs) and has its own batch of queries. ``sharded_search`` is a collective:

1. all-gather ``[B, d, k]`` per rank: the query counts decide the padding, and checking that every rank
   passed the same ``d`` and ``k`` lets all ranks raise together instead of hanging in a later collective;
2. pad each rank's queries to the largest B and all-gather them (``world * B * d`` floats): every shard
   must see every query, because any shard may hold any query's best rows;
3. search the concatenated queries on the local shard with ``k_local = k``: a shard can hold all k best
   rows of a query, so fewer would not be exact, and more would never be used;
4. turn local rows to global (``+ offset``, filler -1 kept) and all-gather scores and rows
   (``world * world * B * k``); every rank searched the same queries in the same order, so the shapes
   already agree and need no padding;
5. merge the ``world * k`` candidates of this rank's own queries with ``merge_top_k``.

An all_to_all in step 4 would send each rank only its own queries' results (a factor ``world`` less),
but all_gather is what both gloo and NCCL support alike, and results are small next to the queries.
The merge breaks ties by the smaller global row, so the result does not depend on the world size and
equals a single Flat index's order whenever scores are distinct.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist

LocalSearch = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [start, stop) of an n-row index held by `rank` of `world`: contiguous, sizes differ by at most one,
    the first n % world ranks one larger."""
    if n < 0 or world < 1 or not 0 <= rank < world:
        raise ValueError(f"shard_bounds needs n >= 0 and 0 <= rank < world, got n={n}, rank={rank}, world={world}")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def merge_top_k(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """[Q, S*k'] candidate scores and global rows from S shards -> the best k per query, best first (float32 [Q, k],
    int64 [Q, k]). Entries with row -1 (a shard with fewer than k' rows, FAISS's filler) never win. Ties broken by
    smaller row, so the result is deterministic and equals a single Flat index's order for distinct scores."""
    scores = np.asarray(scores, dtype=np.float32)
    rows = np.asarray(rows, dtype=np.int64)
    if scores.shape != rows.shape or scores.ndim != 2:
        raise ValueError(f"scores and rows must be the same [Q, C] shape, got {scores.shape} and {rows.shape}")
    if not 0 <= k <= scores.shape[1]:
        raise ValueError(f"k={k} must be between 0 and the {scores.shape[1]} candidates per query")
    # lexsort's last key is the primary one: real rows before fillers (whatever score FAISS gave the filler,
    # -FLT_MAX for inner product), then higher score, then smaller row. C = S*k' is small, so a full sort costs
    # little and avoids argpartition's arbitrary choice among ties at the k-th place.
    order = np.lexsort((rows, -scores, rows < 0), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1)


def _search_global(
    local_search: LocalSearch, queries: np.ndarray, k: int, offset: int
) -> tuple[np.ndarray, np.ndarray]:
    """local_search as [len(queries), k] float32 scores and int64 global rows. Coercing the width here (filler past
    what local_search returned, cut beyond k) keeps the shapes every rank all-gathers identical."""
    scores, rows = local_search(queries, k)
    scores = np.asarray(scores, dtype=np.float32).reshape(len(queries), -1)[:, :k]
    rows = np.asarray(rows, dtype=np.int64).reshape(len(queries), -1)[:, :k]
    if rows.shape[1] < k:
        pad = ((0, 0), (0, k - rows.shape[1]))
        scores = np.pad(scores, pad, constant_values=np.float32(-np.finfo(np.float32).max))
        rows = np.pad(rows, pad, constant_values=-1)
    return scores, np.where(rows >= 0, rows + offset, -1)


def _all_gather(t: torch.Tensor) -> torch.Tensor:
    """[world, *t.shape]: every rank's t, in rank order (all ranks must pass the same shape)."""
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.stack(out)


def sharded_search(
    local_search: LocalSearch, queries: np.ndarray, k: int, *, offset: int, device: torch.device | str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Collective: every process of the default process group calls it with its own queries [B_rank, d] (B may
    differ per rank, even 0) and the same k; returns this rank's queries' top k over the whole index (scores float32
    [B_rank, k], rows int64 [B_rank, k]). See the module docstring for the protocol. `local_search(q, k_local) ->
    (scores, rows)` searches this rank's shard (rows local, 0-based, -1 for missing); `offset` is this rank's first
    global row. `device`: where the collectives' tensors live (default: the current CUDA device under NCCL, else CPU).
    Without an initialised process group, or with world size 1, it is local_search(queries, k) with rows + offset."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2:
        raise ValueError(f"queries must be [B, d], got shape {q.shape}")
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return _search_global(local_search, q, k, offset)

    world, rank = dist.get_world_size(), dist.get_rank()
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    device = torch.device(device)

    # 1. counts (and d, k, so that a mismatch fails on every rank at once rather than hanging one of them)
    shapes = _all_gather(torch.tensor([q.shape[0], q.shape[1], k], dtype=torch.int64, device=device)).cpu().numpy()
    if len(set(shapes[:, 1])) > 1 or len(set(shapes[:, 2])) > 1:
        raise ValueError(f"sharded_search: ranks disagree on d or k ([B, d, k] per rank: {shapes.tolist()})")
    counts = shapes[:, 0]
    starts = np.concatenate([[0], np.cumsum(counts)])
    if starts[-1] == 0:  # no rank has a query: every rank knows it, so all skip the remaining collectives
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)

    # 2. everyone's queries, padded to the largest batch because all_gather needs equal shapes
    padded = torch.zeros((int(counts.max()), q.shape[1]), dtype=torch.float32, device=device)
    padded[: len(q)] = torch.from_numpy(q).to(device)
    gathered = _all_gather(padded).cpu().numpy()
    all_q = np.concatenate([gathered[r, : counts[r]] for r in range(world)])

    # 3-4. search the padding-free batch here, then share the results (same [sum B, k] shape on every rank)
    scores, rows = _search_global(local_search, all_q, k, offset)
    all_scores = _all_gather(torch.from_numpy(scores).to(device)).cpu().numpy()  # [world shards, sum B, k]
    all_rows = _all_gather(torch.from_numpy(rows).to(device)).cpu().numpy()

    # 5. this rank's queries: the k candidates of each shard side by side -> [B, world * k], then the best k
    mine = slice(starts[rank], starts[rank + 1])
    cand_scores = all_scores[:, mine].transpose(1, 0, 2).reshape(int(counts[rank]), world * k)
    cand_rows = all_rows[:, mine].transpose(1, 0, 2).reshape(int(counts[rank]), world * k)
    return merge_top_k(cand_scores, cand_rows, k)
