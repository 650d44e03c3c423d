"""Devices, processes and precision: the only module that knows about ranks and devices.

One process on a CPU or a GPU, or several under ``torchrun`` / ``accelerate launch`` (both set
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR): then the model is wrapped in DistributedDataParallel
(NCCL on GPUs, Gloo on CPUs) and gradients are averaged across processes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from jsarag.errors import ConfigError


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


def single_process(device: torch.device) -> DistEnv:
    """The environment of one process on ``device`` (for library calls made outside :func:`setup`)."""
    return DistEnv(rank=0, world_size=1, local_rank=0, device=device)


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


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bf16 in hardware (AVX512-BF16 or AMX): torch's own probes where this torch
    has them, else the flags in /proc/cpuinfo."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(callable(probe) for probe in probes):
        return any(probe() for probe in probes)
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return False
    flags = {flag for line in lines if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def cpu_computes_bf16() -> bool:
    """Native bf16 that torch will use: the hardware has it and torch's kernels are not held below AVX512
    (``ATEN_CPU_CAPABILITY=avx2``, which is also how an AVX2-only CPU is emulated)."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512") and cpu_has_native_bf16()


def cpu_capability() -> str:
    """For logs, e.g. "AVX512 kernels, native bf16" or "AVX2 kernels, no native bf16"."""
    native = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    return f"{torch.backends.cpu.get_cpu_capability()} kernels, {native}"


def resolve_precision(precision: str, device: torch.device) -> str:
    """``train.precision`` on ``device``: "auto" is bf16 where the hardware computes it natively, else fp32 (bf16
    is about 1.7x faster than fp32 on CPUs with AVX512-BF16 or AMX, but 3-10x slower on AVX2-only CPUs and on
    GPUs that emulate it). fp16 is refused on CPUs: slower than fp32 there, and it needs loss scaling."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
        return "bf16" if device.type == "cpu" and cpu_computes_bf16() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.precision: fp16 needs a CUDA GPU, this process runs on {device.type} "
                          f"(use auto, bf16 or fp32)")
    return precision


def precision_header(precision: str, device: torch.device) -> dict[str, str]:
    """What a run's log and a benchmark's machine section record: the setting, what it resolved to, where."""
    header = {"precision": resolve_precision(precision, device), "precision_setting": precision,
              "device": str(device), "cpu": cpu_capability()}
    if device.type == "cuda":
        header["gpu"] = torch.cuda.get_device_name(device)
    return header


def process_header(env: DistEnv) -> dict[str, int | str]:
    """What a run's log records of its processes: how many, and the process group's backend when there is one
    (:func:`setup` makes none for a single process, also under torchrun)."""
    header: dict[str, int | str] = {"processes": env.world_size}
    if dist.is_available() and dist.is_initialized():
        header["backend"] = str(dist.get_backend())
    return header


def autocast(device: torch.device, precision: str):
    """Autocast to the resolved ``precision`` (bf16 halves generator time on CPUs with native bf16); a no-op
    for fp32."""
    resolved = resolve_precision(precision, device)
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES.get(resolved, torch.bfloat16),
                          enabled=resolved in AUTOCAST_DTYPES)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for resolved fp16, whose narrow exponent range flushes small gradients to zero; for the
    other precisions its scale/unscale_/step/update pass straight through to the optimizer."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


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
