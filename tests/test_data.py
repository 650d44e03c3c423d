"""Tests for jsarag.data: loading the corpus and examples, and the exact error messages."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, SHARED_DATA

from jsarag.config import DataConfig
from jsarag.data import Corpus, DataError, Example, Passage, load_examples
from jsarag.pipeline import load_corpus, load_split, resolve_data_path

DATA_ROOT = SHARED_DATA

# (dataset, corpus passages, dev examples, kind), as stated in each dataset's README.
REAL_DATASETS = [
    ("squad_v1_dev", 2067, 1027, "question"),
    ("covid_qa", 3572, 195, "question"),
    ("clapnq_dev", 597, 50, "question"),
    ("dstc11_track5", 10882, 306, "context"),
]

GOOD = {"id": "q1", "question": "Who?", "answers": ["Ann"], "positive_ids": ["p1"]}


def write_lines(tmp_path: Path, lines: list[str], name: str = "dev.jsonl") -> str:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def write_records(tmp_path: Path, records: list[object], name: str = "dev.jsonl") -> str:
    return write_lines(tmp_path, [json.dumps(r) for r in records], name)


def example(**overrides: object) -> dict:
    """GOOD with some fields replaced; a value of ... removes the field."""
    record = {**GOOD, **overrides}
    return {k: v for k, v in record.items() if v is not ...}


def small_corpus() -> Corpus:
    return Corpus([Passage("p1", "T1", "one"), Passage("p2", "", "two")], source="mem")


def load_error(source: object, corpus: Corpus | None = None, **kwargs: object) -> DataError:
    with pytest.raises(DataError) as info:
        load_examples(source, corpus, **kwargs)
    return info.value


def corpus_error(path: str) -> DataError:
    with pytest.raises(DataError) as info:
        Corpus.from_jsonl(path)
    return info.value


# --- real datasets ------------------------------------------------------------------------------


def real_dir(name: str) -> Path:
    folder = DATA_ROOT / name
    if not folder.is_dir():
        pytest.skip(f"{folder} is not available (real data is only on the development machines)")
    return folder


@pytest.mark.parametrize(("name", "n_passages", "n_dev", "kind"), REAL_DATASETS)
def test_real_dataset_loads(name: str, n_passages: int, n_dev: int, kind: str) -> None:
    folder = real_dir(name)
    corpus = Corpus.from_jsonl(folder / "corpus.jsonl")
    dev = load_examples(folder / "dev.jsonl", corpus)
    assert len(corpus) == n_passages
    assert len(dev) == n_dev
    assert {e.kind for e in dev} == {kind}
    # The READMEs promise gold passages for every example; the loader already checked they exist.
    assert all(e.positive_ids and e.answers for e in dev)
    assert corpus.row(corpus[5].id) == 5


def test_real_fingerprint_stable_and_content_sensitive() -> None:
    path = real_dir("squad_v1_dev") / "corpus.jsonl"
    first, second = Corpus.from_jsonl(path), Corpus.from_jsonl(path)
    assert first.fingerprint() == second.fingerprint()
    changed = [first[i] for i in range(len(first))]
    changed[100] = Passage(changed[100].id, changed[100].title, changed[100].text + ".")
    assert Corpus(changed).fingerprint() != first.fingerprint()


def test_real_dstc11_corpus_loads_fast() -> None:
    path = real_dir("dstc11_track5") / "corpus.jsonl"
    start = time.perf_counter()
    Corpus.from_jsonl(path)
    assert time.perf_counter() - start < 1.0


# --- datasets shipped inside the package ------------------------------------------------------

# (name, passages, train, dev, kind, licence file), as each folder's README states.
SHIPPED = [
    ("squad_mini", 185, 964, 60, "question", None),
    ("dstc11", 10882, 1516, 60, "context", "LICENSE"),
]


@pytest.mark.parametrize(("name", "n_passages", "n_train", "n_dev", "kind", "licence"), SHIPPED)
def test_shipped_dataset_loads_through_builtin_paths(name: str, n_passages: int, n_train: int, n_dev: int,
                                                     kind: str, licence: str | None) -> None:
    data = DataConfig(corpus=f"builtin:{name}/corpus.jsonl", train=f"builtin:{name}/train.jsonl",
                      dev=f"builtin:{name}/dev.jsonl")
    corpus = load_corpus(data)
    train, dev = load_split(data, "train", corpus), load_split(data, "dev", corpus)
    assert (len(corpus), len(train), len(dev)) == (n_passages, n_train, n_dev)
    assert {e.kind for e in [*train, *dev]} == {kind}
    assert not {e.id for e in train} & {e.id for e in dev}
    folder = resolve_data_path(f"builtin:{name}/corpus.jsonl").parent
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert f"{n_passages:,}" in readme or str(n_passages) in readme
    if licence:
        assert "Community Data License Agreement" in (folder / licence).read_text(encoding="utf-8")


def test_dstc11_sample_dev_dialogues_are_unseen_in_train() -> None:
    data = DataConfig(corpus="builtin:dstc11/corpus.jsonl", train="builtin:dstc11/train.jsonl",
                      dev="builtin:dstc11/dev.jsonl")
    corpus = load_corpus(data)
    opening = {e.query.splitlines()[0] for e in load_split(data, "train", corpus)}
    dev = load_split(data, "dev", corpus)
    assert not any(e.query.splitlines()[0] in opening for e in dev)
    # Both domains are asked about at dev time.
    assert {p.split("-", 1)[0] for e in dev for p in e.positive_ids} == {"hotel", "restaurant"}


@pytest.mark.parametrize(("script", "source", "name"), [
    ("make_squad_mini.py", "squad_v1_dev", "squad_mini"),
    ("make_dstc11_sample.py", "dstc11_track5", "dstc11"),
])
def test_shipped_dataset_is_rebuilt_byte_for_byte_from_the_source(tmp_path: Path, script: str, source: str,
                                                                   name: str) -> None:
    src = real_dir(source)
    subprocess.run([sys.executable, str(REPO / "scripts" / script), str(src), str(tmp_path)], check=True,
                   capture_output=True)
    shipped = resolve_data_path(f"builtin:{name}/corpus.jsonl").parent
    for built in sorted(tmp_path.iterdir()):
        assert built.read_bytes() == (shipped / built.name).read_bytes(), built.name


# --- Corpus API ---------------------------------------------------------------------------------


def test_corpus_rows_ids_and_lookup() -> None:
    corpus = small_corpus()
    assert len(corpus) == 2
    assert corpus[1] == Passage("p2", "", "two")
    assert corpus[np.int64(0)].id == "p1"  # FAISS returns NumPy integers
    assert corpus.row("p2") == 1
    assert corpus.has("p1") and not corpus.has("p3")
    assert corpus.ids == ["p1", "p2"]
    corpus.ids.append("p3")  # a copy: the corpus is unchanged
    assert corpus.ids == ["p1", "p2"]
    assert corpus.source == "mem"
    assert [p.id for p in corpus] == ["p1", "p2"]


def test_corpus_rejects_negative_and_out_of_range_rows() -> None:
    corpus = small_corpus()
    # FAISS marks missing results with -1; that must not silently become the last passage.
    with pytest.raises(IndexError, match="row -1 out of range for corpus mem of 2 passages"):
        corpus[-1]
    with pytest.raises(IndexError, match="row 2 out of range"):
        corpus[2]


def test_corpus_row_of_unknown_id_names_id_and_corpus() -> None:
    with pytest.raises(KeyError, match="passage id 'nope' is not in corpus mem"):
        small_corpus().row("nope")


def test_fingerprint_stable_and_content_sensitive() -> None:
    base = small_corpus().fingerprint()
    assert base == small_corpus().fingerprint()
    assert len(base) == 64 and int(base, 16) >= 0
    assert Corpus([Passage("p1", "T1", "one"), Passage("p2", "", "two!")]).fingerprint() != base
    assert Corpus([Passage("p1", "T1", "one"), Passage("p2", "x", "two")]).fingerprint() != base
    assert Corpus([Passage("p2", "", "two"), Passage("p1", "T1", "one")]).fingerprint() != base
    # Field boundaries are encoded, so moving text between title and text changes the digest.
    assert Corpus([Passage("a", "bc", "d")]).fingerprint() != Corpus([Passage("a", "b", "cd")]).fingerprint()


def test_corpus_from_jsonl(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path,
        [
            json.dumps({"id": "p1", "title": "T", "text": "one", "extra": 1}),
            "",
            json.dumps({"id": "p2", "text": "two"}),  # missing title means no title
            json.dumps({"id": "p3", "title": None, "text": "three"}),
        ],
        "corpus.jsonl",
    )
    corpus = Corpus.from_jsonl(path)
    assert corpus.source == path
    assert [corpus[i] for i in range(3)] == [
        Passage("p1", "T", "one"),
        Passage("p2", "", "two"),
        Passage("p3", "", "three"),
    ]


# --- Corpus errors ------------------------------------------------------------------------------


def test_corpus_missing_text(tmp_path: Path) -> None:
    path = write_records(tmp_path, [{"id": "p1", "text": "a"}, {"id": "p2", "title": "T"}], "corpus.jsonl")
    err = corpus_error(path)
    assert str(err) == f"{path}:2: field 'text': missing"
    assert (err.source, err.line, err.field, err.problem) == (path, 2, "text", "missing")


def test_corpus_empty_text(tmp_path: Path) -> None:
    path = write_records(tmp_path, [{"id": "p1", "text": "  "}], "corpus.jsonl")
    assert str(corpus_error(path)) == (
        f"{path}:1: field 'text': expected a non-empty string, got a blank string"
    )


def test_corpus_missing_id(tmp_path: Path) -> None:
    path = write_records(tmp_path, [{"title": "T", "text": "a"}], "corpus.jsonl")
    assert str(corpus_error(path)) == f"{path}:1: field 'id': missing"


def test_corpus_non_string_id(tmp_path: Path) -> None:
    path = write_records(tmp_path, [{"id": 7, "text": "a"}], "corpus.jsonl")
    assert str(corpus_error(path)) == f"{path}:1: field 'id': expected a non-empty string, got int"


def test_corpus_non_string_title(tmp_path: Path) -> None:
    path = write_records(tmp_path, [{"id": "p1", "title": ["T"], "text": "a"}], "corpus.jsonl")
    assert str(corpus_error(path)) == f"{path}:1: field 'title': expected a string, got list"


def test_corpus_duplicate_id_names_both_lines(tmp_path: Path) -> None:
    records = [json.dumps({"id": i, "text": "x"}) for i in ("p1", "p2")]
    duplicate = json.dumps({"id": "p1", "text": "y"})
    path = write_lines(tmp_path, [records[0], "", records[1], duplicate], "corpus.jsonl")
    assert str(corpus_error(path)) == f"{path}:4: field 'id': duplicate id 'p1'; first used at {path}:1"


def test_corpus_duplicate_id_in_memory_uses_index_plus_one() -> None:
    with pytest.raises(DataError) as info:
        Corpus([Passage("a", "", "x"), Passage("b", "", "y"), Passage("a", "", "z")])
    assert str(info.value) == "<memory>:3: field 'id': duplicate id 'a'; first used at <memory>:1"


def test_corpus_in_memory_bad_passage() -> None:
    with pytest.raises(DataError) as info:
        Corpus([Passage("a", "", "x"), Passage("b", "", "")], source="kb")
    assert str(info.value) == "kb:2: field 'text': expected a non-empty string, got an empty string"


def test_corpus_invalid_json(tmp_path: Path) -> None:
    path = write_lines(tmp_path, [json.dumps({"id": "p1", "text": "a"}), '{"id": "p2",'], "corpus.jsonl")
    err = corpus_error(path)
    assert str(err).startswith(f"{path}:2: invalid JSON: Expecting property name")
    assert (err.line, err.field) == (2, None)


def test_corpus_empty_and_missing_file(tmp_path: Path) -> None:
    path = write_lines(tmp_path, ["", " "], "corpus.jsonl")
    assert str(corpus_error(path)) == f"{path}: no passages"
    missing = str(tmp_path / "absent.jsonl")
    assert str(corpus_error(missing)) == f"{missing}: file not found"


# --- load_examples: success ---------------------------------------------------------------------


def test_load_examples_question_and_context(tmp_path: Path) -> None:
    corpus = small_corpus()
    path = write_records(
        tmp_path,
        [GOOD, example(id="q2", answers=["a", "b"], positive_ids=[]), example(id="q3", positive_ids=...)],
    )
    assert load_examples(path, corpus) == [
        Example("q1", "Who?", ("Ann",), ("p1",), "question"),
        Example("q2", "Who?", ("a", "b"), (), "question"),
        Example("q3", "Who?", ("Ann",), (), "question"),
    ]
    dialogue = {"id": "d1", "context": "User: hi\nSystem: hello\nUser: rooms?", "answers": ["Clean."]}
    path = write_records(tmp_path, [dialogue], "dialogue.jsonl")
    [loaded] = load_examples(Path(path))
    assert loaded.kind == "context" and loaded.query == dialogue["context"]


def test_load_examples_ignores_unknown_fields(tmp_path: Path) -> None:
    path = write_records(tmp_path, [example(meta={"split": "dev"}, score=0.5)])
    assert load_examples(path)[0].id == "q1"


def test_blank_lines_skipped_but_line_numbers_kept(tmp_path: Path) -> None:
    good = json.dumps(GOOD)
    path = write_lines(tmp_path, ["", good, "   ", json.dumps(example(id="q2"))])
    assert [e.id for e in load_examples(path)] == ["q1", "q2"]
    path = write_lines(tmp_path, ["", good, "   ", json.dumps(example(id="q2", answers=5))])
    assert str(load_error(path)) == (
        f"{path}:4: field 'answers': expected a non-empty list of strings, got int"
    )


def test_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\r\n")
    assert load_examples(path)[0].id == "q1"


# --- load_examples: errors ----------------------------------------------------------------------


def test_invalid_json(tmp_path: Path) -> None:
    path = write_lines(tmp_path, [json.dumps(GOOD), '{"id": "q2", '])
    err = load_error(path)
    assert str(err) == (
        f"{path}:2: invalid JSON: Expecting property name enclosed in double quotes at column 14"
    )
    assert (err.source, err.line, err.field) == (path, 2, None)


def test_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "dev.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b'\n{"id": "\xff"}\n')
    assert str(load_error(path)).startswith(f"{path}:2: not valid UTF-8: invalid start byte at byte 8")


def test_line_not_an_object(tmp_path: Path) -> None:
    path = write_lines(tmp_path, [json.dumps(GOOD), "[1, 2]"])
    assert str(load_error(path)) == f"{path}:2: expected a JSON object, got list"


def test_missing_id(tmp_path: Path) -> None:
    path = write_records(tmp_path, [example(id=...)])
    assert str(load_error(path)) == f"{path}:1: field 'id': missing"


def test_non_string_id(tmp_path: Path) -> None:
    path = write_records(tmp_path, [GOOD, example(id=2)])
    assert str(load_error(path)) == f"{path}:2: field 'id': expected a non-empty string, got int"


def test_empty_id(tmp_path: Path) -> None:
    path = write_records(tmp_path, [example(id="")])
    assert str(load_error(path)) == f"{path}:1: field 'id': expected a non-empty string, got an empty string"


def test_duplicate_example_id_names_both_lines(tmp_path: Path) -> None:
    path = write_records(tmp_path, [GOOD, example(id="q2"), GOOD])
    err = load_error(path)
    assert str(err) == f"{path}:3: field 'id': duplicate id 'q1'; first used at {path}:1"
    assert (err.line, err.field) == (3, "id")


def test_neither_question_nor_context(tmp_path: Path) -> None:
    path = write_records(tmp_path, [example(question=...)])
    assert str(load_error(path)) == (
        f"{path}:1: field 'question/context': missing: give 'question' or 'context'"
    )


def test_both_question_and_context(tmp_path: Path) -> None:
    path = write_records(tmp_path, [example(context="User: hi")])
    assert str(load_error(path)) == (
        f"{path}:1: field 'question/context': both present: give 'question' or 'context', not both"
    )


def test_non_string_question(tmp_path: Path) -> None:
    path = write_records(tmp_path, [example(question=3.5)])
    assert str(load_error(path)) == f"{path}:1: field 'question': expected a non-empty string, got float"


def test_blank_question(tmp_path: Path) -> None:
    path = write_records(tmp_path, [example(question=" \n ")])
    assert str(load_error(path)) == (
        f"{path}:1: field 'question': expected a non-empty string, got a blank string"
    )


def test_non_string_context(tmp_path: Path) -> None:
    path = write_records(tmp_path, [example(question=..., context=["User: hi"])])
    assert str(load_error(path)) == f"{path}:1: field 'context': expected a non-empty string, got list"


def test_answers_missing(tmp_path: Path) -> None:
    path = write_records(tmp_path, [example(answers=...)])
    assert str(load_error(path)) == f"{path}:1: field 'answers': missing"


def test_answers_not_a_list(tmp_path: Path) -> None:
    path = write_records(tmp_path, [example(answers="Ann")])
    assert str(load_error(path)) == (
        f"{path}:1: field 'answers': expected a non-empty list of strings, got str"
    )


def test_answers_empty(tmp_path: Path) -> None:
    path = write_records(tmp_path, [example(answers=[])])
    assert str(load_error(path)) == (
        f"{path}:1: field 'answers': expected a non-empty list of strings, got an empty list"
    )


def test_answers_with_non_string(tmp_path: Path) -> None:
    path = write_records(tmp_path, [example(answers=["Ann", 3])])
    assert str(load_error(path)) == (
        f"{path}:1: field 'answers': expected a non-empty list of strings, got int at index 1"
    )


def test_positive_ids_not_a_list(tmp_path: Path) -> None:
    path = write_records(tmp_path, [example(positive_ids="p1")])
    assert str(load_error(path)) == f"{path}:1: field 'positive_ids': expected a list of strings, got str"


def test_positive_ids_with_non_string(tmp_path: Path) -> None:
    path = write_records(tmp_path, [example(positive_ids=["p1", 2])])
    assert str(load_error(path)) == (
        f"{path}:1: field 'positive_ids': expected a list of strings, got int at index 1"
    )


def test_positive_id_not_in_corpus(tmp_path: Path) -> None:
    path = write_records(tmp_path, [GOOD, example(id="q2", positive_ids=["p2", "p9"])])
    err = load_error(path, small_corpus())
    assert str(err) == f"{path}:2: field 'positive_ids': id 'p9' is not in corpus mem"
    # Without a corpus the ids cannot be checked and load fine.
    assert load_examples(path)[1].positive_ids == ("p2", "p9")


def test_mixed_kinds(tmp_path: Path) -> None:
    dialogue = example(id="d1", question=..., context="User: hi")
    path = write_records(tmp_path, [GOOD, example(id="q2"), dialogue])
    err = load_error(path)
    assert str(err) == (
        f"{path}:3: field 'context': expected 'question' like the first example at {path}:1; "
        "one source cannot mix questions and dialogue contexts"
    )
    assert (err.line, err.field) == (3, "context")


def test_empty_file(tmp_path: Path) -> None:
    path = write_lines(tmp_path, [])
    err = load_error(path)
    assert str(err) == f"{path}: no examples"
    assert (err.line, err.field) == (None, None)
    path = write_lines(tmp_path, ["", "  "], "blank.jsonl")
    assert str(load_error(path)) == f"{path}: no examples"


def test_file_not_found(tmp_path: Path) -> None:
    path = str(tmp_path / "missing.jsonl")
    assert str(load_error(path)) == f"{path}: file not found"


def test_unreadable_path(tmp_path: Path) -> None:
    assert str(load_error(tmp_path)) == f"{tmp_path}: cannot read file: Is a directory"


def test_empty_in_memory_source() -> None:
    assert str(load_error([])) == "<records>: no examples"


def test_name_labels_a_file(tmp_path: Path) -> None:
    path = write_records(tmp_path, [example(id="")])
    assert str(load_error(path, name="my-dev")).startswith("my-dev:1: field 'id':")


# --- in-memory records and Hugging Face datasets ------------------------------------------------


def test_hf_dataset_corpus_and_examples() -> None:
    datasets = pytest.importorskip("datasets")
    passages = datasets.Dataset.from_list(
        [{"id": "p1", "title": "T1", "text": "one"}, {"id": "p2", "title": "T2", "text": "two"}]
    )
    corpus = Corpus.from_records(passages, source="hf-corpus")
    assert corpus.ids == ["p1", "p2"] and corpus[1] == Passage("p2", "T2", "two")
    # The second row has no positive_ids; the dataset fills the column with None, meaning absent.
    records = datasets.Dataset.from_list([GOOD, {"id": "q2", "question": "Why?", "answers": ["So."]}])
    assert load_examples(records, corpus) == [
        Example("q1", "Who?", ("Ann",), ("p1",), "question"),
        Example("q2", "Why?", ("So.",), (), "question"),
    ]


def test_hf_dataset_error_names_the_row() -> None:
    datasets = pytest.importorskip("datasets")
    records = datasets.Dataset.from_list([GOOD, example(id="q2"), example(id="q3", answers=[])])
    expected = "field 'answers': expected a non-empty list of strings, got an empty list"
    err = load_error(records)
    assert str(err) == f"<records>:3: {expected}"
    assert err.line == 3
    assert str(load_error(records, name="hf-dev")) == f"hf-dev:3: {expected}"


def test_hf_dataset_default_name_uses_dataset_name_and_split() -> None:
    datasets = pytest.importorskip("datasets")
    info = datasets.DatasetInfo(dataset_name="toy")
    records = datasets.Dataset.from_list([example(id="")], info=info, split="train")
    assert str(load_error(records)).startswith("<toy train>:1: field 'id':")


def test_hf_dataset_corpus_duplicate_names_rows() -> None:
    datasets = pytest.importorskip("datasets")
    passages = datasets.Dataset.from_list(
        [{"id": "p1", "text": "a"}, {"id": "p2", "text": "b"}, {"id": "p1", "text": "c"}]
    )
    with pytest.raises(DataError) as info:
        Corpus.from_records(passages)
    assert str(info.value) == "<records>:3: field 'id': duplicate id 'p1'; first used at <records>:1"


def test_plain_records_corpus_missing_text() -> None:
    with pytest.raises(DataError) as info:
        Corpus.from_records([{"id": "p1", "text": "a"}, {"id": "p2"}], source="kb")
    assert str(info.value) == "kb:2: field 'text': missing"


def test_plain_records_row_not_a_mapping() -> None:
    assert str(load_error([GOOD, "q2"])) == "<records>:2: expected a JSON object, got str"


# --- DataError ----------------------------------------------------------------------------------


def test_data_error_attributes_format_and_pickle() -> None:
    err = DataError("data/dev.jsonl", 12, "answers", "expected a non-empty list of strings, got int")
    assert str(err) == "data/dev.jsonl:12: field 'answers': expected a non-empty list of strings, got int"
    assert isinstance(err, ValueError)
    assert (err.source, err.line, err.field, err.problem) == (
        "data/dev.jsonl",
        12,
        "answers",
        "expected a non-empty list of strings, got int",
    )
    assert str(DataError("x.jsonl", None, None, "no examples")) == "x.jsonl: no examples"
    assert str(DataError("x.jsonl", 3, None, "invalid JSON: bad")) == "x.jsonl:3: invalid JSON: bad"
    # Errors raised in DataLoader workers are pickled back to the main process.
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err) and copy.line == 12
