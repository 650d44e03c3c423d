"""Readers for DPR, MS MARCO and BEIR files: exact records from small fixtures written in each format
(tests/fixtures/formats/), roles, one-line errors naming file and line, and a round trip through the writer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from jsarag.data import DataError
from jsarag.data.formats import FORMATS, beir, dpr, msmarco, parse_sources

FIXTURES = Path(__file__).parent / "fixtures" / "formats"
DPR, MSMARCO, BEIR = FIXTURES / "dpr", FIXTURES / "msmarco", FIXTURES / "beir"


def records(source) -> list:
    return list(source.records)


def by_label(sources) -> dict:
    return {Path(source.label.removesuffix(" item")).name: source for source in sources}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def all_records(converted) -> None:
    for source in converted.corpus + [s for sources in converted.splits.values() for s in sources]:
        records(source)


# --- DPR -----------------------------------------------------------------------------------------


def dpr_fixture(*names: str):
    return dpr.read([(None, DPR / name) for name in names])


def test_dpr_corpus_is_read_like_dprs_csv_reader():
    (corpus,) = dpr_fixture("psgs_w100.tsv").corpus
    assert corpus.label == str(DPR / "psgs_w100.tsv")
    assert records(corpus) == [
        (2, {"id": "1", "title": "Aaron",
             "text": 'Aaron Aaron ( or ; "Ahärôn") is a prophet, high priest, and the brother of Moses.'}),
        (3, {"id": "2", "title": "Aaron",
             "text": "God at Sinai granted Aaron the priesthood for himself and his male descendants."}),
        (4, {"id": "3", "title": "Zürich",
             "text": "Zürich is the largest city in Switzerland and the capital of the canton of Zürich."}),
        (5, {"id": "4", "title": "Nobel Prize in Physics",
             "text": "The first Nobel Prize in Physics was awarded in 1901 to Wilhelm Conrad Röntgen, "
                     "for the discovery of X-rays."}),
        (6, {"id": "5", "title": "Mount Everest",
             "text": "Mount Everest is Earth's highest mountain above sea level, at 8,849 m."}),
    ]


def test_dpr_retriever_json_gives_positive_passage_ids():
    converted = dpr_fixture("psgs_w100.tsv", "biencoder-nq-dev.json", "biencoder-trivia-train.json")
    (dev,), (train,) = converted.splits["dev"], converted.splits["train"]
    assert dev.label == str(DPR / "biencoder-nq-dev.json") + " item"
    assert records(dev) == [
        (1, {"id": "biencoder-nq-dev-1", "question": "who got the first nobel prize in physics",
             "answers": ["Wilhelm Conrad Röntgen"], "positive_ids": ["4"]}),  # passage 4 twice: once
        (2, {"id": "biencoder-nq-dev-2", "question": "who was the brother of moses in the bible",
             "answers": ["Aaron", "Aaron the Levite"], "positive_ids": ["1", "2"]}),
        (3, {"id": "biencoder-nq-dev-3", "question": "what is the highest mountain in the world",
             "answers": ["Mount Everest"], "positive_ids": []}),  # no positive_ctxs: kept, no ids
    ]
    # TriviaQA's files name the passage psg_id; an int becomes the string psgs_w100.tsv uses.
    assert records(train) == [
        (1, {"id": "biencoder-trivia-train-1", "question": "Which Swiss city is the country's largest?",
             "answers": ["Zürich", "Zurich"], "positive_ids": ["3"]}),
    ]


def test_dpr_question_files_have_answers_and_no_passages():
    converted = dpr_fixture("psgs_w100.tsv", "nq-test.qa.csv", "NQ-open.dev.jsonl")
    assert records(converted.splits["test"][0]) == [
        (1, {"id": "nq-test-1", "question": "who got the first nobel prize in physics",
             "answers": ["Wilhelm Conrad Röntgen"], "positive_ids": []}),
        (2, {"id": "nq-test-2", "question": "what is the largest city in switzerland",
             "answers": ["Zürich", "Zurich"], "positive_ids": []}),
        (3, {"id": "nq-test-3", "question": "how tall is mount everest in metres",
             "answers": ["8,849 m", "8848"], "positive_ids": []}),
    ]
    assert records(converted.splits["dev"][0]) == [
        (1, {"id": "NQ-open.dev-1", "question": "who was the brother of moses", "answers": ["Aaron"],
             "positive_ids": []}),
        (2, {"id": "NQ-open.dev-2", "question": "when was the first nobel prize in physics awarded",
             "answers": ["1901", "10 December 1901"], "positive_ids": []}),
    ]


def test_dpr_roles_from_names_and_arguments(tmp_path):
    converted = dpr.read(parse_sources([str(p) for p in sorted(DPR.iterdir())]))
    assert [s.label for s in converted.corpus] == [str(DPR / "psgs_w100.tsv")]
    assert {split: sorted(Path(s.label.removesuffix(" item")).name for s in sources)
            for split, sources in converted.splits.items()} == {
        "dev": ["NQ-open.dev.jsonl", "biencoder-nq-dev.json"],
        "test": ["nq-test.qa.csv"],
        "train": ["biencoder-trivia-train.json"],
    }
    # ROLE=PATH wins over the name; the kind of question file still follows the extension.
    passages = shutil.copy(DPR / "psgs_w100.tsv", tmp_path / "wiki.txt")
    converted = dpr.read(parse_sources([f"corpus={passages}", f"train={DPR / 'nq-test.qa.csv'}"]))
    assert len(records(converted.corpus[0])) == 5
    assert records(converted.splits["train"][0])[0][1]["id"] == "nq-test-1"

    unnamed = shutil.copy(DPR / "nq-test.qa.csv", tmp_path / "questions.qa.csv")
    with pytest.raises(DataError, match=r"questions\.qa\.csv: cannot tell the split .* train=PATH"):
        dpr.read([(None, DPR / "psgs_w100.tsv"), (None, Path(unnamed))])
    with pytest.raises(DataError, match="unknown role 'qrels' for dpr"):
        dpr.read([(None, DPR / "psgs_w100.tsv"), ("qrels", DPR / "nq-test.qa.csv")])
    with pytest.raises(DataError, match="no corpus file"):
        dpr.read([(None, DPR / "nq-test.qa.csv")])
    with pytest.raises(DataError, match="missing.tsv: file not found"):
        dpr.read([(None, tmp_path / "missing.tsv")])


def test_dpr_corpus_columns_by_header_name(tmp_path):
    reordered = write(tmp_path / "psgs.tsv", 'id\ttitle\ttext\n7\tAaron\t"He was ""the"" brother."\n')
    assert records(dpr.read([(None, reordered)]).corpus[0]) == [
        (2, {"id": "7", "title": "Aaron", "text": 'He was "the" brother.'})
    ]
    no_title = write(tmp_path / "bad_header.tsv", "id\ttext\n1\tx\n")
    with pytest.raises(DataError, match=r"bad_header\.tsv:1: field 'title': missing column in the header"):
        records(dpr.read([(None, no_title)]).corpus[0])


@pytest.mark.parametrize(
    ("name", "text", "error"),
    [
        ("psgs.tsv", 'id\ttext\ttitle\n1\t"fine"\tA\n2\tno title here\n',
         r"psgs\.tsv:3: expected 3 tab-separated fields, got 2"),
        ("psgs.tsv", b"id\ttext\ttitle\n1\tok\tA\n2\t\xff\tB\n", r"psgs\.tsv:3: not valid UTF-8"),
        ("nq-dev.qa.csv", "q one\t['a']\nq two\t[a b c]\n", r"nq-dev\.qa\.csv:2: field 'answers': not a Python list"),
        ("nq-dev.qa.csv", "q one\t['a']\tcolumn three\n", r"nq-dev\.qa\.csv:1: expected 2 tab-separated fields"),
        ("nq-dev.qa.csv", "q one\t__import__('os').system('true')\n", r"nq-dev\.qa\.csv:1: field 'answers'"),
        ("nq-dev.json", '[{"question": "q", "answers": ["a"]}, {"answers": ["a"]}]',
         r"nq-dev\.json item:2: field 'question': missing"),
        ("nq-dev.json", '[{"question": "q", "answers": ["a"], "positive_ctxs": [{"title": "t", "text": "x"}]}]',
         r"nq-dev\.json item:1: field 'positive_ctxs': context 0 has no passage_id or psg_id"),
        ("nq-dev.json", '[{"question": "q", "answers": ["a"]}, {"question": ', r"nq-dev\.json item:2: invalid JSON"),
        ("nq-dev.json", '{"question": "q", "answers": ["a"]}', r"nq-dev\.json item: expected a JSON array"),
        ("NQ-open.dev.jsonl", '{"question": "q", "answer": ["a"]}\n{"question": "q2"}\n',
         r"NQ-open\.dev\.jsonl:2: field 'answer': missing"),
    ],
)
def test_dpr_malformed_rows_name_file_and_line(tmp_path, name, text, error):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        write(path, text)
    sources = [(None, path)] if name.endswith(".tsv") else [(None, DPR / "psgs_w100.tsv"), (None, path)]
    converted = dpr.read(sources)  # nothing is read yet: errors come while streaming
    with pytest.raises(DataError, match=error) as raised:
        all_records(converted)
    assert "\n" not in str(raised.value)


def test_dpr_wiki_prefixed_and_repeated_ids(tmp_path):
    path = write(tmp_path / "nq-dev.json", json.dumps([{
        "question": "q", "answers": ["a"],
        "positive_ctxs": [{"passage_id": "wiki:3"}, {"psg_id": 3}, {"passage_id": "12"}],
    }]))
    (split,) = dpr.read([(None, DPR / "psgs_w100.tsv"), (None, path)]).splits["dev"]
    assert records(split)[0][1]["positive_ids"] == ["3", "12"]


# --- MS MARCO ------------------------------------------------------------------------------------


def msmarco_fixture():
    return msmarco.read(parse_sources([str(p) for p in sorted(MSMARCO.iterdir())]))


def test_msmarco_collection_has_empty_titles():
    (corpus,) = msmarco_fixture().corpus
    assert records(corpus) == [
        (1, {"id": "0", "title": "", "text": "The presence of communication amid scientific minds was equally "
                                             "important to the success of the Manhattan Project as scientific "
                                             "intellect."}),
        (2, {"id": "7", "title": "", "text": "Manhattan Project. The Manhattan Project was a research and "
                                             "development undertaking during World War II that produced the "
                                             "first nuclear weapons."}),
        (3, {"id": "8", "title": "", "text": "In June 1942, the United States Army Corps of Engineersbegan the "
                                             "Manhattan Project- The secret name for the 2 atomic bombs."}),
        (4, {"id": "16", "title": "", "text": '"Corporation" is a legal entity: a company or group of people '
                                              "authorized to act as a single entity — recognized as such in law."}),
        (5, {"id": "49", "title": "", "text": "Crème brûlée takes about 40 minutes to bake at 150 °C, then at "
                                              "least 2 hours to chill."}),
    ]


def test_msmarco_queries_join_qrels_and_qna_answers(capsys):
    splits = msmarco_fixture().splits
    assert sorted(splits) == ["dev", "train"]
    # 597651's only answer is "No Answer Present.": skipped and counted.
    assert records(splits["train"][0]) == [
        (1, {"id": "1185869", "question": ")what was the immediate impact of the success of the manhattan project?",
             "answers": ["The immediate impact of the success of the manhattan project was the only cloud hanging "
                         "over the impressive achievement of the atomic researchers and engineers."],
             "positive_ids": ["0"]}),
        (2, {"id": "1102432", "question": ". what is a corporation?",
             "answers": ["A corporation is a company or group of people authorized to act as a single entity and "
                         "recognized as such in law."],
             "positive_ids": ["16"]}),
    ]
    assert "queries.train.tsv: 2 queries kept, 1 without an answer skipped" in capsys.readouterr().err
    # dev_v2.1.json has query_id before answers; qrels.dev.tsv is space-separated with a relevance-0 row.
    assert records(splits["dev"][0]) == [
        (1, {"id": "1185868", "question": "_________ justice is designed to repair the harm to victim, the community "
                                          "and the offender caused by the offender criminal act. question 19 options:",
             "answers": ["Restorative justice"], "positive_ids": ["16"]}),
        (2, {"id": "403613", "question": "how long to bake crème brûlée",
             "answers": ["About 40 minutes at 150 °C.", "40 minutes"], "positive_ids": ["49"]}),
    ]


def test_msmarco_roles(tmp_path):
    eval_queries = write(tmp_path / "queries.eval.tsv", "1102432\t. what is a corporation?\n")
    args = [f"corpus={MSMARCO / 'collection.tsv'}", f"answers={MSMARCO / 'train_v2.1.json'}",
            f"queries.dev={MSMARCO / 'queries.train.tsv'}", f"qrels.dev={MSMARCO / 'qrels.train.tsv'}",
            str(eval_queries)]
    splits = msmarco.read(parse_sources(args)).splits
    assert sorted(splits) == ["dev", "test"]  # eval is the test split
    assert [r["id"] for _, r in records(splits["dev"][0])] == ["1185869", "1102432"]
    assert records(splits["test"][0]) == [
        (1, {"id": "1102432", "question": ". what is a corporation?",
             "answers": ["A corporation is a company or group of people authorized to act as a single entity and "
                         "recognized as such in law."], "positive_ids": []}),
    ]

    collection = [(None, MSMARCO / "collection.tsv")]
    with pytest.raises(DataError, match=r"qrels\.dev\.tsv: qrels for split 'dev' but no queries file"):
        msmarco.read(collection + [(None, MSMARCO / "qrels.dev.tsv"), (None, MSMARCO / "dev_v2.1.json")])
    with pytest.raises(DataError, match="passage ranking has no answers: give the QnA v2.1 file"):
        msmarco.read(collection + [(None, MSMARCO / "queries.dev.tsv")])
    with pytest.raises(DataError, match="unknown role 'qrels' for msmarco"):
        msmarco.read(collection + [("qrels", MSMARCO / "qrels.dev.tsv")])
    with pytest.raises(DataError, match=r"top1000\.tsv: cannot tell what this file is"):
        msmarco.read(collection + [(None, write(tmp_path / "top1000.tsv", "1\t2\tq\tp\n"))])
    with pytest.raises(DataError, match=r"queries\.tsv: cannot tell the split"):
        msmarco.read(collection + [(None, write(tmp_path / "queries.tsv", "1\tq\n"))])


def test_msmarco_split_without_any_answer_is_an_error(tmp_path):
    unanswered = write(tmp_path / "queries.eval.tsv", "597651\twhat color is amber urine\n")
    converted = msmarco.read([(None, MSMARCO / "collection.tsv"), (None, unanswered),
                              (None, MSMARCO / "train_v2.1.json")])
    with pytest.raises(DataError, match=r"queries\.eval\.tsv: none of its 1 queries has an answer in .*train_v2"):
        records(converted.splits["test"][0])


@pytest.mark.parametrize(
    ("name", "text", "error"),
    [
        ("collection.tsv", "1\tfine\n2\tone\ttab too many\n", r"collection\.tsv:2: expected 2 tab-separated fields"),
        ("queries.dev.tsv", "1185868\tq\n\n403613\n", r"queries\.dev\.tsv:3: expected 2 tab-separated fields"),
        ("qrels.dev.tsv", "1185868\t0\t16\t1\n403613\t0\t49\n", r"qrels\.dev\.tsv:2: expected 4 fields"),
        ("qrels.dev.tsv", "1185868 0 16 yes\n", r"qrels\.dev\.tsv:1: field 'relevance': expected an integer"),
        ("dev_v2.1.json", '{"query_id": {"0": 1}, "query": {"0": "q"}}',
         r"dev_v2\.1\.json: field 'answers': no answers"),
        ("dev_v2.1.json", '{"answers": {"0": "a"}, "query_id": {"0": 1}}',
         r"dev_v2\.1\.json: field 'answers': row 0: expected a list"),
        ("dev_v2.1.json", '{"answers": {"0": ["a"]}, "query_id": {"1": 1}}',
         r"dev_v2\.1\.json: field 'query_id': row 0 has answers but no query_id"),
        ("dev_v2.1.json", '{"answers": {"0": ["a"]', r"dev_v2\.1\.json: invalid JSON"),
    ],
)
def test_msmarco_malformed_rows_name_file_and_line(tmp_path, name, text, error):
    files = {"collection.tsv": MSMARCO / "collection.tsv", "queries.dev.tsv": MSMARCO / "queries.dev.tsv",
             "qrels.dev.tsv": MSMARCO / "qrels.dev.tsv", "dev_v2.1.json": MSMARCO / "dev_v2.1.json"}
    files[name] = write(tmp_path / name, text)
    converted = msmarco.read([(None, path) for path in files.values()])
    with pytest.raises(DataError, match=error):
        all_records(converted)


# --- BEIR ----------------------------------------------------------------------------------------


def test_beir_corpus_from_the_dataset_folder():
    (corpus,) = beir.read([(None, BEIR)]).corpus
    assert corpus.label == str(BEIR / "corpus.jsonl")
    assert records(corpus) == [
        (1, {"id": "12", "title": "Scott Derrickson",
             "text": "Scott Derrickson (born July 16, 1966) is an American director, screenwriter and producer."}),
        (2, {"id": "25", "title": "Ed Wood",
             "text": "Edward Davis Wood Jr. (October 10, 1924 – December 10, 1978) was an American filmmaker, actor, "
                     "writer, producer, and director."}),
        (3, {"id": "31", "title": "Zürich",
             "text": "Zürich is the largest city in Switzerland and the capital of the canton of Zürich."}),
        (4, {"id": "47", "title": "", "text": 'The "Kiss Me Kate" revival opened on Broadway in 1999.'}),
    ]


def test_beir_splits_are_the_queries_their_qrels_name(capsys):
    splits = beir.read([(None, BEIR)]).splits
    assert sorted(splits) == ["dev", "test"]
    assert [s.label for s in splits["test"]] == [str(BEIR / "queries.jsonl")]
    # Score 0 is not a positive; a query without metadata answers is skipped; a qrels query missing
    # from queries.jsonl is counted.
    assert records(splits["test"][0]) == [
        (1, {"id": "5a8b57f25542995d1e6f1371", "question": "Were Scott Derrickson and Ed Wood of the same nationality?",
             "answers": ["yes"], "positive_ids": ["12", "25"]}),
        (3, {"id": "5ab3b0bf5542992ade7c6e39", "question": 'When did the "Kiss Me Kate" revival open on Broadway?',
             "answers": ["1999", "in 1999"], "positive_ids": ["47"]}),
    ]
    err = capsys.readouterr().err
    assert "qrels/test.tsv: 2 queries kept, 1 without an answer skipped, 1 not in" in err
    assert records(splits["dev"][0]) == [
        (2, {"id": "5a8c7595554299585d9e36b6",
             "question": "Which city is the largest in Switzerland, Zürich or Geneva?",
             "answers": ["Zürich"], "positive_ids": ["31"]}),
    ]


def test_beir_roles_of_single_files(tmp_path):
    # Names that say nothing: .jsonl by content (a corpus record has a title), qrels by ROLE=PATH.
    docs = str(shutil.copy(BEIR / "corpus.jsonl", tmp_path / "docs.jsonl"))
    topics = str(shutil.copy(BEIR / "queries.jsonl", tmp_path / "topics.jsonl"))
    judged = str(shutil.copy(BEIR / "qrels" / "dev.tsv", tmp_path / "judged.tsv"))
    converted = beir.read(parse_sources([docs, topics, f"qrels.train={judged}", str(BEIR / "qrels" / "test.tsv")]))
    assert [s.label for s in converted.corpus] == [docs]
    assert sorted(converted.splits) == ["test", "train"]
    assert [r["id"] for _, r in records(converted.splits["train"][0])] == ["5a8c7595554299585d9e36b6"]

    with pytest.raises(DataError, match=r"judged\.tsv: cannot tell the split"):
        beir.read([(None, Path(docs)), (None, Path(topics)), (None, Path(judged))])
    with pytest.raises(DataError, match="expected one queries file"):
        beir.read([(None, Path(docs)), (None, BEIR / "qrels" / "dev.tsv")])
    with pytest.raises(DataError, match="unknown role 'answers' for beir"):
        beir.read([("answers", Path(docs))])
    with pytest.raises(DataError, match="no corpus file"):
        beir.read([(None, Path(topics))])


def test_beir_split_without_answers_is_an_error(tmp_path):
    write(tmp_path / "corpus.jsonl", '{"_id": "d1", "title": "", "text": "Aspirin thins the blood."}\n')
    write(tmp_path / "queries.jsonl", '{"_id": "q1", "text": "does aspirin thin the blood", "metadata": {}}\n')
    write(tmp_path / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    (split,) = beir.read([(None, tmp_path)]).splits["test"]
    with pytest.raises(DataError, match=r"qrels/test\.tsv: none of its 1 queries has an answer .*metadata"):
        records(split)


@pytest.mark.parametrize(
    ("name", "text", "error"),
    [
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1 d1 1\n",
         r"qrels/test\.tsv:3: expected 3 tab-separated fields"),
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t0.5\n", r"qrels/test\.tsv:2: field 'score'"),
        ("corpus.jsonl", '{"_id": "d1", "text": "x"}\n{"title": "t", "text": "y"}\n', r"corpus\.jsonl:2: field '_id'"),
        ("queries.jsonl", '{"_id": "q1", "metadata": {"answer": "a"}}\n', r"queries\.jsonl:1: field 'text': missing"),
        ("queries.jsonl", '{"_id": "q1", "text": "q", \n', r"queries\.jsonl:1: invalid JSON"),
    ],
)
def test_beir_malformed_rows_name_file_and_line(tmp_path, name, text, error):
    write(tmp_path / "corpus.jsonl", '{"_id": "d1", "title": "T", "text": "x"}\n')
    write(tmp_path / "queries.jsonl", '{"_id": "q1", "text": "q", "metadata": {"answer": "a"}}\n')
    write(tmp_path / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    write(tmp_path / name, text)
    converted = beir.read([(None, tmp_path)])
    with pytest.raises(DataError, match=error):
        all_records(converted)


# --- round trip through the writer ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "sources", "splits"),
    [
        ("dpr", [str(p) for p in sorted(DPR.iterdir())], {"train": 1, "dev": 5, "test": 3}),
        ("msmarco", [str(p) for p in sorted(MSMARCO.iterdir())], {"train": 2, "dev": 2}),
        ("beir", [str(BEIR)], {"dev": 1, "test": 2}),
    ],
)
def test_round_trip_through_the_writer(tmp_path, fmt, sources, splits):
    from jsarag.data.convert import write_dataset
    from jsarag.data.store import Corpus

    out = tmp_path / fmt
    write_dataset(FORMATS[fmt](parse_sources(sources)), out, fmt=fmt, progress=False)
    corpus = Corpus.open(out / "corpus")
    assert len(corpus) == {"dpr": 5, "msmarco": 5, "beir": 4}[fmt]
    assert sorted(p.name for p in out.glob("*.jsonl")) == sorted(f"{split}.jsonl" for split in splits)
    for split, count in splits.items():
        lines = (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == count
        for example in map(json.loads, lines):
            assert example["answers"] and all(corpus.has(pid) for pid in example["positive_ids"])
