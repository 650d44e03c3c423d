"""End-to-end tests of the ``jsarag`` command line, run as real subprocesses.

Every command runs as ``python -m jsarag ...`` with the tiny random models of ``configs/tiny.yaml``,
offline, with a private model cache (``JSARAG_CACHE``) so that nothing touches ``~/.cache``.

The expensive commands (index builds, the six trainings, eval/plot/ask on a trained run) are started
in the background as soon as the session begins, two at a time, and each test waits only for the
commands it checks; cheap commands (help, user mistakes) run in the foreground meanwhile. Only the
jobs needed by the selected tests are started, so ``-k`` keeps a run short.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import queue
import subprocess
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
STEPS = 4  # train.steps in tiny.yaml
MAX_EVAL = 8  # data.max_eval_examples in tiny.yaml
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIMEOUT = 600  # seconds for any one command
BACKGROUND_SLOTS = 2  # commands running at once in the background (the machine has 2 cores)

# (test id, overrides, expected estimator settings in the saved config.yaml)
VARIANTS = {
    "rag_sequence": (["estimator.name=rag_sequence"], {"name": "rag_sequence"}),
    "rag_token": (["estimator.name=rag_token"], {"name": "rag_token"}),
    "vrag_exact": (["estimator.name=vrag"], {"name": "vrag", "vrag.mode": "exact"}),
    "vrag_sampled": (["estimator.name=vrag", "estimator.vrag.mode=sampled"],
                     {"name": "vrag", "vrag.mode": "sampled"}),
    "jsa": (["estimator.name=jsa"], {"name": "jsa", "jsa.chain_cache": False, "jsa.reduction": "sum"}),
    "jsa_cache_mean": (["estimator.name=jsa", "estimator.jsa.chain_cache=true", "estimator.jsa.reduction=mean"],
                       {"name": "jsa", "jsa.chain_cache": True, "jsa.reduction": "mean"}),
}
FOLLOW_UP_VARIANT = "jsa"  # eval / plot / ask / model loading use this run
EXISTING_RUN_VARIANT = "rag_token"  # nothing else touches this run, so its files must stay as they are

QUESTION = "Who was Nikola Tesla?"


# ---- running commands -------------------------------------------------------------------------------
@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return (f"$ jsarag {' '.join(self.args)}\nexit code {self.returncode}\n"
                f"--- stdout (tail) ---\n{self.stdout[-3000:]}\n--- stderr (tail) ---\n{self.stderr[-3000:]}")


_RUNNING: set[subprocess.Popen] = set()
_RUNNING_LOCK = threading.Lock()


def run_cli(env: dict[str, str], *args: object, cwd: Path | None = None, stdin: str | None = None) -> Result:
    """``python -m jsarag ARGS`` in a subprocess; returns its exit code and decoded output."""
    argv = [str(a) for a in args]
    proc = subprocess.Popen([sys.executable, "-m", "jsarag", *argv], env=env, cwd=cwd or REPO,
                            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                            errors="replace")
    with _RUNNING_LOCK:
        _RUNNING.add(proc)
    try:
        out, err = proc.communicate(stdin, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += f"\n[test harness: killed after {TIMEOUT} s]"
    finally:
        with _RUNNING_LOCK:
            _RUNNING.discard(proc)
    return Result(argv, proc.returncode, out, err)


class Jobs:
    """Background commands, each started once (by key), at most ``slots`` at a time, by priority.

    A job is queued only once the jobs it depends on have finished, so a worker never waits while
    holding a slot.
    """

    def __init__(self, env: dict[str, str], root: Path, slots: int = BACKGROUND_SLOTS):
        self.env, self.root = env, root
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._futures: dict[str, Future] = {}
        self._lock = threading.RLock()
        self._closed = False
        for _ in range(slots):
            threading.Thread(target=self._work, daemon=True).start()

    # The jobs: key -> (priority (lower first), dependencies, command arguments).
    def _define(self, key: str) -> tuple[int, list[str], list[object]]:
        if key == "index":
            return 0, [], ["index", "build", TINY, "--out", self.index_dir]
        if key == "index:other_corpus":
            corpus = self.root / "other_corpus.jsonl"
            return 1, [], ["index", "build", TINY, "--out", self.root / "index-other-corpus",
                           f"data.corpus={corpus}"]
        if key == "index:cls":
            return 1, [], ["index", "build", TINY, "--out", self.root / "index-cls", "retriever.pooling=cls"]
        if key.startswith("run:"):
            variant = key.split(":", 1)[1]
            overrides = VARIANTS[variant][0]
            return 3, ["index"], ["train", TINY, "--out", self.run_dir(variant), f"index.path={self.index_dir}",
                                  *overrides]
        run = self.run_dir(FOLLOW_UP_VARIANT)
        if key == "eval":
            return 2, [f"run:{FOLLOW_UP_VARIANT}"], ["eval", run]
        if key == "plot":
            return 2, [f"run:{FOLLOW_UP_VARIANT}"], ["plot", run]
        if key == "ask":
            return 2, [f"run:{FOLLOW_UP_VARIANT}"], ["ask", run, "-q", QUESTION]
        raise KeyError(key)

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    def run_dir(self, variant: str) -> Path:
        return self.root / "runs" / variant

    def get(self, key: str) -> Future:
        with self._lock:
            if key in self._futures:
                return self._futures[key]
            priority, deps, args = self._define(key)
            if key == "index:other_corpus":
                write_other_corpus(self.root / "other_corpus.jsonl")
            future: Future = Future()
            self._futures[key] = future
            dep_futures = [self.get(d) for d in deps]
        remaining = [len(dep_futures)]

        def enqueue() -> None:
            self._queue.put((priority, next(self._order), key, args, dep_futures, future))

        def dep_done(_: Future) -> None:
            with self._lock:
                remaining[0] -= 1
                ready = remaining[0] == 0
            if ready:
                enqueue()

        if not dep_futures:
            enqueue()
        for dep in dep_futures:
            dep.add_done_callback(dep_done)
        return future

    def result(self, key: str) -> Result:
        return self.get(key).result(timeout=4 * TIMEOUT)

    def _work(self) -> None:
        while True:
            _, _, key, args, deps, future = self._queue.get()
            if self._closed or not future.set_running_or_notify_cancel():
                continue
            try:
                failed = [d.result() for d in deps if d.result().returncode != 0]
                if failed:
                    raise RuntimeError(f"a command that {key} depends on failed:\n{failed[0].describe()}")
                future.set_result(run_cli(self.env, *args))
            except BaseException as err:  # noqa: BLE001 - handed to the waiting test
                future.set_exception(err)

    def close(self) -> None:
        """Cancel what has not started and stop what is running (only our own subprocesses)."""
        self._closed = True
        with self._lock:
            futures = list(self._futures.values())
        for future in futures:
            future.cancel()
        with _RUNNING_LOCK:
            running = list(_RUNNING)
        for proc in running:
            if proc.poll() is None:
                proc.kill()


def write_other_corpus(path: Path) -> None:
    passages = [
        {"id": "x1", "title": "Paris", "text": "Paris is the capital of France and sits on the Seine."},
        {"id": "x2", "title": "Tesla", "text": "Nikola Tesla was an inventor known for alternating current."},
        {"id": "x3", "title": "Nile", "text": "The Nile is a major north-flowing river in northeastern Africa."},
        {"id": "x4", "title": "Tokyo", "text": "Tokyo is the capital of Japan."},
    ]
    path.write_text("".join(json.dumps(p) + "\n" for p in passages), encoding="utf-8")


# Which background jobs each test needs, so that they can start before the test itself runs.
def _jobs_for(item: pytest.Item) -> list[str]:
    name = item.originalname if hasattr(item, "originalname") else item.name
    if name == "test_train_end_to_end":
        return [f"run:{item.callspec.params['variant']}"]
    return {
        "test_eval_prints_table": ["eval"],
        "test_plot_writes_pngs": ["plot"],
        "test_ask_prints_answer": ["ask"],
        "test_saved_models_load_in_hf_and_sentence_transformers": [f"run:{FOLLOW_UP_VARIANT}"],
        "test_index_for_another_corpus": ["index:other_corpus"],
        "test_index_for_another_encoder": ["index:cls"],
        "test_train_into_existing_run": [f"run:{EXISTING_RUN_VARIANT}"],
    }.get(name, [])


# ---- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def cli_env(tmp_path_factory) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "JSARAG_CACHE": str(tmp_path_factory.mktemp("cli-model-cache")),
        # Several commands share two cores: one thread each avoids oversubscription.
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


@pytest.fixture(scope="session")
def jobs(cli_env, tmp_path_factory):
    jobs = Jobs(cli_env, tmp_path_factory.mktemp("cli"))
    yield jobs
    jobs.close()


@pytest.fixture(scope="module", autouse=True)
def _start_background_jobs(request, jobs):
    """Start the expensive commands of the selected tests of this module right away."""
    here = Path(__file__).resolve()
    wanted = [key for item in request.session.items if Path(item.path).resolve() == here
              for key in _jobs_for(item)]
    for key in dict.fromkeys(wanted):
        jobs.get(key)


def require_ok(result: Result) -> Result:
    assert result.returncode == 0, result.describe()
    return result


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder below ``folder`` with a hash of its content."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        out[rel] = "<dir>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# ---- 4. help ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [
    [], ["train"], ["index", "build"], ["eval"], ["ask"], ["plot"], ["quickstart"], ["compare"], ["variance"],
], ids=lambda c: "-".join(c) or "top")
def test_help(cli_env, command):
    result = run_cli(cli_env, *command, "--help")
    assert result.returncode == 0, result.describe()
    assert "Usage" in result.stdout, result.describe()
    assert "Traceback" not in result.stderr, result.describe()


# ---- 3. user mistakes -------------------------------------------------------------------------------
def check_user_error(result: Result, *fragments: str, absent: tuple[Path, ...] = ()) -> None:
    """Exit code 2, exactly one stderr line 'error: ...' naming the problem, no traceback, no output.

    All problems are collected first so that one failure reports every broken promise at once.
    """
    problems = []
    if result.returncode != 2:
        problems.append(f"exit code {result.returncode}, expected 2")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if "Traceback" in result.stderr or "Traceback" in result.stdout:
        problems.append("a Python traceback was printed")
    if len(lines) != 1:
        problems.append(f"stderr has {len(lines)} non-empty lines, expected exactly 1: {lines[:8]!r}")
    errors = [line for line in lines if line.startswith("error:")]
    if not errors:
        problems.append("no stderr line starts with 'error:'")
    else:
        for fragment in fragments:
            if fragment.lower() not in errors[0].lower():
                problems.append(f"the error line does not mention {fragment!r}: {errors[0]!r}")
    for path in absent:
        if path.exists():
            listing = sorted(str(p.relative_to(path)) for p in path.rglob("*"))[:20]
            problems.append(f"{path} was created (partial output): {listing}")
    assert not problems, "\n".join(problems) + "\n\n" + result.describe()


def test_unknown_method(cli_env, tmp_path):
    out = tmp_path / "study"
    result = run_cli(cli_env, "compare", TINY, "--name", "x", "--out", out, "--methods", "jsa_sum,nope")
    check_user_error(result, "unknown method(s) nope", "jsa_sum", absent=(out,))


def test_unknown_key_in_override(cli_env, tmp_path):
    out = tmp_path / "run"
    result = run_cli(cli_env, "train", TINY, "--out", out, "optim.lrr=1")
    check_user_error(result, "optim.lrr", "unknown", absent=(out,))


def test_unknown_key_in_yaml_file(cli_env, tmp_path):
    cfg = yaml.safe_load(TINY.read_text())
    cfg["optim"]["lrr"] = 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    result = run_cli(cli_env, "train", bad, "--out", out)
    check_user_error(result, "optim.lrr", "unknown", absent=(out,))


def test_wrong_type(cli_env, tmp_path):
    out = tmp_path / "run"
    result = run_cli(cli_env, "train", TINY, "--out", out, "train.steps=abc")
    check_user_error(result, "train.steps", "integer", "abc", absent=(out,))


def test_missing_config_file(cli_env, tmp_path):
    out = tmp_path / "run"
    missing = tmp_path / "nope.yaml"
    result = run_cli(cli_env, "train", missing, "--out", out)
    check_user_error(result, str(missing), "not found", absent=(out,))


def test_missing_data_file(cli_env, tmp_path):
    out = tmp_path / "run"
    result = run_cli(cli_env, "train", TINY, "--out", out, "data.train=/nonexistent.jsonl")
    check_user_error(result, "/nonexistent.jsonl", "not found", absent=(out,))


def test_malformed_data_line(cli_env, tmp_path):
    train = tmp_path / "train.jsonl"
    good = {"id": "a", "question": "Who was Nikola Tesla?", "answers": ["an inventor"], "positive_ids": []}
    bad = {"id": "b", "question": "Where?", "answers": 5, "positive_ids": []}
    train.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n" + json.dumps(good | {"id": "c"}) + "\n")
    out = tmp_path / "run"
    result = run_cli(cli_env, "train", TINY, "--out", out, f"data.train={train}")
    check_user_error(result, f"{train}:2", "'answers'", absent=(out,))


def test_index_for_another_corpus(cli_env, jobs, tmp_path):
    built = require_ok(jobs.result("index:other_corpus"))
    assert "indexed 4 passages" in built.stdout, built.describe()
    out = tmp_path / "run"
    result = run_cli(cli_env, "train", TINY, "--out", out, f"index.path={jobs.root / 'index-other-corpus'}")
    check_user_error(result, "another corpus", absent=(out,))


def test_index_for_another_encoder(cli_env, jobs, tmp_path):
    require_ok(jobs.result("index:cls"))
    out = tmp_path / "run"
    result = run_cli(cli_env, "train", TINY, "--out", out, f"index.path={jobs.root / 'index-cls'}")
    check_user_error(result, "another passage encoder", "pooling", absent=(out,))


def test_train_into_existing_run(cli_env, jobs):
    require_ok(jobs.result(f"run:{EXISTING_RUN_VARIANT}"))
    run = jobs.run_dir(EXISTING_RUN_VARIANT)
    before = snapshot(run)
    assert "config.yaml" in before and "metrics.jsonl" in before
    result = run_cli(cli_env, "train", TINY, "--out", run, f"index.path={jobs.index_dir}",
                     *VARIANTS[EXISTING_RUN_VARIANT][0])
    check_user_error(result, str(run), "already holds a run", "--resume")
    assert snapshot(run) == before, "the existing run folder was modified by a refused `train`"


def test_eval_on_a_folder_that_is_not_a_run(cli_env, tmp_path):
    folder = tmp_path / "not-a-run"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    before = snapshot(folder)
    result = run_cli(cli_env, "eval", folder)
    check_user_error(result, str(folder), "not a run")
    assert snapshot(folder) == before, "eval wrote into a folder that is not a run"


# ---- 1. end to end, per estimator -------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_train_end_to_end(jobs, variant):
    result = require_ok(jobs.result(f"run:{variant}"))
    run = jobs.run_dir(variant)
    overrides, expected = VARIANTS[variant]
    assert "final checkpoint:" in result.stdout, result.describe()

    # The resolved config records the estimator and its options.
    saved = yaml.safe_load((run / "config.yaml").read_text())
    for dotted, value in expected.items():
        node = saved["estimator"]
        for part in dotted.split("."):
            node = node[part]
        assert node == value, f"config.yaml estimator.{dotted} = {node!r}, expected {value!r}"
    assert saved["index"]["path"] == str(jobs.index_dir)

    # metrics.jsonl: the run's header, one training record per step, plus the final evaluation's record.
    records = read_jsonl(run / "metrics.jsonl")
    assert records[0]["step"] == 0 and records[0]["run"]["precision"] == "fp32", records[0]  # tiny.yaml: fp32
    training = [r for r in records if "loss" in r]
    assert [r["step"] for r in training] == list(range(1, STEPS + 1)), records
    others = [r for r in records[1:] if "loss" not in r]
    assert all(r["step"] == STEPS and all(k == "step" or k.startswith("eval/") for k in r) for r in others), others
    for record in training:
        assert finite(record["loss"]), record
        norms = {k: v for k, v in record.items() if k.startswith("grad_norm/")}
        assert norms, f"no grad_norm/* keys in {record}"
        assert all(finite(v) and v >= 0 for v in norms.values()), norms
        assert "grad_norm/generator" in norms and "grad_norm/prior" in norms, norms
        if expected["name"] == "jsa":
            assert finite(record["accept_rate"]) and 0.0 <= record["accept_rate"] <= 1.0, record
            assert "grad_norm/posterior" in norms, norms

    # The newest checkpoint is complete.
    latest = (run / "checkpoints" / "latest").read_text().strip()
    ckpt = run / "checkpoints" / latest
    assert ckpt.is_dir(), f"checkpoints/latest names {latest!r}, which is not a folder"
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == STEPS
    for part in ("retriever/prior", "retriever/posterior", "generator"):
        assert (ckpt / part).is_dir(), f"{ckpt / part} missing"
        assert any((ckpt / part).glob("*.safetensors")), f"no weights in {ckpt / part}"
    assert (ckpt / "optimizer.pt").is_file()

    # The final evaluation on the dev split.
    summary = json.loads((run / "eval" / "dev" / "summary.json").read_text())
    for key in ("em", "f1", "recall@1"):
        assert finite(summary.get(key)), f"summary.json {key} = {summary.get(key)!r}"
    assert summary["examples"] == MAX_EVAL
    predictions = read_jsonl(run / "eval" / "dev" / "predictions.jsonl")
    assert len(predictions) == MAX_EVAL
    assert all(isinstance(p["prediction"], str) and p["retrieved"] for p in predictions)


def test_eval_prints_table(jobs):
    result = require_ok(jobs.result("eval"))
    out = result.stdout
    assert f"dev ({MAX_EVAL} examples)" in out, result.describe()
    assert "step_0000004" in out, result.describe()
    for metric in ("em", "f1", "recall@1"):
        assert any(line.strip("│┃| ").startswith(metric) for line in out.splitlines()), result.describe()
    run = jobs.run_dir(FOLLOW_UP_VARIANT)
    summary = json.loads((run / "eval" / "dev" / "summary.json").read_text())
    assert finite(summary["em"]) and finite(summary["f1"])
    assert len(read_jsonl(run / "eval" / "dev" / "predictions.jsonl")) == MAX_EVAL


def test_plot_writes_pngs(jobs):
    result = require_ok(jobs.result("plot"))
    paths = [Path(line.strip()) for line in result.stdout.splitlines() if line.strip().endswith(".png")]
    assert paths, result.describe()
    names = {p.name for p in paths}
    assert {"losses.png", "acceptance.png", "grad_norms.png", "eval.png"} <= names, names
    for path in paths:
        path = path if path.is_absolute() else REPO / path
        assert path.is_file(), path
        assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
        assert path.parent == jobs.run_dir(FOLLOW_UP_VARIANT) / "plots"


def test_ask_prints_answer(jobs):
    result = require_ok(jobs.result("ask"))
    answers = [line for line in result.stdout.splitlines() if line.startswith("answer:")]
    assert len(answers) == 1, result.describe()
    assert "top 2 passages" in result.stdout, result.describe()  # eval.top_k=2 in tiny.yaml


# ---- 2. saved models load in the standard libraries ------------------------------------------------
LOAD_SCRIPT = r"""
import json, sys
import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
from jsarag.models.encoder import Encoder

prior, generator = sys.argv[1], sys.argv[2]
texts = ["Who was Nikola Tesla?", "Where does the Rhine end?"]
st = SentenceTransformer(prior, device="cpu")
st_vectors = st.encode(texts, convert_to_numpy=True)
hf = AutoModel.from_pretrained(prior)
tok = AutoTokenizer.from_pretrained(prior)
with torch.no_grad():
    hidden = hf(**tok(texts, padding=True, return_tensors="pt")).last_hidden_state
ours = Encoder.from_pretrained(prior).encode(texts)
lm = AutoModelForCausalLM.from_pretrained(generator)
lm_tok = AutoTokenizer.from_pretrained(generator)
with torch.no_grad():
    logits = lm(**lm_tok(texts[:1], return_tensors="pt")).logits
print(json.dumps({
    "st_shape": list(st_vectors.shape),
    "st_vs_jsarag": float(np.abs(st_vectors - ours).max()),
    "hf_hidden": list(hidden.shape),
    "hf_finite": bool(torch.isfinite(hidden).all()),
    "lm_class": type(lm).__name__,
    "lm_logits_finite": bool(torch.isfinite(logits).all()),
    "lm_vocab": int(logits.shape[-1]),
}))
"""


def test_saved_models_load_in_hf_and_sentence_transformers(cli_env, jobs):
    require_ok(jobs.result(f"run:{FOLLOW_UP_VARIANT}"))
    run = jobs.run_dir(FOLLOW_UP_VARIANT)
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    proc = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(ckpt / "retriever" / "prior"),
                           str(ckpt / "generator")], env=cli_env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["st_shape"] == [2, 32], info
    assert info["st_vs_jsarag"] < 1e-5, f"sentence-transformers embeds differently from jsarag: {info}"
    assert info["hf_hidden"][0] == 2 and info["hf_hidden"][-1] == 32 and info["hf_finite"], info
    assert info["lm_class"] == "LlamaForCausalLM" and info["lm_logits_finite"], info
    assert info["lm_vocab"] == 30522, info


# ---- 7. the quickstart, with tiny models in place of the pretrained ones -------------------------------
QUICK_TINY = ["retriever.model=builtin:tiny-bert", "retriever.max_query_length=32",
              "retriever.max_passage_length=32", "generator.model=builtin:tiny-llama",
              "generator.lora.enabled=false", "generator.max_passage_tokens=16", "generator.max_query_tokens=16",
              "generator.max_answer_tokens=6", "estimator.top_k=2", "estimator.jsa.num_proposals=4",
              "train.steps=2", "train.save_every=2", "train.precision=fp32", "train.progress=false",
              "train.tensorboard=false", "data.max_eval_examples=3", "eval.max_new_tokens=3"]


def test_quickstart_end_to_end_and_rerunnable(cli_env, tmp_path):
    out = tmp_path / "quickstart"
    for attempt in range(2):  # the second run replaces the first
        result = require_ok(run_cli(cli_env, "quickstart", "--out", out, *QUICK_TINY))
        report = json.loads((out / "quickstart.json").read_text())
        for when in ("before", "after"):
            assert report[when]["examples"] == 3, report
            for key in ("f1", "rougeL", "recall@1", "mrr@10"):
                assert finite(report[when][key]), (when, key, report[when])
        assert 0 < report["train_seconds"] < report["total_seconds"], report
        assert "evaluate the untrained model (3 dev examples)" in result.stdout, result.describe()
        assert "builtin:dstc11/dev.jsonl" in result.stdout, result.describe()
        assert "JSA-RAG trained" in result.stdout, result.describe()
        # The index of the shipped sample, the untrained evaluation and the trained run sit in the folder.
        assert json.loads((out / "index" / "meta.json").read_text())["num_passages"] == 10882
        assert len(read_jsonl(out / "eval_before" / "predictions.jsonl")) == 3
        assert len([r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]) == 2


def test_quickstart_refuses_a_folder_that_is_not_its_own(cli_env, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    before = snapshot(folder)
    check_user_error(run_cli(cli_env, "quickstart", "--out", folder, *QUICK_TINY), str(folder),
                     "not a quickstart run")
    assert snapshot(folder) == before
