"""The generator p_g(y | x, h): a causal LM or a seq2seq model given the context and passage(s).

    log p_g(y | x, h) = sum_t log p(y_t | x, h, y_<t)      ("sum")   or the mean over t ("mean")

For B examples and K passages each, all B*K (prompt, answer) pairs run as one flat batch (in chunks
of ``score_batch_size``). Causal inputs are laid out as [left padding | prompt | answer | right
padding] so that every answer starts at the same position: only the last L+1 positions need logits,
which keeps the [N, L, vocab] tensor small.

Without gradient (JSA's scoring pass, the targets of PDist, LOOP and LSR), a causal chunk's shared prompt
head (the instruction, or the chat template's system turn: ~20 of ~200 tokens) runs once and its keys and
values serve every row (``share_prefix``): the same log-probabilities up to rounding, ~10% fewer tokens.
With gradient every row runs in full, so that the backward needs no shared graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from jsarag.data import Passage
from jsarag.models.pretrained import resolve_model
from jsarag.models.prompts import PromptBuilder

if TYPE_CHECKING:
    from jsarag.config import GeneratorConfig

ADAPTER_FILE = "adapter_config.json"

# What the generator reads in one prompt: a passage, or several read together (concatenated, in order).
Context = Passage | Sequence[Passage]


def _pad_right(seqs: Sequence[Sequence[int]], length: int, value: int) -> torch.Tensor:
    return torch.tensor([list(s) + [value] * (length - len(s)) for s in seqs], dtype=torch.long)


def _pad_left(seqs: Sequence[Sequence[int]], length: int, value: int) -> torch.Tensor:
    return torch.tensor([[value] * (length - len(s)) + list(s) for s in seqs], dtype=torch.long)


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix that every sequence starts with."""
    first, shortest = seqs[0], min(map(len, seqs))
    for i in range(shortest):
        if any(s[i] != first[i] for s in seqs[1:]):
            return i
    return shortest


def gather_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per position: [N, L, V], [N, L] -> [N, L] (float32)."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


class Generator(nn.Module):
    def __init__(self, model: nn.Module, tokenizer, prompts: PromptBuilder, *, seq2seq: bool, name: str,
                 score_batch_size: int = 32, share_prefix: bool = True):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.prompts = prompts
        self.seq2seq = seq2seq
        self.name = name
        self.score_batch_size = score_batch_size
        self.share_prefix = share_prefix
        self.pad_id = tokenizer.pad_token_id

    @classmethod
    def from_config(cls, cfg: "GeneratorConfig", checkpoint: str | Path | None = None) -> "Generator":
        path = resolve_model(cfg.model)
        config = AutoConfig.from_pretrained(path)
        seq2seq = cfg.kind == "seq2seq" or (cfg.kind == "auto" and bool(config.is_encoder_decoder))
        auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
        ckpt = Path(checkpoint) if checkpoint is not None else None
        if ckpt is not None and (ckpt / ADAPTER_FILE).is_file():
            from peft import PeftModel

            model = PeftModel.from_pretrained(auto.from_pretrained(path), str(ckpt), is_trainable=True)
        elif ckpt is not None:
            model = auto.from_pretrained(str(ckpt))
        else:
            model = auto.from_pretrained(path)
            if cfg.lora.enabled:
                from peft import LoraConfig, TaskType, get_peft_model

                task = TaskType.SEQ_2_SEQ_LM if seq2seq else TaskType.CAUSAL_LM
                model = get_peft_model(model, LoraConfig(
                    r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                    target_modules=cfg.lora.target_modules, task_type=task))
        tokenizer = AutoTokenizer.from_pretrained(str(ckpt) if ckpt is not None else path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            if cfg.lora.enabled or (ckpt is not None and (ckpt / ADAPTER_FILE).is_file()):
                model.enable_input_require_grads()  # frozen embeddings would cut the checkpointed graph
        prompts = PromptBuilder(tokenizer, seq2seq=seq2seq, use_chat_template=cfg.use_chat_template,
                                qa_instruction=cfg.qa_instruction, dialogue_instruction=cfg.dialogue_instruction,
                                max_passage_tokens=cfg.max_passage_tokens, max_query_tokens=cfg.max_query_tokens,
                                max_answer_tokens=cfg.max_answer_tokens)
        return cls(model, tokenizer, prompts, seq2seq=seq2seq, name=cfg.model,
                   score_batch_size=cfg.score_batch_size, share_prefix=cfg.share_prefix)

    def save_pretrained(self, path: str | Path) -> None:
        """Full weights, or only the LoRA adapter (loadable with peft on top of the base model)."""
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- scoring ------------------------------------------------------------------------------
    def _pairs(self, queries: Sequence[str], kind: str, passages: Sequence[Sequence[Context]],
               answers: Sequence[str]) -> tuple[list[list[int]], list[list[int]]]:
        prompts, targets = [], []
        for query, cands, answer in zip(queries, passages, answers):
            answer_ids = self.prompts.answer_ids(answer)
            for context in cands:
                together = [context] if isinstance(context, Passage) else list(context)
                prompts.append(self.prompts.prompt_ids(query, kind, together))
                targets.append(answer_ids)
        return prompts, targets

    def _chunk_logprobs(self, prompts: list[list[int]], targets: list[list[int]], length: int) -> torch.Tensor:
        """Token log-probs of ``targets`` after ``prompts``: [n, length] (zeros beyond each target)."""
        device = self.device
        labels = _pad_right(targets, length, self.pad_id).to(device)  # padding is masked out below
        if self.seq2seq:
            width = max(map(len, prompts))
            input_ids = _pad_right(prompts, width, self.pad_id).to(device)
            attention = _pad_right([[1] * len(p) for p in prompts], width, 0).to(device)
            start = self.model.config.decoder_start_token_id
            decoder_in = torch.cat([torch.full_like(labels[:, :1], start), labels[:, :-1]], dim=1)
            logits = self.model(input_ids=input_ids, attention_mask=attention, decoder_input_ids=decoder_in,
                                use_cache=False).logits  # [n, L, V]
        else:
            # Rows without gradient start from the keys and values of their shared head, run once; every row
            # keeps at least its last prompt token, whose logit predicts the first answer token.
            shared = (min(common_prefix_length(prompts), min(map(len, prompts)) - 1)
                      if self.share_prefix and not torch.is_grad_enabled() and len(prompts) > 1 else 0)
            past = None
            if shared:
                past = self.model(input_ids=torch.tensor([prompts[0][:shared]], device=device),
                                  use_cache=True).cache
                if past is None or past.get_seq_length() != shared:  # the model kept no cache: full rows
                    past, shared = None, 0
                else:
                    past.batch_repeat_interleave(len(prompts))
            rests = [p[shared:] for p in prompts]
            width = max(map(len, rests))
            rows = [[self.pad_id] * (width - len(p)) + p + t + [self.pad_id] * (length - len(t))
                    for p, t in zip(rests, targets)]
            attention = torch.tensor([[1] * shared + [0] * (width - len(p)) + [1] * (len(p) + len(t))
                                      + [0] * (length - len(t)) for p, t in zip(rests, targets)], device=device)
            positions = (attention.cumsum(-1) - 1).clamp(min=0)[:, shared:]
            out = self.model(input_ids=torch.tensor(rows, device=device), attention_mask=attention,
                             position_ids=positions, logits_to_keep=length + 1, cache=past,
                             use_cache=past is not None)
            logits = out.logits[:, :length]  # position P-1+t predicts answer token t
        mask = _pad_right([[1] * len(t) for t in targets], length, 0).to(device)
        return gather_logprobs(logits, labels) * mask

    def token_logprobs(self, queries: Sequence[str], kind: str, passages: Sequence[Sequence[Context]],
                       answers: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log p(y_t | x, h, y_<t) for each example and each of its passages.

        A "passage" may also be a sequence of passages, read together in one prompt (concatenated).

        Returns ([B, K, L] log-probs, zero where padded; [B, L] answer mask). Gradient flows unless the
        caller disables it. Every example must have the same number K of passages.
        """
        B, K = len(passages), len(passages[0])
        prompts, targets = self._pairs(queries, kind, passages, answers)
        length = max(map(len, targets))
        step = self.score_batch_size
        # Chunks of similar prompt lengths carry less padding; results go back to pair order.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        chunks = [self._chunk_logprobs([prompts[j] for j in order[i:i + step]],
                                       [targets[j] for j in order[i:i + step]], length)
                  for i in range(0, len(order), step)]
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        logprobs = torch.cat(chunks)[inverse.to(chunks[0].device)].view(B, K, length)
        answer_mask = _pad_right([[1] * len(self.prompts.answer_ids(a)) for a in answers], length, 0)
        return logprobs, answer_mask.to(logprobs.device).bool()

    def sequence_logprob(self, queries: Sequence[str], kind: str, passages: Sequence[Sequence[Context]],
                         answers: Sequence[str], reduction: str = "sum") -> torch.Tensor:
        """log p_g(y | x, h) for B examples x K passages: [B, K], summed or averaged over answer tokens."""
        logprobs, mask = self.token_logprobs(queries, kind, passages, answers)
        total = logprobs.sum(-1)
        if reduction == "sum":
            return total
        if reduction == "mean":
            return total / mask.sum(-1, keepdim=True)
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")

    def pair_logprob(self, queries: Sequence[str], kind: str, passages: Sequence[Passage],
                     answers: Sequence[str], reduction: str = "sum") -> torch.Tensor:
        """log p_g(y_i | x_i, h_i) for N independent (query, passage, answer) triples: [N]."""
        return self.sequence_logprob(queries, kind, [[p] for p in passages], answers, reduction)[:, 0]

    # ---- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, queries: Sequence[str], kind: str, passages: Sequence[Sequence[Passage]], *,
                 num_beams: int = 1, max_new_tokens: int = 32) -> tuple[list[str], torch.Tensor]:
        """One answer per query, with ``passages[i]`` (one or several, concatenated) in its prompt.

        Returns the answers and their length-normalised log-probability (mean per generated token).
        """
        prompts = [self.prompts.prompt_ids(q, kind, ps) for q, ps in zip(queries, passages)]
        width = max(map(len, prompts))
        pad = _pad_right if self.seq2seq else _pad_left
        input_ids = pad(prompts, width, self.pad_id).to(self.device)
        attention = pad([[1] * len(p) for p in prompts], width, 0).to(self.device)
        out = self.model.generate(input_ids=input_ids, attention_mask=attention, num_beams=num_beams,
                                  do_sample=False, max_new_tokens=max_new_tokens, return_dict_in_generate=True,
                                  output_scores=True, pad_token_id=self.pad_id,
                                  eos_token_id=self.prompts.eos_id)
        scores = self.model.compute_transition_scores(out.sequences, out.scores, out.get("beam_indices"),
                                                      normalize_logits=num_beams == 1)  # [N, T]
        new = out.sequences[:, -scores.shape[1]:]
        texts, confidences = [], []
        for tokens, token_scores in zip(new.tolist(), scores):
            length = tokens.index(self.prompts.eos_id) + 1 if self.prompts.eos_id in tokens else len(tokens)
            texts.append(self.tokenizer.decode(tokens[:length], skip_special_tokens=True).strip())
            confidences.append(token_scores[:length].float().mean())
        return texts, torch.stack(confidences)
