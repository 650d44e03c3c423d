"""Property-based fuzzing of everything that reads user input: the corpus and split loaders (files of
random bytes, random JSON lines, records with random field values) and the config loader (random YAML
text, random dotted overrides). Every input is either accepted or refused with one of
``jsarag.errors.USER_ERRORS`` (a one-line message); any other exception is a bug.

Each test runs ``CASES`` generated inputs (printed with ``-s``); the whole file takes ~30 s on 2 cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from jsarag.config import Config, load_config
from jsarag.configtools import to_dict
from jsarag.data import Corpus, load_examples, open_corpus, open_split
from jsarag.data.convert import write_dataset
from jsarag.data.formats import Converted, Source
from jsarag.errors import USER_ERRORS

CASES = int(os.environ.get("JSARAG_FUZZ_CASES", "150"))
RUN = {"count": 0}


def fuzz(*found: dict, **strategies):
    """A test of ``CASES`` generated inputs (and the ``found`` ones, crashes the fuzzer once found) that
    checks (and prints) how many ran."""
    def decorate(check):
        for case in found:
            check = example(**case)(check)
        run = settings(max_examples=CASES, deadline=None, database=None,
                       suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])(
            given(**strategies)(check))

        def test():
            RUN["count"] = 0
            run()
            print(f"{check.__name__}: {RUN['count']} cases")
            assert RUN["count"] >= CASES

        test.__name__, test.__doc__ = check.__name__, check.__doc__
        return test
    return decorate

# --- strategies -----------------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12) | st.sampled_from(["", " ", "\t", "p1", "p2", "q", "\ud7ff", "a\x00b"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
texts = st.sampled_from(["p1", "p2", "x", " ", ""]) | st.text(max_size=8)
field_values = texts | json_values | st.lists(texts, max_size=3)

passage_records = st.fixed_dictionaries({}, optional={"id": field_values, "text": field_values,
                                                      "title": field_values, "extra": field_values})
example_records = st.fixed_dictionaries({}, optional={
    "id": field_values, "question": field_values, "context": field_values, "answers": field_values,
    "positive_ids": field_values | st.lists(st.sampled_from(["p1", "p2", "p3"]), max_size=3)})


def records(schema):
    return st.lists(schema | json_values, min_size=0, max_size=6)


def _line(value) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=True)
    except (ValueError, TypeError):  # a lone surrogate in a key
        return json.dumps(value, ensure_ascii=True, allow_nan=True)


def file_bytes(schema):
    """Raw bytes, or JSONL of random records, sometimes with a damaged line."""
    jsonl = records(schema).map(lambda rs: "\n".join(_line(r) for r in rs).encode("utf-8", "surrogatepass"))
    damaged = st.tuples(jsonl, st.binary(max_size=16)).map(lambda t: t[0] + b"\n" + t[1])
    return st.binary(max_size=200) | jsonl | damaged


# --- helpers --------------------------------------------------------------------------------------


@contextlib.contextmanager
def scratch():
    """A fresh folder per case, and the store cache inside it (a case never reuses another's store)."""
    RUN["count"] += 1
    with tempfile.TemporaryDirectory() as folder:
        old = os.environ.get("JSARAG_CACHE")
        os.environ["JSARAG_CACHE"] = str(Path(folder) / "cache")
        try:
            yield Path(folder)
        finally:
            if old is None:
                del os.environ["JSARAG_CACHE"]
            else:
                os.environ["JSARAG_CACHE"] = old


def accepted_or_refused(fn, *args, **kwargs):
    """``fn``'s result, or None when it refuses the input with a user error (one line)."""
    try:
        return fn(*args, **kwargs)
    except USER_ERRORS as err:
        assert len(str(err).splitlines()) == 1, f"a user error is one line: {err!r}"
        return None


CORPUS = [{"id": "p1", "title": "One", "text": "first passage"}, {"id": "p2", "text": "second passage"}]


# --- the data loaders -----------------------------------------------------------------------------


@fuzz({"data": b"", "suffix": ".parquet"}, {"data": b"id\ttext\n\xff\t\xfe\n", "suffix": ".tsv"},
      data=file_bytes(passage_records), suffix=st.sampled_from([".jsonl", ".tsv", ".parquet", ".txt"]))
def test_open_corpus_on_random_files(data, suffix):
    with scratch() as folder:
        path = folder / f"corpus{suffix}"
        path.write_bytes(data)
        corpus = accepted_or_refused(open_corpus, path, progress=False)
        if corpus is not None:
            assert all(p.id.strip() and p.text.strip() for p in corpus)


@fuzz(data=file_bytes(example_records), suffix=st.sampled_from([".jsonl", ".tsv", ".parquet"]),
       with_corpus=st.booleans())
def test_open_split_on_random_files(data, suffix, with_corpus):
    with scratch() as folder:
        corpus = Corpus.from_records(CORPUS) if with_corpus else None
        path = folder / f"train{suffix}"
        path.write_bytes(data)
        split = accepted_or_refused(open_split, path, corpus, progress=False)
        if split is not None:
            assert len(split) >= 1 and all(e.answers for e in split)


@fuzz(passages=records(passage_records), examples=records(example_records))
def test_records_loaders(passages, examples):
    RUN["count"] += 1
    corpus = accepted_or_refused(Corpus.from_records, passages)
    accepted_or_refused(load_examples, examples, corpus)


@fuzz(passages=records(passage_records), train=records(example_records),
       extra_split=st.sampled_from(["dev", "test", "valid"]), dev=records(example_records))
def test_write_dataset(passages, train, extra_split, dev):
    with scratch() as folder:
        converted = Converted(corpus=[Source("corpus", enumerate(passages, 1))],
                              splits={"train": [Source("train", enumerate(train, 1))],
                                      extra_split: [Source(extra_split, enumerate(dev, 1))]})
        summary = accepted_or_refused(write_dataset, converted, folder / "out", progress=False)
        if summary is None:
            assert not (folder / "out").exists(), "a refused conversion leaves nothing"
            assert [p.name for p in folder.iterdir()] in ([], ["cache"])


# --- the config loader ----------------------------------------------------------------------------


def _dotted(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        out += _dotted(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return out


KEYS = _dotted(to_dict(Config()))
SECTIONS = sorted({k.rsplit(".", 1)[0] for k in KEYS if "." in k})
key_names = st.sampled_from(KEYS + SECTIONS + ["base", "nope", "train.nope", "data.corpus.x", ""])
override_values = (st.sampled_from(["0", "-1", "1", "1e-5", "-1e-5", "nan", "inf", "-inf", "1e400", "null",
                                    "true", "[]", "[1, 2]", "[0.9, 1.0]", "{a: 1}", "x", "", "[", "0.5",
                                    "2", "concat", "jsa", "vrag", "bf16"])
                   | st.integers(-10, 10**20).map(str) | st.floats().map(str) | st.text(max_size=10))
overrides = st.lists(st.tuples(key_names, override_values).map("=".join) | st.text(max_size=12), max_size=4)


def _nested(dotted: str, value) -> dict:
    node: dict = {}
    root = node
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return root


yaml_trees = st.lists(st.tuples(key_names, json_values), max_size=4).map(
    lambda items: [_nested(k, v) for k, v in items])


def _yaml_text(trees: list[dict]) -> str:
    merged: dict = {}
    for tree in trees:
        merged.update(tree)
    return yaml.safe_dump(merged, allow_unicode=False)


yaml_texts = (yaml_trees.map(_yaml_text) | st.text(max_size=80)
              | st.sampled_from(["", "---", "[1, 2]", "base: base.yaml", "base: 3", "train: {steps: !!python/none}",
                                 "a: &x [*x]", "optim: {betas: [1, 2, 3]}", "\t", "%YAML 9.9\n---\n"]))


@fuzz({"text": "{}\n", "extra": ["\n"]}, {"text": "{}\n", "extra": ["generator.lora.target_modules=["]},
      {"text": "optim: {lr_prior: .nan}", "extra": ["train.steps=-1"]},
      text=yaml_texts, extra=overrides)
def test_load_config_on_random_yaml_and_overrides(text, extra):
    with scratch() as folder:
        path = folder / "config.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        cfg = accepted_or_refused(load_config, path, extra)
        if cfg is not None:
            assert isinstance(cfg, Config)
