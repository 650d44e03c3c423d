"""Assembling a run from its config: data, models (fresh or from a checkpoint), and the index.

Shared by training, evaluation, `ask` and the studies, so that every command reads the same files
in the same way and fails with the same messages.
"""

from __future__ import annotations

import contextlib
import importlib.resources
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


def encode_index(cfg: Config, corpus: Corpus, encoder: Encoder, *, progress: bool = True) -> PassageIndex:
    """A new index of ``corpus`` by ``encoder``, on the device the encoder is on, under ``train.precision``
    (bf16 encodes MiniLM about 1.7x faster on a CPU with native bf16), with the config's index settings."""
    with autocast(encoder.device, cfg.train.precision):
        return build_index(corpus, encoder, factory=cfg.index.factory, search_params=cfg.index.search_params,
                           batch_size=cfg.index.batch_size, progress=progress)


def prepare_index(cfg: Config, corpus: Corpus, model: RAGModel | Retriever, *, build_dir: Path | None = None,
                  checkpoint: Path | None = None, progress: bool = True) -> PassageIndex:
    """The index this run searches, attached to the retriever (``model``'s, or ``model`` itself).

    In order of preference: the index saved in the checkpoint (a trained passage encoder), the
    folder named by ``index.path``, one already built in ``build_dir``, or a new one built now (and
    saved to ``build_dir`` when given) by :func:`encode_index`.
    """
    retriever = model.retriever if isinstance(model, RAGModel) else model
    candidates = []
    if checkpoint is not None and (Path(checkpoint) / "index").is_dir():
        candidates.append(Path(checkpoint) / "index")
    if cfg.index.path is not None:
        candidates.append(Path(cfg.index.path))
    elif build_dir is not None and (build_dir / "meta.json").is_file():
        candidates.append(build_dir)
    if candidates:
        index = PassageIndex.load(candidates[0])
    else:
        index = encode_index(cfg, corpus, retriever.passage, progress=progress)
        if build_dir is not None:
            index.save(build_dir, extra_files={"config.yaml": index_config_text(cfg)})
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
        cfg = load_config(target / "config.yaml", overrides)
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
    device = setup().device
    if generator:
        model = build_model(cfg, ckpt).to(device)
        retriever = model.retriever
    else:
        model = None
        retriever = build_retriever(cfg, ckpt).to(device)
    index = prepare_index(cfg, corpus, retriever, build_dir=build_dir, checkpoint=ckpt, progress=progress)
    return Run(cfg=cfg, corpus=corpus, retriever=retriever, model=model, index=index, device=device,
               checkpoint=ckpt, run_dir=run_dir)
