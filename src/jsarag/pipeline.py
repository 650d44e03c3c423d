"""Assembling a run from its config: data, models (fresh or from a checkpoint), and the index.

Shared by training, evaluation, `ask` and the studies, so that every command reads the same files
in the same way and fails with the same messages.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from jsarag.config import Config, DataConfig, save_config
from jsarag.configtools import ConfigError, Range, range_message, to_dict
from jsarag.data import Corpus, DataError, Examples, open_corpus, open_split
from jsarag.index import PassageIndex, build_index
from jsarag.models.encoder import Encoder
from jsarag.models.generator import Generator
from jsarag.models.pretrained import ModelNotFoundError
from jsarag.models.rag import RAGModel
from jsarag.models.retriever import Retriever
from jsarag.train import distributed as dist
from jsarag.train.checkpoint import check_intact
from jsarag.train.distributed import autocast, setup

BUILTIN_DATA = "builtin:"


def resolve_data_path(path: str) -> Path:
    """A data path, or ``builtin:NAME/FILE`` for a dataset shipped inside the package."""
    if path.startswith(BUILTIN_DATA):
        rel = path[len(BUILTIN_DATA):]
        resource = importlib.resources.files("jsarag") / "resources" / "datasets" / rel
        return Path(str(resource))
    return Path(path)


def load_corpus(cfg: DataConfig, *, progress: bool = True) -> Corpus:
    """The run's corpus, read from its store on disk (a data file is converted once into a cached store)."""
    if not cfg.corpus:
        raise DataError("config", None, "data.corpus", "no corpus given")
    return open_corpus(resolve_data_path(cfg.corpus), progress=progress)


def load_split(cfg: DataConfig, split: str, corpus: Corpus, limit: int | None = None, *,
               progress: bool = True) -> Examples:
    """A split's examples, read from its store on disk (checked against ``corpus``); the first ``limit``."""
    path = getattr(cfg, split)
    if path is None:
        raise DataError("config", None, f"data.{split}", f"no {split} file given")
    examples = open_split(resolve_data_path(path), corpus, progress=progress)
    return examples[:limit] if limit is not None else examples


def check_batch_size(cfg: Config, processes: int) -> None:
    """``train.batch_size`` splits evenly over the processes and their accumulation steps."""
    multiple = processes * cfg.train.grad_accum_steps
    if cfg.train.batch_size % multiple:
        raise ConfigError(range_message("train.batch_size", cfg.train.batch_size, f"a multiple of {multiple}",
                                        f"for {processes} process(es) x train.grad_accum_steps="
                                        f"{cfg.train.grad_accum_steps}"))


def check_data_sizes(cfg: Config, corpus_size: int, *, train_examples: int | None = None, processes: int = 1,
                     evaluates: bool = True) -> None:
    """The settings whose range depends on the data, before anything is written: the top-K of training
    (when ``train_examples`` is given) and of evaluation (when ``evaluates``) against the corpus size, and
    the batch of each process against the training examples."""
    sizes = [("estimator.top_k", cfg.estimator.top_k)] if train_examples is not None else []
    if evaluates:
        sizes += [("eval.top_k", cfg.eval.top_k), *((f"eval.retrieval_ks[{i}]", k)
                                                    for i, k in enumerate(cfg.eval.retrieval_ks))]
    for key, value in sizes:
        if value > corpus_size:
            raise ConfigError(range_message(key, value, Range(1, corpus_size),
                                            f"for a corpus of {corpus_size} passages"))
    if train_examples is not None and cfg.train.batch_size // processes > train_examples:
        raise ConfigError(range_message("train.batch_size", cfg.train.batch_size,
                                        f"at most {processes * train_examples}",
                                        f"for {train_examples} training examples on {processes} process(es)"))


def build_model(cfg: Config, checkpoint: str | Path | None = None) -> RAGModel:
    """Retriever and generator from the config, with weights from ``checkpoint`` (verified) when given."""
    ckpt = check_intact(checkpoint) if checkpoint is not None else None
    with _model_errors():
        generator = Generator.from_config(cfg.generator, ckpt / "generator" if ckpt else None)
    return RAGModel(build_retriever(cfg, ckpt), generator)


def build_retriever(cfg: Config, checkpoint: str | Path | None = None) -> Retriever:
    """The three encoders from the config, with weights from ``checkpoint`` (verified) when given."""
    ckpt = check_intact(checkpoint) if checkpoint is not None else None
    with _model_errors():
        return Retriever.from_config(cfg.retriever, ckpt / "retriever" if ckpt else None)


@contextlib.contextmanager
def _model_errors():
    try:
        yield
    except OSError as err:  # transformers' way of saying "no such model here or on the hub"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelNotFoundError(f"cannot load a model: {first}") from None


def index_config_text(cfg: Config) -> str:
    import yaml

    return yaml.safe_dump({"retriever": to_dict(cfg.retriever), "index": to_dict(cfg.index),
                           "data": {"corpus": cfg.data.corpus}}, sort_keys=False)


def _build(cfg: Config, corpus: Corpus, encoder: Encoder, path: Path, env: dist.DistEnv, *, whole: bool,
           **options) -> PassageIndex | None:
    """:func:`build_index` with the config's index settings, every process encoding its shards on its device
    under ``train.precision`` (the precision is recorded with the vectors)."""
    ix = cfg.index
    with autocast(encoder.device, cfg.train.precision):
        return build_index(corpus, encoder, path, factory=ix.factory, search_params=ix.search_params,
                           rerank=ix.rerank, shard_rows=ix.shard_rows, batch_size=ix.batch_size,
                           precision=dist.resolve_precision(cfg.train.precision, encoder.device),
                           extra_files={"config.yaml": index_config_text(cfg)}, rank=env.rank,
                           world=env.world_size, barrier=lambda: dist.barrier(env), whole=whole, **options)


def encode_index(cfg: Config, corpus: Corpus, encoder: Encoder, path: Path, *, env: dist.DistEnv | None = None,
                 resume: bool = False, strict: bool = True, progress: bool = True) -> PassageIndex:
    """A new index of ``corpus`` by ``encoder`` in ``path``, with the config's index settings: every process
    encodes its shards on its device under ``train.precision``, the first builds and saves the index, and
    each then opens it (its own shard when ``index.sharded``). Collective under torchrun."""
    env = env or dist.single_process(encoder.device)
    built = _build(cfg, corpus, encoder, path, env, whole=not (cfg.index.sharded and env.distributed), resume=resume,
                   strict=strict, progress=progress and env.is_main)
    dist.barrier(env)
    if built is not None and not built.sharded:
        return built
    return open_index(cfg, path, env, progress=progress)


def build_index_folder(config: str | Path, out: Path, *, overwrite: bool = False, resume: bool = False,
                       overrides: list[str] | None = None) -> PassageIndex | None:
    """`jsarag index build`: the config's corpus encoded into ``out`` (a share of the shards per process
    under torchrun, resumable), the index built from the vectors and saved, an approximate index's recall
    measured with up to 200 of the config's questions. Returns the index on the main process."""
    from jsarag.config import load_config
    from jsarag.data import Batch
    from jsarag.outdirs import check_index_out

    check_index_out(out, overwrite=overwrite, resume=resume)
    cfg = load_config(config, overrides)
    env = setup()
    try:
        with dist.local_main_first(env):
            corpus = load_corpus(cfg.data, progress=env.is_main)
        retriever = build_retriever(cfg).to(env.device)
        queries = None
        split = next((s for s in ("dev", "train", "test") if getattr(cfg.data, s)), None)
        if split and env.is_main:  # the questions the index will serve, for its recall
            try:
                examples = load_split(cfg.data, split, corpus, progress=False)
            except DataError as err:  # the index needs only the corpus: recall is then measured otherwise
                print(f"note: recall measured with passage vectors, not data.{split}: {err}", file=sys.stderr)
            else:
                texts = Batch.from_examples(list(examples[:200])).queries
                with autocast(env.device, cfg.train.precision):
                    queries = retriever.prior.encode(texts, batch_size=cfg.index.batch_size)
        dist.barrier(env)  # every process has checked --out before the first one writes
        return _build(cfg, corpus, retriever.passage, out, env, whole=not cfg.index.sharded, resume=resume,
                      queries=queries, progress=env.is_main)
    finally:
        dist.cleanup(env)


def open_index(cfg: Config, path: Path, env: dist.DistEnv | None = None, *, progress: bool = False) -> PassageIndex:
    """The index saved in ``path``: whole, or this process's shard when ``index.sharded`` under torchrun."""
    shard = (env.rank, env.world_size) if env is not None and cfg.index.sharded else None
    return PassageIndex.load(path, shard=shard, progress=progress and env is not None and env.is_main)


def cached_index_dir(cfg: Config, corpus: Corpus, encoder: Encoder) -> Path:
    """Where an index with no folder of its own is kept (``$JSARAG_CACHE/indexes``), keyed by the corpus,
    the encoder's weights, the index settings and the precision of the encoding, so that e.g.
    `jsarag ask CONFIG` builds it once."""
    from jsarag.models.pretrained import cache_dir

    key = json.dumps([corpus.fingerprint(), encoder.identity(), to_dict(cfg.index),
                      dist.resolve_precision(cfg.train.precision, encoder.device)], sort_keys=True, default=str)
    return cache_dir() / "indexes" / hashlib.blake2b(key.encode(), digest_size=10).hexdigest()


def prepare_index(cfg: Config, corpus: Corpus, model: RAGModel | Retriever, *, build_dir: Path | None = None,
                  checkpoint: Path | None = None, env: dist.DistEnv | None = None, progress: bool = True
                  ) -> PassageIndex:
    """The index this run searches, attached to the retriever (``model``'s, or ``model`` itself).

    In order of preference: the index saved in the checkpoint (a trained passage encoder), the folder
    named by ``index.path``, one already built in ``build_dir``, or a new one built now by
    :func:`encode_index` into ``build_dir`` (default: the index cache). Collective under torchrun.
    """
    retriever = model.retriever if isinstance(model, RAGModel) else model
    candidates = []
    if checkpoint is not None and (Path(checkpoint) / "index").is_dir():
        candidates.append(Path(checkpoint) / "index")
    if cfg.index.path is not None:
        candidates.append(Path(cfg.index.path))
    else:
        build_dir = build_dir or cached_index_dir(cfg, corpus, retriever.passage)
        if (build_dir / "meta.json").is_file():
            candidates.append(build_dir)
    if candidates:
        index = open_index(cfg, candidates[0], env, progress=progress)
    else:
        index = encode_index(cfg, corpus, retriever.passage, build_dir, env=env, resume=True, strict=False,
                             progress=progress)
    retriever.attach(index, corpus)
    return index


def save_run_config(cfg: Config, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")


def resolve_target(target: str | Path, overrides: list[str] | None = None,
                   checkpoint: str | Path | None = None) -> tuple[Config, Path | None, Path | None]:
    """A run folder (its saved config and newest checkpoint) or a config file (untrained models).

    Returns (config, checkpoint folder or None, run folder or None).
    """
    from jsarag.config import load_config
    from jsarag.errors import UserError
    from jsarag.train.checkpoint import latest_checkpoint

    target = Path(target)
    if target.is_dir():
        if not (target / "config.yaml").is_file():
            raise UserError(f"{target} is not a run folder (no config.yaml)")
        cfg = load_config(target / "config.yaml", overrides, saved=True)
        ckpt = Path(checkpoint) if checkpoint is not None else latest_checkpoint(target)
        if ckpt is None:
            raise UserError(f"{target} holds no checkpoint yet")
        if not (ckpt / "trainer_state.json").is_file():
            raise UserError(f"{ckpt} is not a complete checkpoint")
        return cfg, check_intact(ckpt), target  # a given one is checked here, before the corpus loads
    return load_config(target, overrides), (Path(checkpoint) if checkpoint else None), None


@dataclass
class Run:
    """Everything a command works with: config, corpus, models on their device, the index they search."""

    cfg: Config
    corpus: Corpus
    retriever: Retriever
    model: RAGModel | None  # None when only the retriever was asked for
    index: PassageIndex
    device: torch.device
    checkpoint: Path | None = None
    run_dir: Path | None = None

    def split(self, name: str | None = None, limit: int | None = -1) -> Examples:
        """A split's examples (default ``eval.split``), at most ``limit`` (default ``data.max_eval_examples``)."""
        limit = self.cfg.data.max_eval_examples if limit == -1 else limit
        return load_split(self.cfg.data, name or self.cfg.eval.split, self.corpus, limit)

    @property
    def kind(self) -> str:
        """``question`` or ``context``: the kind of the first split the config names (its prompt)."""
        split = next((s for s in ("train", "dev", "test") if getattr(self.cfg.data, s)), None)
        return self.split(split, limit=None).kind if split else "question"

    def autocast(self):
        return autocast(self.device, self.cfg.train.precision)


def load_run(target: str | Path | Config, overrides: list[str] | None = None, *,
             checkpoint: str | Path | None = None, build_dir: Path | None = None, generator: bool = True,
             progress: bool = True) -> Run:
    """The one place that puts corpus, models, index and device together (every command but ``train``).

    ``target`` is a run folder (its saved config, newest or given checkpoint, and index), a config file,
    or a :class:`Config` (untrained models). The index is the checkpoint's, ``index.path``, the one in
    ``build_dir`` (default: the run folder's ``index/``), or one built now (and saved into ``build_dir``).
    ``generator=False`` loads the retriever only.
    """
    if isinstance(target, Config):
        cfg, ckpt, run_dir = target, (Path(checkpoint) if checkpoint is not None else None), None
    else:
        cfg, ckpt, run_dir = resolve_target(target, overrides, checkpoint)
    if build_dir is None and run_dir is not None:
        build_dir = run_dir / "index"
    corpus = load_corpus(cfg.data, progress=progress)
    check_data_sizes(cfg, len(corpus))
    env = setup()
    device = env.device
    if generator:
        model = build_model(cfg, ckpt).to(device)
        retriever = model.retriever
    else:
        model = None
        retriever = build_retriever(cfg, ckpt).to(device)
    index = prepare_index(cfg, corpus, retriever, build_dir=build_dir, checkpoint=ckpt, env=env, progress=progress)
    return Run(cfg=cfg, corpus=corpus, retriever=retriever, model=model, index=index, device=device,
               checkpoint=ckpt, run_dir=run_dir)
