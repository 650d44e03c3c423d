"""Prompts for the generator, built from token-id segments that are tokenised once.

A prompt is  head + passage segment(s) + query segment + tail, where

    head    = the instruction, as the chat template's system message when the tokenizer has one
    passage = "Passage: {title}\n{text}"   truncated to max_passage_tokens, cached per passage id
    query   = "Question: {question}"  or  "Dialogue:\n{history}"  (history truncated from the left)
    tail    = chat suffix up to the assistant turn, or "\nAnswer:" without a template

Passages are scored K times per example and reappear across steps, so their ids are cached; the
segment boundaries are the same in training and in generation, which is what matters for the model.
"""

from __future__ import annotations

from typing import Sequence

from jinja2 import TemplateError

from jsarag.data import Passage

_SLOT = "\x00JSARAG_CONTENT\x00"


class PromptBuilder:
    def __init__(self, tokenizer, *, seq2seq: bool, use_chat_template: bool = True,
                 qa_instruction: str = "", dialogue_instruction: str = "", max_passage_tokens: int = 192,
                 max_query_tokens: int = 128, max_answer_tokens: int = 48):
        self.tokenizer = tokenizer
        self.seq2seq = seq2seq
        self.max_passage_tokens = max_passage_tokens
        self.max_query_tokens = max_query_tokens
        self.max_answer_tokens = max_answer_tokens
        self.eos_id = tokenizer.eos_token_id
        self.chat = use_chat_template and not seq2seq and getattr(tokenizer, "chat_template", None) is not None
        instructions = {"question": qa_instruction, "context": dialogue_instruction}
        if self.chat:
            heads = {kind: self._chat_head(text) for kind, text in instructions.items()}
            suffix = self._chat_parts([{"role": "user", "content": _SLOT}])[1]
            self.answer_prefix = ""
        else:
            heads = {kind: text + "\n\n" for kind, text in instructions.items()}
            suffix = "\nAnswer:"
            self.answer_prefix = "" if seq2seq else " "
        self._head = {kind: self._ids(text) for kind, text in heads.items()}
        self._tail = self._ids(suffix)
        self._passages: dict[str, list[int]] = {}

    def _chat_parts(self, messages: list[dict]) -> tuple[str, str]:
        rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prefix, suffix = rendered.split(_SLOT)
        return prefix, suffix

    def _chat_head(self, instruction: str) -> str:
        """Everything before the user's content: the instruction as the system message (replacing a
        template's default one), or at the top of the user turn where a template has no system role."""
        try:
            return self._chat_parts([{"role": "system", "content": instruction},
                                     {"role": "user", "content": _SLOT}])[0]
        except TemplateError:  # the template rejects a system message
            return self._chat_parts([{"role": "user", "content": _SLOT}])[0] + instruction + "\n\n"

    def _ids(self, text: str) -> list[int]:
        # No "longer than the model's maximum length" warning: every segment is truncated by its caller.
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def passage_ids(self, passage: Passage) -> list[int]:
        ids = self._passages.get(passage.id)
        if ids is None:
            title = f"{passage.title}\n" if passage.title else ""
            ids = self._ids(f"Passage: {title}{passage.text}")[: self.max_passage_tokens] + self._ids("\n\n")
            self._passages[passage.id] = ids
        return ids

    def query_ids(self, query: str, kind: str) -> list[int]:
        if kind == "context":  # keep the most recent turns: the one to answer is last
            return self._ids("Dialogue:\n") + self._ids(query)[-self.max_query_tokens:]
        return self._ids(f"Question: {query}")[: self.max_query_tokens]

    def query_length(self, query: str, kind: str) -> int:
        """Tokens of the query segment before its truncation to ``max_query_tokens``."""
        return len(self._ids(query if kind == "context" else f"Question: {query}"))

    def prompt_ids(self, query: str, kind: str, passages: Sequence[Passage]) -> list[int]:
        ids = list(self._head[kind])
        for passage in passages:
            ids += self.passage_ids(passage)
        ids += self.query_ids(query, kind) + self._tail
        if self.seq2seq and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def answer_ids(self, answer: str) -> list[int]:
        """Target tokens: the answer, truncated, then end-of-sequence (the model learns to stop)."""
        ids = self._ids(self.answer_prefix + answer)[: self.max_answer_tokens]
        return ids + [self.eos_id]
