"""A text encoder over any Hugging Face encoder model: tokenise, run, pool, optionally normalise.

Saved folders load in transformers (``AutoModel``) and in sentence-transformers (``modules.json``
and the pooling config are written beside the weights), with the same embeddings.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from jsarag.models.pretrained import resolve_model

Pooling = Literal["mean", "cls"]
SETTINGS_FILE = "jsarag_encoder.json"


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """[N, T, d] token states and [N, T] mask -> [N, d] sentence vectors."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class Encoder(nn.Module):
    def __init__(self, model: nn.Module, tokenizer, *, name: str, pooling: Pooling = "mean",
                 normalize: bool = True, max_length: int = 256, truncation_side: str = "right"):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.tokenizer.truncation_side = truncation_side
        self.name = name
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = max_length

    @classmethod
    def from_pretrained(cls, name: str, *, pooling: Pooling = "mean", normalize: bool = True,
                        max_length: int = 256, truncation_side: str = "right") -> "Encoder":
        path = resolve_model(name)
        settings = Path(path) / SETTINGS_FILE
        if settings.is_file():  # a folder we saved: its own settings win over the defaults
            saved = json.loads(settings.read_text())
            pooling, normalize, max_length = saved["pooling"], saved["normalize"], saved["max_length"]
            name = saved.get("name", name)
        model = AutoModel.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        # eval mode like transformers' from_pretrained, for the wrapper too; training code calls .train()
        return cls(model, tokenizer, name=name, pooling=pooling, normalize=normalize, max_length=max_length,
                   truncation_side=truncation_side).eval()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """[N] texts -> [N, d] vectors (gradient flows when the caller allows it)."""
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        return self._embed(batch)

    def _embed(self, batch) -> torch.Tensor:
        hidden = self.model(**batch).last_hidden_state
        vectors = pool(hidden, batch["attention_mask"], self.pooling).float()
        return nn.functional.normalize(vectors, dim=-1) if self.normalize else vectors

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool | tqdm = False,
               desc: str = "encoding") -> np.ndarray:
        """Embed many texts without gradient: [N, d] float32. Texts are batched by length so that
        little padding is computed; results come back in input order. ``progress`` may be a bar of the
        caller's, advanced by the number of texts of each batch."""
        was_training = self.training
        self.eval()
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        order = np.argsort([-len(ids) for ids in encoded], kind="stable")
        out = np.empty((len(encoded), self.dim), dtype=np.float32)
        outer = progress if isinstance(progress, tqdm) else None
        batches = range(0, len(order), batch_size)
        for start in batches if outer else tqdm(batches, desc=desc, disable=not progress, unit="batch"):
            rows = order[start:start + batch_size]
            batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt")
            out[rows] = self._embed(batch.to(self.device)).cpu().numpy()
            if outer:
                outer.update(len(rows))
        self.train(was_training)
        return out

    def fingerprint(self) -> str:
        """sha256 over the weights (names, shapes, bytes): identifies the exact passage encoder."""
        h = hashlib.sha256()
        for key, tensor in self.model.state_dict().items():
            t = tensor.detach().to("cpu").contiguous()
            h.update(key.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    def identity(self) -> dict:
        return {"name": self.name, "fingerprint": self.fingerprint(), "pooling": self.pooling,
                "normalize": self.normalize, "max_length": self.max_length}

    def save_pretrained(self, path: str | Path) -> None:
        """Weights + tokenizer for transformers, plus the sentence-transformers module files."""
        path = Path(path)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        settings = {"name": self.name, "pooling": self.pooling, "normalize": self.normalize,
                    "max_length": self.max_length}
        (path / SETTINGS_FILE).write_text(json.dumps(settings, indent=2))
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        if self.normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                            "type": "sentence_transformers.models.Normalize"})
            (path / "2_Normalize").mkdir(exist_ok=True)
        (path / "modules.json").write_text(json.dumps(modules, indent=2))
        (path / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": self.max_length, "do_lower_case": False}))
        (path / "1_Pooling").mkdir(exist_ok=True)
        (path / "1_Pooling" / "config.json").write_text(json.dumps({
            "word_embedding_dimension": self.dim,
            "pooling_mode_cls_token": self.pooling == "cls",
            "pooling_mode_mean_tokens": self.pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        }, indent=2))
