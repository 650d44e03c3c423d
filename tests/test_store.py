"""The corpus and split stores: memory-mapped Arrow tables with lookup by id, written once, atomically."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from jsarag.data import Corpus, DataError, Example, Examples, Passage, open_corpus, open_split, tables
from jsarag.data import store as store_mod
from jsarag.data.convert import write_dataset
from jsarag.data.formats import Converted, Source
from jsarag.data.store import build_corpus_store, build_split_store


def passages(n: int) -> list[dict]:
    return [{"id": f"doc-{i}", "title": f"Title {i}" if i % 3 else "", "text": f"passage number {i} é ✓"}
            for i in range(n)]


def numbered(records: list) -> list[tuple[int, object]]:
    return list(enumerate(records, start=1))


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def small_batches(monkeypatch):
    """Three rows per record batch, so that every access crosses batch boundaries."""
    monkeypatch.setattr(store_mod, "BATCH_ROWS", 3)


def test_store_round_trip_matches_the_records_and_the_in_memory_corpus(tmp_path, small_batches):
    records = passages(11)
    corpus = build_corpus_store([("kb.jsonl", numbered(records))], tmp_path / "store", progress=False)
    expected = [Passage(r["id"], r["title"], r["text"]) for r in records]
    assert len(corpus) == 11 and corpus.source == "kb.jsonl"
    assert [corpus[i] for i in range(11)] == expected
    assert [corpus[i] for i in (10, 0, 7, 3, np.int64(5))] == [expected[i] for i in (10, 0, 7, 3, 5)]
    assert list(corpus) == expected
    assert [p for chunk in corpus.iter_chunks(2, 8) for p in chunk] == expected[2:8]
    assert all(corpus.row(r["id"]) == i for i, r in enumerate(records))
    assert corpus.has("doc-4") and not corpus.has("doc-11") and not corpus.has(4)
    with pytest.raises(KeyError, match="passage id 'nope' is not in corpus kb.jsonl"):
        corpus.row("nope")
    with pytest.raises(IndexError, match="row -1 out of range"):
        corpus[-1]
    # The fingerprint, computed while writing, is the documented digest (and the in-memory corpus's).
    digest = hashlib.sha256()
    for r in records:
        digest.update(json.dumps([r["id"], r["title"], r["text"]], ensure_ascii=False).encode() + b"\n")
    assert corpus.fingerprint() == digest.hexdigest() == Corpus(expected).fingerprint()
    reopened = Corpus.open(tmp_path / "store")
    assert reopened.fingerprint() == corpus.fingerprint() and reopened[9] == expected[9]
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [
        "data.arrow", "id_hash.npy", "id_hash_sample.npy", "id_row.npy", "offsets.npy", "store.json"]


@pytest.mark.parametrize("sample", [1, 2, 3, 512])
def test_lookup_by_id_from_disk_across_sample_blocks(tmp_path, monkeypatch, small_batches, sample):
    monkeypatch.setattr(tables, "SAMPLE", sample)
    records = passages(40)
    build_corpus_store([("kb", numbered(records))], tmp_path / "store", progress=False)
    corpus = Corpus.open(tmp_path / "store")  # reads ids through the sample and pread, not from memory
    assert [corpus.row(r["id"]) for r in reversed(records)] == list(range(39, -1, -1))
    assert not any(corpus.has(f"doc-{i}x") for i in range(40))


def test_lookup_survives_hash_collisions(tmp_path, monkeypatch, small_batches):
    # Every id hashes to one of two values: lookups must compare ids, not trust the hash.
    def colliding(ids):
        return np.array([len(i) % 2 for i in ids], dtype="<u8")

    monkeypatch.setattr(tables, "id_hashes", colliding)
    monkeypatch.setattr(tables, "SAMPLE", 2)
    records = passages(9)
    build_corpus_store([("kb", numbered(records))], tmp_path / "store", progress=False)
    corpus = Corpus.open(tmp_path / "store")
    assert [corpus.row(r["id"]) for r in records] == list(range(9))
    assert not corpus.has("doc-99")
    with pytest.raises(DataError) as info:
        build_corpus_store([("kb", numbered([*records, records[4]]))], tmp_path / "again", progress=False)
    assert str(info.value) == "kb:10: field 'id': duplicate id 'doc-4'; first used at kb:5"


def test_duplicate_is_reported_at_its_earliest_second_use_across_sources(tmp_path, small_batches):
    a = [{"id": "x", "text": "1"}, {"id": "y", "text": "2"}, {"id": "z", "text": "3"}]
    b = [{"id": "w", "text": "4"}, {"id": "z", "text": "5"}, {"id": "x", "text": "6"}]
    with pytest.raises(DataError) as info:
        build_corpus_store([("a.tsv", numbered(a)), ("b.tsv", numbered(b))], tmp_path / "s", progress=False)
    assert str(info.value) == "b.tsv:2: field 'id': duplicate id 'z'; first used at a.tsv:3"
    assert not (tmp_path / "s").exists() and hidden_leftovers(tmp_path) == []


def test_a_bad_record_names_its_line_and_leaves_nothing(tmp_path, small_batches):
    records = [*passages(7), {"id": "late", "text": ""}]
    with pytest.raises(DataError) as info:
        build_corpus_store([("kb.jsonl", numbered(records))], tmp_path / "s", progress=False)
    assert str(info.value) == "kb.jsonl:8: field 'text': expected a non-empty string, got an empty string"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="kb: no passages"):
        build_corpus_store([("kb", [])], tmp_path / "s", progress=False)


def test_open_corpus_converts_a_file_once_and_again_when_it_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("JSARAG_CACHE", str(tmp_path / "cache"))
    path = write_jsonl(tmp_path / "corpus.jsonl", passages(5))
    calls = []
    real = store_mod.build_corpus_store
    monkeypatch.setattr(store_mod, "build_corpus_store", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = open_corpus(path, progress=False)
    second = open_corpus(path, progress=False)
    assert len(calls) == 1 and second.fingerprint() == first.fingerprint() and len(second) == 5
    write_jsonl(path, passages(6))
    changed = open_corpus(path, progress=False)
    assert len(calls) == 2 and len(changed) == 6 and changed.fingerprint() != first.fingerprint()
    # A store folder is opened as it is.
    assert open_corpus(tmp_path / "cache" / "stores" / "corpus" / next(
        (tmp_path / "cache" / "stores" / "corpus").iterdir()).name, progress=False).source == str(path)


def test_open_corpus_reads_tsv_and_parquet(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setenv("JSARAG_CACHE", str(tmp_path / "cache"))
    tsv = tmp_path / "psgs.tsv"
    tsv.write_text('id\ttext\ttitle\n1\t"A ""quoted"" text"\tAaron\n2\tplain\t\n', encoding="utf-8")
    assert list(open_corpus(tsv, progress=False)) == [Passage("1", "Aaron", 'A "quoted" text'),
                                                      Passage("2", "", "plain")]
    parquet = tmp_path / "kb.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "title": ["T", None], "text": ["x", "y"]}), parquet)
    assert list(open_corpus(parquet, progress=False)) == [Passage("a", "T", "x"), Passage("b", "", "y")]
    bad = tmp_path / "bad.tsv"
    bad.write_text("id\ttext\ttitle\n1\tonly two\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.tsv:2: expected 3 tab-separated fields \(id, text, title\), got 2"):
        open_corpus(bad, progress=False)


def test_a_batch_of_empty_titles_reads_from_disk(tmp_path, small_batches):
    # Every title of the first batch is empty: its data buffer is empty (and lies nowhere in the file).
    records = [{"id": f"p{i}", "title": "" if i < 3 else "T", "text": f"text {i}"} for i in range(5)]
    build_corpus_store([("kb", numbered(records))], tmp_path / "store", progress=False)
    corpus = Corpus.open(tmp_path / "store")
    assert [corpus[i].title for i in range(5)] == ["", "", "", "T", "T"]


def test_split_store_sequence_behaviour(tmp_path, small_batches):
    corpus = Corpus([Passage("p1", "", "one"), Passage("p2", "", "two")])
    records = [{"id": f"q{i}", "question": f"Q{i}?", "answers": [f"A{i}", "alt"], "positive_ids": ["p1"] * (i % 2)}
               for i in range(8)]
    build_split_store([("dev.jsonl", numbered(records))], tmp_path / "dev", corpus, progress=False)
    split = Examples.open(tmp_path / "dev")  # list columns read from disk
    expected = [Example(f"q{i}", f"Q{i}?", (f"A{i}", "alt"), ("p1",) * (i % 2), "question") for i in range(8)]
    assert isinstance(split, Examples) and split.kind == "question" and len(split) == 8
    assert list(split) == expected and split == expected
    assert split[5] == expected[5] and split[-1] == expected[7]
    view = split[2:7]
    assert len(view) == 5 and list(view) == expected[2:7] and view[0] == expected[2]
    assert list(view[1:3]) == expected[3:5]
    assert split[::3] == expected[::3] and list(split[6:100]) == expected[6:] and len(split[5:2]) == 0
    with pytest.raises(IndexError):
        split[8]


@pytest.mark.parametrize(("records", "message"), [
    ([{"id": "q1", "question": "?", "answers": ["a"], "positive_ids": ["p9"]}],
     "dev.jsonl:1: field 'positive_ids': id 'p9' is not in corpus <memory>"),
    ([{"id": "q1", "question": "?", "answers": ["a"]}, {"id": "q2", "context": "U: hi", "answers": ["a"]}],
     "dev.jsonl:2: field 'context': expected 'question' like the first example at dev.jsonl:1; one source "
     "cannot mix questions and dialogue contexts"),
    ([{"id": "q1", "question": "?", "answers": ["a"]}, {"id": "q1", "question": "!", "answers": ["b"]}],
     "dev.jsonl:2: field 'id': duplicate id 'q1'; first used at dev.jsonl:1"),
])
def test_split_store_errors(tmp_path, records, message):
    corpus = Corpus([Passage("p1", "", "one")])
    with pytest.raises(DataError) as info:
        build_split_store([("dev.jsonl", numbered(records))], tmp_path / "dev", corpus, progress=False)
    assert str(info.value) == message and list(tmp_path.iterdir()) == []


def test_open_split_is_keyed_by_its_corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("JSARAG_CACHE", str(tmp_path / "cache"))
    record = {"id": "q1", "question": "?", "answers": ["a"], "positive_ids": ["p2"]}
    path = write_jsonl(tmp_path / "dev.jsonl", [record])
    with_p2 = Corpus([Passage("p1", "", "one"), Passage("p2", "", "two")])
    assert open_split(path, with_p2, progress=False)[0].positive_ids == ("p2",)
    # The same file against a corpus without p2 is checked again, not served from the first cache entry.
    with pytest.raises(DataError, match="id 'p2' is not in corpus"):
        open_split(path, Corpus([Passage("p1", "", "one")]), progress=False)
    stored = build_split_store([("dev", numbered([{"id": "q", "question": "?", "answers": ["a"]}]))],
                               tmp_path / "dev-store", with_p2, progress=False)
    assert len(open_split(tmp_path / "dev-store", with_p2, progress=False)) == len(stored) == 1
    with pytest.raises(DataError, match="was checked against another corpus"):
        open_split(tmp_path / "dev-store", Corpus([Passage("p1", "", "one")]), progress=False)


def test_write_dataset_writes_store_splits_and_summary(tmp_path):
    corpus = [Source("psgs.tsv", numbered(passages(4)))]
    train = [Source("train.json", numbered([{"id": "t1", "question": "Q?", "answers": ["A"],
                                              "positive_ids": ["doc-2"]}]))]
    summary = write_dataset(Converted(corpus, {"train": train}), tmp_path / "out", fmt="toy", progress=False)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["corpus", "dataset.json", "train.jsonl"]
    assert json.loads((out / "dataset.json").read_text()) == summary
    assert summary["corpus"]["passages"] == 4 and summary["splits"] == {"train": {"examples": 1, "kind": "question"}}
    assert summary["format"] == "toy" and summary["sources"] == ["psgs.tsv", "train.json"]
    assert Corpus.open(out / "corpus")[2] == Passage("doc-2", "Title 2", "passage number 2 é ✓")
    assert [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()] == [
        {"id": "t1", "question": "Q?", "answers": ["A"], "positive_ids": ["doc-2"]}]


def test_write_dataset_leaves_nothing_on_a_bad_row_and_refuses_a_used_folder(tmp_path):
    corpus = [Source("psgs.tsv", numbered(passages(4)))]
    train = [Source("train.json", numbered([{"id": "t1", "question": "Q?", "answers": ["A"]},
                                            {"id": "t2", "question": "Q?", "answers": []}]))]
    with pytest.raises(DataError, match="train.json:2: field 'answers'"):
        write_dataset(Converted(corpus, {"train": train}), tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="exists and is not empty"):
        write_dataset(Converted([Source("kb", numbered(passages(2)))]), tmp_path / "used", progress=False)
    assert [p.name for p in (tmp_path / "used").iterdir()] == ["notes.txt"]


def test_lone_surrogates_are_refused_with_their_line_and_field(tmp_path):
    # json.loads turns the escape "\ud800" into a lone surrogate, which has no UTF-8 encoding.
    bad = json.loads('{"id": "p2", "text": "half a pair \\ud800"}')
    with pytest.raises(DataError) as info:
        build_corpus_store([("kb", numbered([{"id": "p1", "text": "ok"}, bad]))], tmp_path / "s", progress=False)
    assert str(info.value) == "kb:2: field 'text': not valid Unicode: lone surrogate at character 12"
    question = json.loads('{"id": "q1", "question": "ok", "answers": ["\\udfff"]}')
    with pytest.raises(DataError, match="dev:1: field 'answers': not valid Unicode"):
        build_split_store([("dev", numbered([question]))], tmp_path / "d", None, progress=False)
    assert list(tmp_path.iterdir()) == []


def rss_file_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no /proc/self/status RssFile on this system")


def test_random_reads_do_not_map_the_store_into_memory(tmp_path):
    """Reading passages through a memory map would add the kernel's 64 KB fault-around per read to the
    process (~18 MB here, the whole file); reading them with pread adds nothing."""
    text = "word " * 120
    records = [{"id": f"p{i}", "title": "", "text": f"{i} {text}"} for i in range(30_000)]
    build_corpus_store([("kb", numbered(records))], tmp_path / "store", progress=False)
    corpus = Corpus.open(tmp_path / "store")
    rows = np.random.default_rng(0).integers(0, len(corpus), size=3000).tolist()
    corpus[0], corpus.row("p1")  # first use: batch headers
    before = rss_file_kib()
    assert [corpus[r].text.split()[0] for r in rows] == [str(r) for r in rows]
    assert [corpus.row(f"p{r}") for r in rows] == rows
    assert rss_file_kib() - before < 2048
