"""Readers for KILT, OR-QuAC (ORConvQA) and DoQA on small fixture files written in each format."""

import json
from pathlib import Path

import pytest

from jsarag.data import DataError
from jsarag.data.convert import convert
from jsarag.data.formats import FORMATS, Converted, parse_sources
from jsarag.data.store import is_store

FIXTURES = Path(__file__).parent / "fixtures" / "formats"
KILT, ORQUAC, DOQA = FIXTURES / "kilt", FIXTURES / "orquac", FIXTURES / "doqa"
C = "C_0aaa843df0bd467b96e5a496fc0b033d_1"


def read(fmt: str, *args: str | Path) -> Converted:
    return FORMATS[fmt](parse_sources([str(a) for a in args]))


def records(converted: Converted) -> tuple[list, dict]:
    """Every stream, corpus first (as the writer reads them): ([(label, line, record)], {split: [...]})."""
    corpus = [(Path(s.label).name, line, r) for s in converted.corpus for line, r in s.records]
    splits = {split: [(Path(s.label).name, line, r) for s in sources for line, r in s.records]
              for split, sources in converted.splits.items()}
    return corpus, splits


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# --- KILT ----------------------------------------------------------------------------------------


def test_kilt_paragraph_passages_and_provenance_positives():
    corpus, splits = records(read("kilt", KILT / "kilt_knowledgesource.json", KILT / "nq-dev-kilt.jsonl",
                                  KILT / "wow-train-kilt.jsonl"))
    ks = "kilt_knowledgesource.json"
    assert corpus == [
        # paragraph 0 (the title), the Section:::: heading and the blank paragraph are no passages
        (ks, 1, {"id": "1101759-1", "title": "Email marketing", "text": "Email marketing is the act of sending a "
                 "commercial message, typically to a group of people, using email."}),
        (ks, 1, {"id": "1101759-3", "title": "Email marketing",
                 "text": "Ray Tomlinson sent the first e-mail in 1971."}),
        (ks, 1, {"id": "1101759-4", "title": "Email marketing", "text": "- Opt-in email lists"}),
        (ks, 2, {"id": "42-1", "title": "Zürich", "text": "Zürich is the largest city in Switzerland."}),
        (ks, 2, {"id": "42-3", "title": "Zürich", "text": "In Swiss German the city is called Züri."}),
    ]
    assert splits == {
        "dev": [
            # a range 1..3 covers the heading 2; answers are distinct; provenance order is kept
            ("nq-dev-kilt.jsonl", 1, {"id": "-3290814144789249484", "question": "who sent the first e-mail",
                                      "answers": ["Ray Tomlinson"], "positive_ids": ["1101759-3", "1101759-1"]}),
            # the title paragraph 0 and the heading 2 are dropped; the blank answer too
            ("nq-dev-kilt.jsonl", 2, {"id": "7", "question": "what do people in Zürich call their city",
                                      "answers": ["Züri", "Zueri"], "positive_ids": ["42-3"]}),
            # line 3 has no answer and is skipped; -1 and missing paragraph ids give no positives
            ("nq-dev-kilt.jsonl", 4, {"id": "q4", "question": "is Zürich a city", "answers": ["yes"],
                                      "positive_ids": []}),
        ],
        "train": [
            ("wow-train-kilt.jsonl", 1, {
                "id": "e2c7b9a4-1",
                "context": "User: I love Zürich.\nAgent: It is the largest city in Switzerland!\n"
                           "User: What do the locals call it?",
                "answers": ["In Swiss German they call it Züri."], "positive_ids": ["42-3"]}),
        ],
    }


def test_kilt_roles_from_names_contents_and_arguments(tmp_path):
    ks = tmp_path / "wiki_pages.jsonl"  # neither a known name nor a split word: recognised by its content
    ks.write_bytes((KILT / "kilt_knowledgesource.json").read_bytes())
    converted = read("kilt", ks, f"train={KILT / 'nq-dev-kilt.jsonl'}")
    assert [s.label for s in converted.corpus] == [str(ks)]
    assert list(converted.splits) == ["train"]
    other = write_jsonl(tmp_path / "questions.jsonl", [{"id": "1", "input": "q", "output": [{"answer": "a"}]}])
    with pytest.raises(DataError, match=r"questions\.jsonl: cannot tell .* ROLE=PATH"):
        read("kilt", other)
    with pytest.raises(DataError, match="unknown role 'qrels'"):
        read("kilt", f"qrels={KILT / 'nq-dev-kilt.jsonl'}")


def test_kilt_test_file_without_answers_is_an_error():
    converted = read("kilt", KILT / "kilt_knowledgesource.json", KILT / "nq-test_without_answers-kilt.jsonl")
    with pytest.raises(DataError) as err:
        records(converted)
    assert str(err.value).startswith(f"{KILT / 'nq-test_without_answers-kilt.jsonl'}:1: field 'output': missing")


def test_kilt_malformed_rows_name_file_and_line(tmp_path):
    ks = write_jsonl(tmp_path / "kilt_knowledgesource.json", [
        {"wikipedia_id": "1", "wikipedia_title": "A", "text": ["A", "fine"]},
        {"wikipedia_id": "2", "wikipedia_title": "B", "text": "not a list"},
    ])
    with pytest.raises(DataError, match=r"kilt_knowledgesource\.json:2: field 'text': expected a list"):
        records(read("kilt", ks))
    task = write_jsonl(tmp_path / "nq-dev-kilt.jsonl", [
        {"id": "1", "input": "q", "output": [{"answer": "a"}]},
        {"id": "2", "input": ["not", "text"], "output": [{"answer": "a"}]},
    ])
    with pytest.raises(DataError, match=r"nq-dev-kilt\.jsonl:2: field 'input': expected a string"):
        records(read("kilt", task))
    (tmp_path / "broken-dev-kilt.jsonl").write_text('{"id": "1", "input": "q"\n')
    with pytest.raises(DataError, match=r"broken-dev-kilt\.jsonl:1: invalid JSON"):
        records(read("kilt", tmp_path / "broken-dev-kilt.jsonl"))


# --- OR-QuAC -------------------------------------------------------------------------------------


def test_orquac_blocks_and_dialogue_examples():
    corpus, splits = records(read("orquac", *sorted(ORQUAC.iterdir())))
    assert [(name, line, r["id"], r["title"]) for name, line, r in corpus] == [
        ("all_blocks.txt", 1, f"{C}_0", "Anna Politkovskaya"),
        ("all_blocks.txt", 2, f"{C}_1", "Anna Politkovskaya"),
        ("all_blocks.txt", 3, "59087@2", "Zürich"),
    ]
    assert corpus[1][2]["text"].endswith("“Justice delayed”, they wrote.")
    assert splits["dev"] == [
        # no qrels entry: no positives
        ("dev.txt", 1, {"id": "C_ffff_0_q#0", "context": "User: Where is Zürich?", "answers": ["in Switzerland"],
                        "positive_ids": []}),
    ]
    first = "User: What did Anna Politkovskaya do?\nAgent: She wrote for Novaya Gazeta.\n"
    assert splits["train"] == [
        ("train.txt", 1, {"id": f"{C}_q#0", "context": "User: What did Anna Politkovskaya do?",
                          "answers": ["She wrote for Novaya Gazeta."], "positive_ids": [f"{C}_0"]}),
        ("train.txt", 2, {"id": f"{C}_q#1", "context": first + "User: What did her colleagues do?",
                          "answers": ["protested that the case was not closed."], "positive_ids": [f"{C}_1"]}),
        # line 3 (CANNOTANSWER) is skipped but stays in the later history
        ("train.txt", 4, {"id": f"{C}_q#3",
                          "context": first + "User: What did her colleagues do?\n"
                                             "Agent: protested that the case was not closed.\n"
                                             "User: Did she have children?\nAgent: CANNOTANSWER\n"
                                             "User: What did they write?",
                          "answers": ["“Justice delayed”"], "positive_ids": [f"{C}_1", f"{C}_0"]}),
    ]


def test_orquac_roles_and_missing_qrels(tmp_path):
    converted = read("orquac", f"corpus={ORQUAC / 'all_blocks.txt'}", f"qrels={ORQUAC / 'qrels.txt'}",
                     f"test={ORQUAC / 'dev.txt'}")
    assert list(converted.splits) == ["test"] and len(converted.corpus) == 1
    with pytest.raises(DataError, match=r"train\.txt: give one qrels\.txt"):
        read("orquac", ORQUAC / "all_blocks.txt", ORQUAC / "train.txt")
    with pytest.raises(DataError, match=r"passages\.jsonl: cannot tell what this file is"):
        read("orquac", tmp_path / "passages.jsonl")


def test_orquac_malformed_rows_name_file_and_line(tmp_path):
    rows = [json.loads(line) for line in (ORQUAC / "train.txt").read_text(encoding="utf-8").splitlines()]
    rows[1]["history"][0]["answer"] = "not an object"
    train = write_jsonl(tmp_path / "train.txt", rows)
    converted = read("orquac", ORQUAC / "all_blocks.txt", ORQUAC / "qrels.txt", train)
    with pytest.raises(DataError, match=r"train\.txt:2: field 'history\[0\]\.answer': expected an object"):
        records(converted)
    (tmp_path / "qrels.txt").write_text('{"q": [1, 2]}')
    converted = read("orquac", ORQUAC / "all_blocks.txt", tmp_path / "qrels.txt", ORQUAC / "dev.txt")
    with pytest.raises(DataError, match=r"qrels\.txt: field 'q': expected an object of block ids"):
        records(converted)


# --- DoQA ----------------------------------------------------------------------------------------


def test_doqa_contexts_as_passages_and_turns_as_dialogue_examples():
    corpus, splits = records(read("doqa", *sorted(DOQA.iterdir())))
    train, test = "doqa-cooking-train-v2.1.json", "doqa-movies-test-v2.1.json"
    assert corpus == [
        # CANNOTANSWER is stripped; paragraph C_3_0 repeats C_1_0's context and gives no passage
        (train, 1, {"id": "C_1_0", "title": "How do I keep bananas from turning brown?",
                    "text": "Add lemon juice to the cut bananas; the acid slows the browning. "
                            "Keep them in the fridge."}),
        (train, 2, {"id": "C_2_0", "title": "Crème brûlée without a torch?",
                    "text": "Put the ramekins under a very hot grill for 2–3 minutes until the sugar melts."}),
        (test, 1, {"id": "C_9_0", "title": "Why is Léon called “The Professional” in the US?",
                   "text": "The US release was retitled The Professional because the distributor thought Léon "
                           "meant nothing to American audiences."}),
    ]
    first = "User: How can I stop sliced bananas browning?"
    assert splits == {
        "train": [
            (train, 1, {"id": "C_1_0_q#0", "context": first, "answers": ["Add lemon juice to the cut bananas"],
                        "positive_ids": ["C_1_0"]}),
            # turn 2 (CANNOTANSWER) is skipped, and kept in the history
            (train, 3, {"id": "C_1_0_q#2",
                        "context": f"{first}\nAgent: Add lemon juice to the cut bananas\n"
                                   "User: Does freezing them help?\nAgent: CANNOTANSWER\nUser: Anything else?",
                        "answers": ["Keep them in the fridge."], "positive_ids": ["C_1_0"]}),
            # empty "answers": orig_answer
            (train, 4, {"id": "C_2_0_q#0", "context": "User: Can I use the grill?",
                        "answers": ["Put the ramekins under a very hot grill"], "positive_ids": ["C_2_0"]}),
            # a repeated context points at the passage of its first paragraph
            (train, 5, {"id": "C_3_0_q#0", "context": "User: Is lemon juice the trick?",
                        "answers": ["the acid slows the browning"], "positive_ids": ["C_1_0"]}),
        ],
        "test": [
            # several references: distinct, CANNOTANSWER left out
            (test, 1, {"id": "C_9_0_q#0", "context": "User: Why the new title?",
                       "answers": ["the distributor thought Léon meant nothing to American audiences"],
                       "positive_ids": ["C_9_0"]}),
        ],
    }


def test_doqa_roles(tmp_path):
    converted = read("doqa", f"dev={DOQA / 'doqa-movies-test-v2.1.json'}")
    assert list(converted.splits) == ["dev"] and len(converted.corpus) == 1
    with pytest.raises(DataError, match=r"doqa\.json: cannot tell the split"):
        read("doqa", tmp_path / "doqa.json")


def test_doqa_malformed_records_name_file_and_number(tmp_path):
    data = json.loads((DOQA / "doqa-cooking-train-v2.1.json").read_text(encoding="utf-8"))
    del data["data"][0]["paragraphs"][0]["qas"][2]["question"]
    bad = tmp_path / "doqa-cooking-dev-v2.1.json"
    bad.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DataError, match=r"doqa-cooking-dev-v2\.1\.json:3: field 'paragraph 'C_1_0': "
                                        r"qas\[2\]\.question': expected a non-empty string"):
        records(read("doqa", bad))
    bad.write_text('{"data": [{"title": "t", "paragraphs": [')
    with pytest.raises(DataError, match=r"doqa-cooking-dev-v2\.1\.json: invalid JSON") as raised:
        records(read("doqa", bad))
    assert "\n" not in str(raised.value)  # ijson's own message goes on to quote the file


# --- round trip through the writer ---------------------------------------------------------------


@pytest.mark.parametrize("fmt, sources, splits", [
    ("kilt", [KILT / "kilt_knowledgesource.json", KILT / "nq-dev-kilt.jsonl", KILT / "wow-train-kilt.jsonl"],
     {"dev": 3, "train": 1}),
    ("orquac", sorted(ORQUAC.iterdir()), {"dev": 1, "train": 3}),
    ("doqa", sorted(DOQA.iterdir()), {"test": 1, "train": 4}),
])
def test_convert_writes_a_corpus_store_and_split_files(tmp_path, fmt, sources, splits):
    out = tmp_path / "out"
    summary = convert(fmt, [str(s) for s in sources], out, progress=False)
    assert is_store(out / "corpus")
    assert {split: info["examples"] for split, info in summary["splits"].items()} == splits
    assert all(info["kind"] == ("question" if fmt == "kilt" and split == "dev" else "context")
               for split, info in summary["splits"].items())
    for split, count in splits.items():
        lines = (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == count
