"""The training loop: one function, read top to bottom.

    jsarag train CONFIG --out RUN_DIR [--resume] [key=value ...]
    torchrun --nproc_per_node 2 -m jsarag train CONFIG --out RUN_DIR      (DDP, same command)

A step consumes one global batch of ``train.batch_size`` examples, split evenly over processes and
then over ``train.grad_accum_steps`` micro-batches. The data order depends only on the seed and the
step, so a resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from jsarag.config import Config, load_config
from jsarag.configtools import to_dict
from jsarag.data import Batch
from jsarag.errors import UserError
from jsarag.estimators import build_estimator
from jsarag.eval.evaluate import evaluate, write_result
from jsarag.index import PassageIndex
from jsarag.pipeline import build_model, encode_index, load_corpus, load_split, prepare_index, save_run_config
from jsarag.train import distributed as dist
from jsarag.train.checkpoint import latest_checkpoint, load_training_state, save_checkpoint
from jsarag.train.logger import RunLogger
from jsarag.train.optim import build_optimizer, build_scheduler, component_parameters, grad_norms

RESUMABLE_CHANGES = ("train.steps", "train.save_every", "train.eval_every", "train.log_every",
                     "train.progress", "train.keep_checkpoints", "train.tensorboard")


class BatchSchedule:
    """Example indices for each step: consecutive slices of per-epoch permutations (seeded)."""

    def __init__(self, num_examples: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = num_examples, batch_size, seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 2:  # a batch spans at most two epochs
                self._perms.clear()
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perms[epoch]

    def global_batch(self, step: int) -> list[int]:
        first = step * self.batch_size
        return [int(self._perm(p // self.n)[p % self.n]) for p in range(first, first + self.batch_size)]

    def micro_batches(self, step: int, rank: int, world: int, accum: int) -> list[list[int]]:
        mine = self.global_batch(step)[rank::world]
        size = len(mine) // accum
        return [mine[i * size:(i + 1) * size] for i in range(accum)]


def _check_resume(cfg: Config, run_dir: Path) -> None:
    saved = load_config(run_dir / "config.yaml")
    mine, theirs = _flatten(to_dict(cfg)), _flatten(to_dict(saved))
    changed = [k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)
               and k not in RESUMABLE_CHANGES]
    if changed:
        raise UserError(f"--resume with a config that differs from the run's saved one in: {', '.join(changed)}")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def train(cfg: Config, out_dir: str | Path, *, resume: bool = False, device: str = "auto") -> Path:
    """Train the RAG model of ``cfg`` into ``out_dir``; returns the final checkpoint folder."""
    env = dist.setup(device)
    try:
        return _train(cfg, Path(out_dir), resume, env)
    finally:
        dist.cleanup(env)


def _train(cfg: Config, run_dir: Path, resume: bool, env: dist.DistEnv) -> Path:
    tc = cfg.train
    # 1. Check everything that can be wrong before writing anything.
    per_process = tc.batch_size // env.world_size
    if tc.batch_size % (env.world_size * tc.grad_accum_steps):
        raise UserError(f"train.batch_size={tc.batch_size} is not divisible by processes x "
                        f"grad_accum_steps = {env.world_size} x {tc.grad_accum_steps}")
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if resume and (run_dir / "config.yaml").is_file():
        _check_resume(cfg, run_dir)
    elif not resume and ((run_dir / "config.yaml").exists() or latest_checkpoint(run_dir) is not None):
        raise UserError(f"{run_dir} already holds a run: pass --resume to continue it, or choose another --out")
    corpus = load_corpus(cfg.data)
    train_set = load_split(cfg.data, "train", corpus, cfg.data.max_train_examples)
    eval_split = cfg.eval.split
    dev_set = (load_split(cfg.data, eval_split, corpus, cfg.data.max_eval_examples)
               if getattr(cfg.data, eval_split) else None)
    if len(train_set) < per_process:
        raise UserError(f"{len(train_set)} training examples cannot fill a batch of {per_process}")
    if cfg.index.path is not None and checkpoint is None:  # the corpus check needs no model
        PassageIndex.load(cfg.index.path, corpus_hash=corpus.fingerprint())

    # 2. Models, estimator, index. The seed comes first: LoRA and fresh heads initialise randomly.
    dist.seed_everything(tc.seed)
    model = build_model(cfg, checkpoint)
    estimator = build_estimator(cfg.estimator)
    trainable = set(estimator.trains) - set(tc.freeze)
    if not cfg.retriever.train_passage_encoder:
        trainable.discard("passage")
    if not trainable:
        raise UserError(f"nothing to train: {cfg.estimator.name} trains {sorted(estimator.trains)}, "
                        f"all frozen by train.freeze")
    model.set_trainable(trainable)
    show = env.is_main and tc.progress
    index_dir = run_dir / "index" if cfg.index.path is None else None
    model.to(env.device)  # a new index is encoded on the run's device
    if env.is_main:
        index = prepare_index(cfg, corpus, model, build_dir=index_dir, checkpoint=checkpoint, progress=show)
        save_run_config(cfg, run_dir)  # only now: a mismatched index above must leave no run behind
    dist.barrier(env)
    if not env.is_main:
        index = prepare_index(cfg, corpus, model, build_dir=index_dir, checkpoint=checkpoint, progress=False)
    model.train()
    ddp = dist.wrap(model, env)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, tc.steps)
    params = component_parameters(model)
    trainable_params = [p for ps in params.values() for p in ps]
    start = 0
    if checkpoint is not None:
        start, rng_states = load_training_state(checkpoint, optimizer=optimizer, scheduler=scheduler,
                                                estimator=estimator)
        dist.set_rng_state(rng_states[env.rank])
    schedule = BatchSchedule(len(train_set), tc.batch_size, tc.seed)
    logger = RunLogger(run_dir, enabled=env.is_main, tensorboard=tc.tensorboard, resume_step=start)
    refresh = cfg.retriever.train_passage_encoder and cfg.index.refresh_every > 0

    # 3. Optimisation steps.
    bar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, desc="training", disable=not show)
    final = None
    for step in bar:
        began = time.perf_counter()
        micro = schedule.micro_batches(step, env.rank, env.world_size, tc.grad_accum_steps)
        sums: dict[str, float] = defaultdict(float)
        for i, indices in enumerate(micro):
            batch = Batch.from_examples([train_set[j] for j in indices])
            with dist.no_sync(ddp, i < len(micro) - 1), dist.autocast(env.device, tc.precision):
                loss, metrics = ddp(batch, estimator)
            (loss / len(micro)).backward()
            for key, value in metrics.items():
                sums[key] += value / len(micro)
        norms = grad_norms(params)
        torch.nn.utils.clip_grad_norm_(trainable_params, cfg.optim.max_grad_norm)
        lrs = {f"lr/{g['name']}": g["lr"] for g in optimizer.param_groups if "no_decay" not in g["name"]}
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        if refresh and done % cfg.index.refresh_every == 0:  # re-embed the corpus with the new encoder
            index = encode_index(cfg, corpus, model.retriever.passage, progress=False)
            model.retriever.attach(index, corpus)
        for updates in dist.gather_objects(estimator.pop_updates(), env):  # e.g. JSA chain caches
            estimator.apply_updates(updates)
        record = dist.mean_across(dict(sums), env)
        record.update({f"grad_norm/{k}": v for k, v in norms.items()})
        record.update(lrs)
        record["seconds"] = time.perf_counter() - began
        if done == tc.steps:
            record["peak_memory_mib"] = dist.peak_memory_mib(env)
        if done % tc.log_every == 0 or done == tc.steps:
            logger.log(done, record)
        bar.set_postfix({k: f"{record[k]:.3g}" for k in ("loss", "accept_rate") if k in record})
        if done % tc.save_every == 0 or done == tc.steps:
            if env.distributed:  # DDP must keep replicas identical; record the proof in the log
                logger.log(done, {"dist/param_spread": dist.spread_across(trainable_params, env)})
            rng_states = dist.gather_objects(dist.rng_state(), env)
            if env.is_main:
                final = save_checkpoint(run_dir, done, model=model, optimizer=optimizer, scheduler=scheduler,
                                        estimator=estimator, cfg=cfg, rng_states=rng_states, keep=tc.keep_checkpoints,
                                        index=index if cfg.retriever.train_passage_encoder else None)
            dist.barrier(env)
        if dev_set and env.is_main and ((tc.eval_every and done % tc.eval_every == 0) or done == tc.steps):
            result = evaluate(model, dev_set, cfg.eval, device=env.device, precision=tc.precision, progress=show)
            logger.log(done, {f"eval/{k}": v for k, v in result.summary.items()})
            if done == tc.steps:
                write_result(result, run_dir / "eval" / eval_split)
        dist.barrier(env)
    logger.close()
    return final if final is not None else latest_checkpoint(run_dir)
