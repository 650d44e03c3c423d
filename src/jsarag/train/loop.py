"""The training loop: one function, read top to bottom.

    jsarag train CONFIG --out RUN_DIR [--resume] [key=value ...]
    torchrun --nproc_per_node 2 -m jsarag train CONFIG --out RUN_DIR      (DDP, same command)

A step consumes one global batch of ``train.batch_size`` examples, split evenly over processes and
then over ``train.grad_accum_steps`` micro-batches. The data order depends only on the seed and the
step, so a resumed run sees exactly the batches an uninterrupted run would.

A step whose loss or gradient norm is not finite (on any process) changes nothing but the data position;
``train.max_nonfinite_steps`` such steps in a row stop the run (``TrainingDivergedError``), and weights
that are not finite are never saved. Under fp16 the loss is scaled (``dist.grad_scaler``): a step whose
scaled gradients overflow is such a skipped step, and the scale shrinks. The run folder is locked for the
whole run (see ``jsarag.outdirs``).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from jsarag import outdirs
from jsarag.config import Config, load_config
from jsarag.configtools import flatten, to_dict
from jsarag.data import Batch
from jsarag.errors import TrainingDivergedError, UserError
from jsarag.estimators import build_estimator
from jsarag.eval.evaluate import evaluate, write_result
from jsarag.index import PassageIndex
from jsarag.pipeline import (
    build_model,
    check_batch_size,
    check_data_sizes,
    encode_index,
    load_corpus,
    load_split,
    prepare_index,
    save_run_config,
)
from jsarag.provenance import code_header
from jsarag.train import distributed as dist
from jsarag.train.checkpoint import (
    checkpoint_step,
    latest_checkpoint,
    load_training_state,
    remove_interrupted_saves,
    save_checkpoint,
)
from jsarag.train.logger import RunLogger, read_metrics
from jsarag.train.optim import build_optimizer, build_scheduler, component_parameters, grad_norms

RESUMABLE_CHANGES = ("train.steps", "train.save_every", "train.eval_every", "train.log_every",
                     "train.progress", "train.keep_checkpoints", "train.tensorboard", "train.max_nonfinite_steps")


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
    saved = load_config(run_dir / "config.yaml", saved=True)
    mine, theirs = flatten(to_dict(cfg)), flatten(to_dict(saved))
    changed = [k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)
               and k not in RESUMABLE_CHANGES]
    if changed:
        raise UserError(f"--resume with a config that differs from the run's saved one in: {', '.join(changed)}")


def _final_eval_logged(run_dir: Path, step: int) -> bool:
    """Whether the final evaluation finished: its record is logged after its files are written."""
    return any(r.get("step") == step and any(k.startswith("eval/") for k in r) for r in read_metrics(run_dir))


def _note(env: dist.DistEnv, text: str) -> None:
    if env.is_main:
        print(f"note: {text}", file=sys.stderr, flush=True)


def train(cfg: Config, out_dir: str | Path, *, resume: bool = False, device: str = "auto") -> Path:
    """Train the RAG model of ``cfg`` into ``out_dir``; returns the final checkpoint folder."""
    env = dist.setup(device)
    with contextlib.ExitStack() as held:  # the run folder's lock, released however the run ends
        try:
            return _train(cfg, Path(out_dir), resume, env, held)
        finally:
            dist.cleanup(env)


def _train(cfg: Config, run_dir: Path, resume: bool, env: dist.DistEnv, held: contextlib.ExitStack) -> Path:
    tc = cfg.train
    # 1. Check everything that can be wrong before writing anything.
    check_batch_size(cfg, env.world_size)
    precision = dist.resolve_precision(tc.precision, env.device)  # e.g. fp16 on a CPU is refused here
    existing = outdirs.check_run_out(run_dir, resume=resume)  # a folder of another kind is refused untouched
    checkpoint = latest_checkpoint(run_dir) if existing else None
    if existing and (run_dir / "config.yaml").is_file():
        _check_resume(cfg, run_dir)
    if checkpoint is not None and checkpoint_step(checkpoint) > tc.steps:
        raise UserError(f"train.steps={tc.steps} is below the step of the newest checkpoint, "
                        f"{checkpoint_step(checkpoint)} ({checkpoint})")
    eval_split = cfg.eval.split
    with dist.local_main_first(env):  # data files are converted into stores once per machine
        corpus = load_corpus(cfg.data, progress=env.is_main)
        train_set = load_split(cfg.data, "train", corpus, cfg.data.max_train_examples, progress=env.is_main)
        dev_set = (load_split(cfg.data, eval_split, corpus, cfg.data.max_eval_examples, progress=env.is_main)
                   if getattr(cfg.data, eval_split) else None)
    check_data_sizes(cfg, len(corpus), train_examples=len(train_set), processes=env.world_size,
                     evaluates=dev_set is not None)
    if cfg.index.path is not None and checkpoint is None:  # the corpus check needs no model
        PassageIndex.load(cfg.index.path, corpus_hash=corpus.fingerprint())
    # Every process has looked at the folder before any of them takes the lock or writes to it: a check that
    # ran later would find rank 0's own lock or config and refuse.
    dist.barrier(env)
    if env.is_main:  # from here on the folder is ours: locked, then cleared of killed saves' leftovers
        held.enter_context(outdirs.RunLock(run_dir))
        if not existing and outdirs.is_run(run_dir):
            raise UserError(f"{run_dir} already holds a run, started meanwhile by another process")
        if remove_interrupted_saves(run_dir):
            _note(env, "removed the temporary folders of interrupted checkpoint saves")
    if resume:
        _note(env, f"resuming from {checkpoint}" if checkpoint is not None
              else f"{run_dir} holds no checkpoint: --resume starts the run from scratch")

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
    model.to(env.device)  # a new index is encoded on the run's device, a share of its shards per process
    index = prepare_index(cfg, corpus, model, build_dir=index_dir, checkpoint=checkpoint, env=env, progress=show)
    if env.is_main:
        save_run_config(cfg, run_dir)  # only now: a mismatched index above must leave no run behind
    dist.barrier(env)
    model.train()
    ddp = dist.wrap(model, env)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, tc.steps)
    scaler = dist.grad_scaler(precision, env.device)
    params = component_parameters(model)
    trainable_params = [p for ps in params.values() for p in ps]
    start = 0
    if checkpoint is not None:
        start, rng_states = load_training_state(checkpoint, optimizer=optimizer, scheduler=scheduler,
                                                estimator=estimator, scaler=scaler)
        dist.set_rng_state(rng_states[env.rank])
    schedule = BatchSchedule(len(train_set), tc.batch_size, tc.seed)
    logger = RunLogger(run_dir, enabled=env.is_main, tensorboard=tc.tensorboard, resume_step=start)
    header = {**dist.precision_header(tc.precision, env.device), **dist.process_header(env), **code_header()}
    logger.log(start, {"run": header})  # one per start: a resumed run may run on other hardware
    _note(env, f"precision {precision} (train.precision {tc.precision}; {header['device']}, {header['cpu']})")
    refresh = cfg.retriever.train_passage_encoder and cfg.index.refresh_every > 0
    shown = ["loss", *(key for panel in estimator.panels for key in panel.compared)]  # on the progress bar
    # The main process evaluates; over a sharded index every process searches with it (the same questions).
    evaluates = env.is_main or index.sharded

    # 3. Optimisation steps.
    bar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, desc="training", disable=not show)
    final = None
    skipped = 0  # consecutive steps without an update
    for step in bar:
        began = time.perf_counter()
        micro = schedule.micro_batches(step, env.rank, env.world_size, tc.grad_accum_steps)
        sums: dict[str, float] = defaultdict(float)
        finite = True
        for i, indices in enumerate(micro):
            batch = Batch.from_examples([train_set[j] for j in indices])
            with dist.no_sync(ddp, i < len(micro) - 1), dist.autocast(env.device, precision):
                loss, metrics = ddp(batch, estimator)
            scaler.scale(loss / len(micro)).backward()
            finite = finite and bool(torch.isfinite(loss.detach()).item())
            for key, value in metrics.items():
                sums[key] += value / len(micro)
        scaler.unscale_(optimizer)  # norms and clipping see the true gradients
        norms = grad_norms(params)
        torch.nn.utils.clip_grad_norm_(trainable_params, cfg.optim.max_grad_norm)
        lrs = {f"lr/{g['name']}": g["lr"] for g in optimizer.param_groups if "no_decay" not in g["name"]}
        # A non-finite loss or gradient on any process skips the update on all of them (replicas stay equal).
        finite = dist.all_true(finite and all(math.isfinite(v) for v in norms.values()), env)
        if finite:
            scaler.step(optimizer)
            scheduler.step()
        scaler.update()  # after an fp16 overflow (a skipped step) the loss scale shrinks
        skipped = 0 if finite else skipped + 1
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        staleness = {}
        if cfg.retriever.train_passage_encoder:  # how stale the index was that this step's candidates came from
            staleness = {"index/steps_since_refresh": done % cfg.index.refresh_every if refresh else done,
                         **dist.mean_across(model.retriever.pop_staleness(), env)}
        if refresh and done % cfg.index.refresh_every == 0:  # re-embed the corpus with the new encoder
            index = encode_index(cfg, corpus, model.retriever.passage, run_dir / "index", env=env, resume=True,
                                 strict=False, progress=False)  # a refresh killed halfway resumes
            model.retriever.attach(index, corpus)
        for updates in dist.gather_objects(estimator.pop_updates(), env):  # e.g. JSA chain caches
            estimator.apply_updates(updates)
        record = dist.mean_across(dict(sums), env)
        record.update({f"grad_norm/{k}": v for k, v in norms.items()})
        record.update(lrs)
        record.update(staleness)
        record["seconds"] = time.perf_counter() - began
        if not finite:
            record["skipped_nonfinite"] = skipped
        if done == tc.steps:
            record["peak_memory_mib"] = dist.peak_memory_mib(env)
        if done % tc.log_every == 0 or done == tc.steps or not finite:
            logger.log(done, record)
        bar.set_postfix({k: f"{record[k]:.3g}" for k in shown if k in record})
        if skipped >= tc.max_nonfinite_steps:
            raise TrainingDivergedError(
                f"training stopped at step {done}: {skipped} steps in a row had a non-finite loss or gradient "
                f"norm (train.max_nonfinite_steps={tc.max_nonfinite_steps}); lower the learning rates; newest "
                f"checkpoint: {latest_checkpoint(run_dir) or 'none'}")
        if done % tc.save_every == 0 or done == tc.steps:
            if not dist.all_true(all(bool(torch.isfinite(p).all()) for p in trainable_params), env):
                raise TrainingDivergedError(f"training stopped at step {done}: the weights are no longer finite "
                                            f"(not saved); lower the learning rates; newest checkpoint: "
                                            f"{latest_checkpoint(run_dir) or 'none'}")
            if env.distributed:  # DDP must keep replicas identical; record the proof in the log
                logger.log(done, {"dist/param_spread": dist.spread_across(trainable_params, env)})
            rng_states = dist.gather_objects(dist.rng_state(), env)
            if env.is_main:
                final = save_checkpoint(run_dir, done, model=model, optimizer=optimizer, scheduler=scheduler,
                                        estimator=estimator, cfg=cfg, rng_states=rng_states, keep=tc.keep_checkpoints,
                                        scaler=scaler,
                                        index=index if cfg.retriever.train_passage_encoder else None)
            dist.barrier(env)
        if dev_set and evaluates and tc.eval_every and done % tc.eval_every == 0 and done < tc.steps:
            result = evaluate(model, dev_set, cfg.eval, device=env.device, precision=tc.precision, progress=show)
            logger.log(done, {f"eval/{k}": v for k, v in result.summary.items()})
        dist.barrier(env)

    # 4. The final evaluation; also for a resumed run whose final evaluation was interrupted.
    if dev_set and evaluates and not _final_eval_logged(run_dir, tc.steps):
        result = evaluate(model, dev_set, cfg.eval, device=env.device, precision=tc.precision, progress=show)
        if env.is_main:
            write_result(result, run_dir / "eval" / eval_split)
        logger.log(tc.steps, {f"eval/{k}": v for k, v in result.summary.items()})
    dist.barrier(env)
    logger.close()
    return final if final is not None else latest_checkpoint(run_dir)
