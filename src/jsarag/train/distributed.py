"""Devices, processes and precision: the only module that knows about ranks and devices.

One process on a CPU or a GPU, or several under ``torchrun`` / ``accelerate launch`` (both set
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR): then the model is wrapped in DistributedDataParallel
(NCCL on GPUs, Gloo on CPUs) and gradients are averaged across processes.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that prints, also before :func:`setup` has run."""
    return int(os.environ.get("RANK", "0")) == 0


def setup(device: str = "auto") -> DistEnv:
    """Join the process group when launched with several processes; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def cleanup(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, env: DistEnv) -> torch.nn.Module:
    """DDP over several processes; the bare model otherwise. ``find_unused_parameters`` because an
    estimator may leave a trainable component untouched in a step (e.g. a chain that stays put)."""
    if not env.distributed:
        return model
    ids = [env.local_rank] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def no_sync(model: torch.nn.Module, skip: bool):
    """Skip the gradient all-reduce on accumulation micro-steps that are not the last."""
    if skip and isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def autocast(device: torch.device, precision: str):
    """bf16 autocast (on CPUs with native bf16 it halves generator time); a no-op for fp32."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def mean_across(values: dict[str, float], env: DistEnv) -> dict[str, float]:
    """Average scalar metrics over processes (every process gets the result)."""
    if not env.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return dict(zip(keys, (t / env.world_size).tolist()))


def all_true(flag: bool, env: DistEnv) -> bool:
    """True only when ``flag`` is true on every process, so that all of them take the same branch."""
    if not env.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


@contextlib.contextmanager
def local_main_first(env: DistEnv):
    """The block runs on each machine's first process, then on the others: e.g. a data file is converted
    into the machine's store cache once, and the other processes open the result. Every process passes
    one barrier, before the block or after it."""
    if env.local_rank != 0:
        barrier(env)
    yield
    if env.local_rank == 0:
        barrier(env)


def gather_objects(obj, env: DistEnv) -> list:
    """Every process's ``obj``, in rank order (used for per-rank RNG states in checkpoints)."""
    if not env.distributed:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def spread_across(params, env: DistEnv) -> float:
    """Largest difference between processes of any parameter (0.0 when replicas are in sync)."""
    flat = torch.cat([p.detach().reshape(-1).double() for p in params])
    high, low = flat.clone(), flat.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    return (high - low).abs().max().item()


def peak_memory_mib(env: DistEnv) -> float:
    """Peak memory of this process so far: GPU memory allocated on a GPU, resident set size on a CPU."""
    if env.device.type == "cuda":
        return torch.cuda.max_memory_allocated(env.device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
