"""Typed run configuration: one dataclass per component, YAML in and out, dotted overrides.

    cfg = load_config("configs/tiny.yaml", ["optim.lr_generator=1e-4", "estimator.name=vrag"])
    save_config(cfg, run_dir / "config.yaml")

Every field has a default, so a YAML file only states what differs. Unknown keys and mistyped values
raise ``ConfigError`` with the dotted key in the message.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from jsarag.configtools import (
    ConfigError,
    OutOfRange,
    Range,
    apply_overrides,
    at_least,
    check_ranges,
    dump_yaml,
    fraction,
    from_dict,
    load_yaml,
    positive,
    to_dict,
)
from jsarag.estimators import ESTIMATORS


@dataclass
class DataConfig:
    """JSONL files in the schema of docs/data.md. ``builtin:NAME/FILE`` names a dataset shipped in the
    package (the quickstart's)."""
    corpus: str = ""
    train: str | None = None
    dev: str | None = None
    test: str | None = None
    max_train_examples: int | None = None
    max_eval_examples: int | None = None

    def validate(self) -> None:
        check_ranges(self, max_train_examples=at_least(1), max_eval_examples=at_least(1))


@dataclass
class RetrieverConfig:
    model: str = "builtin:minilm"
    posterior_model: str | None = None  # None: a copy of the prior query encoder
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    temperature: float = 0.1
    max_query_length: int = 128
    max_passage_length: int = 256
    query_truncation: Literal["left", "right"] = "left"  # left keeps a dialogue's last turns
    posterior_separator: str = " [SEP] "
    train_passage_encoder: bool = False

    def validate(self) -> None:
        check_ranges(self, temperature=positive(), max_query_length=at_least(1), max_passage_length=at_least(1))


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] | None = None  # None: peft's default for the architecture

    def validate(self) -> None:
        check_ranges(self, r=at_least(1), alpha=at_least(1), dropout=fraction())


@dataclass
class GeneratorConfig:
    model: str = "builtin:smollm2-135m-instruct"
    kind: Literal["auto", "causal", "seq2seq"] = "auto"
    lora: LoraConfig = field(default_factory=LoraConfig)
    use_chat_template: bool = True
    qa_instruction: str = "Answer the question using the passage. Reply with a short answer only."
    dialogue_instruction: str = "Write the next system turn of the dialogue, using the passage."
    max_passage_tokens: int = 192
    max_query_tokens: int = 128
    max_answer_tokens: int = 48
    score_batch_size: int = 32
    share_prefix: bool = True  # scoring without gradient runs a chunk's shared prompt head once (causal LMs)
    gradient_checkpointing: bool = False

    def validate(self) -> None:
        check_ranges(self, max_passage_tokens=at_least(1), max_query_tokens=at_least(1),
                     max_answer_tokens=at_least(1), score_batch_size=at_least(1))


@dataclass
class IndexConfig:
    """How passages are indexed (see docs/scale.md): vectors in float16 shards on disk, a FAISS index
    built from them. ``factory``: ``auto`` (Flat up to 250,000 passages, HNSW up to 5M, IVF-PQ above, each
    sized from the corpus), ``Flat``, ``HNSW``, ``IVFPQ``, or any FAISS factory string."""
    path: str | None = None  # a folder built by `jsarag index build`; None: build into the run folder
    factory: str = "auto"
    search_params: str = ""  # e.g. "nprobe=16" or "efSearch=128"; "" : the chosen kind's own
    rerank: int | None = None  # re-score rerank*k candidates exactly from the vectors; None: by kind
    shard_rows: int = 65_536  # passages per vector shard: the unit of resumption and of work per process
    batch_size: int = 64
    sharded: bool = False  # under torchrun, each process holds 1/N of the index; searches are collective
    refresh_every: int = 0  # steps between re-encodings of the corpus when the passage encoder trains

    def validate(self) -> None:
        check_ranges(self, rerank=at_least(0), shard_rows=at_least(1), batch_size=at_least(1),
                     refresh_every=at_least(0))


DEFAULT_ESTIMATOR = "jsa"


@dataclass
class EstimatorConfig:
    """The estimator that trains (``name``), the top K it retrieves, and one section of options per
    registered estimator (``jsa: {num_proposals: 20}``), each estimator's ``options`` dataclass.

    The sections come from ``jsarag.estimators.ESTIMATORS``: ``EstimatorConfig(...)`` makes an instance of
    ``estimator_config_class()``, the subclass with ``name`` restricted to the registered names and one
    field per estimator, so that ``cfg.estimator.jsa.num_proposals`` is typed and validated like any field.
    """
    name: str = DEFAULT_ESTIMATOR
    top_k: int = 10

    def __new__(cls, *args, **kwargs):
        return super().__new__(estimator_config_class() if cls is EstimatorConfig else cls)

    def __reduce__(self):  # pickled by value: the subclass is rebuilt from the registry where it is loaded
        return EstimatorConfig, (), dict(self.__dict__)

    @classmethod
    def config_class(cls) -> type[EstimatorConfig]:
        return estimator_config_class()

    def validate(self) -> None:  # at most the corpus size too, checked when the corpus is read
        check_ranges(self, top_k=at_least(1))

    def options(self):
        """The config object of the selected estimator."""
        return getattr(self, self.name)


def estimator_config_class() -> type[EstimatorConfig]:
    """``EstimatorConfig`` with the sections of the estimators registered now (the same class while they
    do not change, so that configs compare equal)."""
    return _estimator_config_class(tuple((name, cls.options) for name, cls in ESTIMATORS.items()))


@functools.cache
def _estimator_config_class(sections: tuple[tuple[str, type], ...]) -> type[EstimatorConfig]:
    names = tuple(name for name, _ in sections)
    fields = [("name", Literal[names], field(default=DEFAULT_ESTIMATOR)),
              *((name, options, field(default_factory=options)) for name, options in sections)]
    return dataclasses.make_dataclass("EstimatorConfig", fields, bases=(EstimatorConfig,),
                                      namespace={"__module__": __name__, "__qualname__": "EstimatorConfig"})


@dataclass
class OptimConfig:
    lr_generator: float = 2e-5
    lr_prior: float = 1e-5
    lr_posterior: float = 1e-5
    lr_passage: float = 1e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 0
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    max_grad_norm: float = 1.0  # inf: no clipping

    def validate(self) -> None:
        lr = at_least(0)
        check_ranges(self, lr_generator=lr, lr_prior=lr, lr_posterior=lr, lr_passage=lr, weight_decay=at_least(0),
                     betas=fraction(), warmup_steps=at_least(0), min_lr_ratio=fraction(one=True),
                     max_grad_norm=positive(infinite=True))


@dataclass
class TrainConfig:
    steps: int = 100
    batch_size: int = 8  # examples per optimiser step, over all processes and accumulation steps
    grad_accum_steps: int = 1
    seed: int = 0
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 where the hardware computes it natively
    log_every: int = 1
    save_every: int = 50
    eval_every: int = 0  # 0: evaluate only at the end
    keep_checkpoints: int = 2
    tensorboard: bool = True
    progress: bool = True
    freeze: list[str] = field(default_factory=list)  # components kept frozen, e.g. [prior] for a fixed retriever
    max_nonfinite_steps: int = 5  # consecutive steps skipped for a non-finite loss or gradient before the run stops

    def validate(self) -> None:
        from jsarag.models.rag import COMPONENTS

        check_ranges(self, steps=at_least(1), batch_size=at_least(1), grad_accum_steps=at_least(1),
                     seed=Range(0, 2**64 - 1), log_every=at_least(1), save_every=at_least(1), eval_every=at_least(0),
                     keep_checkpoints=at_least(0), max_nonfinite_steps=at_least(1))
        if self.batch_size % self.grad_accum_steps:
            raise OutOfRange("batch_size", self.batch_size, f"a multiple of grad_accum_steps={self.grad_accum_steps}")
        unknown = sorted(set(self.freeze) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"train.freeze: unknown component(s) {', '.join(unknown)} "
                             f"(known: {', '.join(COMPONENTS)})")


@dataclass
class EvalConfig:
    split: Literal["dev", "test", "train"] = "dev"
    top_k: int = 5
    decode: Literal["per_passage", "concat"] = "per_passage"
    num_beams: int = 1
    max_new_tokens: int = 32
    batch_size: int = 8
    retrieval_ks: list[int] = field(default_factory=lambda: [1, 5, 10])

    def validate(self) -> None:  # top_k and retrieval_ks at most the corpus size too, checked when it is read
        check_ranges(self, top_k=at_least(1), num_beams=at_least(1), max_new_tokens=at_least(1),
                     batch_size=at_least(1), retrieval_ks=at_least(1))
        if not self.retrieval_ks:
            raise OutOfRange("retrieval_ks", self.retrieval_ks, "a non-empty list of cutoffs, e.g. [1, 5, 10]")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    retriever: RetrieverConfig = field(default_factory=RetrieverConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# Keys that configs saved by earlier versions hold (a run's config.yaml lists every key) but that no longer exist,
# and why. Loading such a config drops them; a new config that sets one is refused like any unknown key.
RETIRED = {
    ("estimator", "jsa", "score_all_proposals"): "the released code's cost profile, same loss: benchmarks/step_cost.py "
                                                 "now injects its scorer into JSA",
}


def _drop_retired(data: dict) -> None:
    for *parents, key in RETIRED:
        node = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(key, None)


def load_config(path: str | Path | None, overrides: list[str] | None = None, *, saved: bool = False) -> Config:
    """Read a YAML config (or start from the defaults when ``path`` is None) and apply overrides. ``saved``: the
    config of a run or checkpoint, which may hold keys of earlier versions (``RETIRED``, dropped)."""
    data = load_yaml(path) if path is not None else {}
    if saved:
        _drop_retired(data)
    apply_overrides(data, Config, list(overrides or []))
    return from_dict(Config, data)


def save_config(cfg: Config, path: str | Path) -> None:
    dump_yaml(cfg, path)


__all__ = ["Config", "ConfigError", "DataConfig", "RetrieverConfig", "GeneratorConfig", "LoraConfig",
           "IndexConfig", "EstimatorConfig", "OptimConfig", "TrainConfig", "EvalConfig", "load_config",
           "save_config", "to_dict"]
