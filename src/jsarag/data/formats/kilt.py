"""KILT (Petroni et al., NAACL 2021): the Wikipedia knowledge source and the task files.

Files (facebookresearch/KILT ``README.md``):

- ``kilt_knowledgesource.json``: JSON Lines, one Wikipedia page per line,
  ``{"_id", "wikipedia_id", "wikipedia_title", "text": [paragraph, ...], "anchors", ...}``.
- task files, e.g. ``nq-train-kilt.jsonl``, ``wow-dev-kilt.jsonl``: JSON Lines,
  ``{"id", "input", "output": [{"answer", "provenance": [{"wikipedia_id", "start_paragraph_id",
  "end_paragraph_id", ...}]}, ...]}``.

Passages. One passage per paragraph of a page, id ``{wikipedia_id}-{index}`` where ``index`` is the
paragraph's 0-based position in ``text``, the numbering KILT's provenance uses, so a provenance range
maps to passage ids exactly. As in KILT's own passage builder (``scripts/create_kilt_data_paragraphs.py``)
paragraph 0 (the page title) and the ``Section::::`` headings are not passages; the title goes into
each passage's ``title``. The ``BULLET::::`` marker of list items is removed (``"BULLET::::- x"`` ->
``"- x"``); blank paragraphs are skipped.

Examples. ``question`` = ``input``; dialogue files (Wizard of Wikipedia, whose file names start with
``wow``) give a ``context`` instead: ``input`` holds the turns one per line, the last one the user's,
so speakers alternate ``User``/``Agent`` counting back from the end. ``answers`` = the distinct
non-empty ``answer`` strings of ``output``; ``positive_ids`` = every paragraph in each provenance's
``start_paragraph_id``..``end_paragraph_id`` range that is a passage. A provenance without paragraph
ids (or with KILT's ``-1``, "not found") adds none; paragraphs that are no passage (the title, a
heading, a blank one) of a page the knowledge source has are dropped. To know those, the task files
are scanned once before the knowledge source streams (memory: one entry per provenance paragraph,
not per passage). A provenance page missing from the knowledge source stays, and the writer reports
it: the wrong knowledge source was given.
A record whose outputs carry no answer is skipped; a record without ``output`` at all is an error:
KILT publishes its test files (``*-test_without_answers-kilt.jsonl``) without outputs, so they
cannot become examples here.

Roles. ``ROLE=PATH`` with role ``corpus``, ``train``, ``dev`` or ``test`` says what a file is;
otherwise a file whose name contains ``knowledgesource`` is the corpus, one whose name has the word
``train``, ``dev`` or ``test`` (split on ``-``, ``_``, ``.``) is that split, and any other file is
the corpus if its first record has ``wikipedia_id`` and a list ``text``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from jsarag.data.formats import Converted, Source
from jsarag.data.formats._io import DOTTED_PARTS, SPLITS, first_record, json_objects, require_object, split_in_name
from jsarag.data.schema import DataError, _describe

__all__ = ["read"]

SECTION = "Section::::"
BULLET = "BULLET::::"


def read(sources: list[tuple[str | None, Path]]) -> Converted:
    roles = [(role or _infer_role(path), str(path), path.name.lower().startswith("wow")) for role, path in sources]
    for role, label, _ in roles:
        if role != "corpus" and role not in SPLITS:
            raise DataError(label, None, None, f"unknown role {role!r} for KILT: use corpus, train, dev or test")
    unreachable = _Unreachable([(label, dialogue) for role, label, dialogue in roles if role != "corpus"])
    converted = Converted(corpus=[])
    for role, label, dialogue in roles:
        if role == "corpus":
            converted.corpus.append(Source(label, _passages(label, unreachable)))
        else:
            converted.splits.setdefault(role, []).append(Source(label, _examples(label, dialogue, unreachable)))
    return converted


class _Unreachable:
    """Provenance paragraphs that are no passage (headings, blank paragraphs) of pages the corpus has.

    Known only once the knowledge source has been read, which the writer does before the splits: the
    task files are scanned first for the paragraphs they point at (one entry per provenance paragraph),
    and each page of the knowledge source is checked against them as it streams past.
    """

    def __init__(self, tasks: list[tuple[str, bool]]):
        self.tasks = tasks
        self.ids: set[str] = set()
        self._wanted: dict[str, set[str]] | None = None

    def check(self, wikipedia_id: str, passage_ids: set[str]) -> None:
        if self._wanted is None:
            self._wanted = {}
            for label, dialogue in self.tasks:
                for _, example in _examples(label, dialogue, None):
                    for passage_id in example["positive_ids"]:
                        self._wanted.setdefault(passage_id.rpartition("-")[0], set()).add(passage_id)
        self.ids.update(self._wanted.get(wikipedia_id, set()) - passage_ids)


def _infer_role(path: Path) -> str:
    if "knowledgesource" in path.name.lower():
        return "corpus"
    split = split_in_name(path.name, word=DOTTED_PARTS)
    if split:
        return split
    first = first_record(path)
    if isinstance(first, Mapping) and "wikipedia_id" in first and isinstance(first.get("text"), list):
        return "corpus"
    problem = "cannot tell whether this is the knowledge source or a train/dev/test file; name it as ROLE=PATH"
    raise DataError(str(path), None, None, problem)


# --- knowledge source ----------------------------------------------------------------------------


def _passages(label: str, unreachable: _Unreachable) -> Iterator[tuple[int, dict]]:
    for line, page in json_objects(label):
        wikipedia_id = _id(page, "wikipedia_id", label, line)
        title = page.get("wikipedia_title")
        if not isinstance(title, str):
            raise DataError(label, line, "wikipedia_title", f"expected a string, got {_describe(title)}")
        paragraphs = page.get("text")
        if not isinstance(paragraphs, list):
            raise DataError(label, line, "text", f"expected a list of paragraphs, got {_describe(paragraphs)}")
        passages = []
        for index, paragraph in enumerate(paragraphs[1:], start=1):
            if not isinstance(paragraph, str):
                raise DataError(label, line, "text", f"expected strings, got {_describe(paragraph)} at index {index}")
            text = _paragraph_text(paragraph)
            if text:
                passages.append({"id": f"{wikipedia_id}-{index}", "title": title, "text": text})
        unreachable.check(wikipedia_id, {passage["id"] for passage in passages})
        for passage in passages:
            yield line, passage


def _paragraph_text(paragraph: str) -> str:
    """The passage text of one paragraph; empty for headings and blank paragraphs."""
    text = paragraph.strip()
    if text.startswith(SECTION):
        return ""
    return text.removeprefix(BULLET).strip()


# --- task files ----------------------------------------------------------------------------------


def _examples(label: str, dialogue: bool, unreachable: _Unreachable | None) -> Iterator[tuple[int, dict]]:
    for line, record in json_objects(label):
        if "output" not in record:
            problem = "missing; KILT test files carry no answers (they are held out), so they cannot be converted"
            raise DataError(label, line, "output", problem)
        outputs = record["output"]
        if not isinstance(outputs, list) or not all(isinstance(out, Mapping) for out in outputs):
            raise DataError(label, line, "output", f"expected a list of objects, got {_describe(outputs)}")
        answers = _answers(outputs, label, line)
        if not answers:
            continue
        query = record.get("input")
        if not isinstance(query, str):
            raise DataError(label, line, "input", f"expected a string, got {_describe(query)}")
        example: dict[str, Any] = {"id": _id(record, "id", label, line)}
        if dialogue:
            example["context"] = _dialogue_context(query)
        else:
            example["question"] = query
        example["answers"] = answers
        positive_ids = _positive_ids(outputs, label, line)
        if unreachable is not None:
            positive_ids = [passage_id for passage_id in positive_ids if passage_id not in unreachable.ids]
        example["positive_ids"] = positive_ids
        yield line, example


def _answers(outputs: list, label: str, line: int) -> list[str]:
    answers: list[str] = []
    for out in outputs:
        answer = out.get("answer")
        if answer is not None and not isinstance(answer, str):
            raise DataError(label, line, "output.answer", f"expected a string, got {_describe(answer)}")
        if answer and answer.strip() and answer not in answers:
            answers.append(answer)
    return answers


def _positive_ids(outputs: list, label: str, line: int) -> list[str]:
    ids: dict[str, None] = {}  # an ordered set
    for out in outputs:
        provenance = out.get("provenance") or []
        if not isinstance(provenance, list):
            raise DataError(label, line, "output.provenance", f"expected a list, got {_describe(provenance)}")
        for prov in provenance:
            prov = require_object(prov, label, line, "output.provenance")
            start, end = prov.get("start_paragraph_id"), prov.get("end_paragraph_id")
            if not (_is_int(start) and _is_int(end)) or start < 0 or end < start:
                continue
            wikipedia_id = _id(prov, "wikipedia_id", label, line, "output.provenance.wikipedia_id")
            ids.update((f"{wikipedia_id}-{index}", None) for index in range(max(start, 1), end + 1))
    return list(ids)


def _dialogue_context(turns: str) -> str:
    lines = [turn.strip() for turn in turns.split("\n") if turn.strip()]
    # The last turn is the user's, the one to respond to; speakers alternate before it.
    speakers = ["User" if (len(lines) - i) % 2 else "Agent" for i in range(len(lines))]
    return "\n".join(f"{speaker}: {text}" for speaker, text in zip(speakers, lines))


# --- helpers -------------------------------------------------------------------------------------


def _id(record: Mapping, key: str, label: str, line: int, field: str | None = None) -> str:
    """An id as a string; KILT writes some ids (``wikipedia_id``, NQ's ``id``) as numbers."""
    value = record.get(key)
    if isinstance(value, str) and value.strip():
        return value.strip()
    if _is_int(value):
        return str(value)
    raise DataError(label, line, field or key, f"expected a string or integer id, got {_describe(value)}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

