"""Nothing lost, nothing silent (issue 16): output folders, the finite check, the run lock, leftovers of
killed checkpoint saves, and `--resume` on folders without a checkpoint or without a final evaluation.

Each test reproduces one failure of the issue. The CLI tests run ``python -m jsarag`` with the tiny models
of ``configs/tiny.yaml``; the rest call the library in this process, which is faster.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli import TINY, check_user_error, run_cli, snapshot

from jsarag.config import ConfigError, load_config, save_config
from jsarag.index import PassageIndex
from jsarag.index.faiss_index import INDEX_FILE, META_FILE
from jsarag.outdirs import RUN_LOCK, RunLock

pytestmark = pytest.mark.slow

QUICK = ["data.dev=null", "data.max_train_examples=8", "train.steps=1"]


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    """The session's private model cache (see conftest), offline; no rank variables."""
    out = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    out.pop("RANK", None)
    out.pop("WORLD_SIZE", None)
    return out


def user_folder(folder: Path) -> dict[str, str]:
    """A folder of a user's files, including names jsarag also writes; returns its snapshot."""
    (folder / "index").mkdir(parents=True)
    (folder / "notes.txt").write_text("keep me")
    (folder / "corpus.jsonl").write_text('{"id": "a", "text": "mine"}\n')
    (folder / "metrics.jsonl").write_text('{"my": "numbers"}\n')
    (folder / "index" / "my-vectors.npy").write_bytes(b"\x93NUMPY")
    return snapshot(folder)


def small_index(n: int = 6, corpus_hash: str = "c" * 64) -> PassageIndex:
    vectors = np.random.default_rng(n).standard_normal((n, 4)).astype(np.float32)
    return PassageIndex.from_vectors(vectors, corpus_hash=corpus_hash, encoder={"name": "test"})


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


# ---- 1. output folders -------------------------------------------------------------------------------
def test_index_build_refuses_a_folder_of_user_files(env, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    before = user_folder(folder)
    result = run_cli(env, "index", "build", TINY, "--out", folder)
    check_user_error(result, str(folder), "not an index folder")
    assert snapshot(folder) == before, "index build changed a folder that is not an index"


def an_index_with_notes(folder: Path) -> dict[str, str]:
    small_index().save(folder, extra_files={"config.yaml": "old: 1\n"})
    (folder / "notes.txt").write_text("keep me")
    return snapshot(folder)


def test_index_build_refuses_an_existing_index_without_overwrite(env, tmp_path):
    folder = tmp_path / "ix"
    before = an_index_with_notes(folder)
    check_user_error(run_cli(env, "index", "build", TINY, "--out", folder), str(folder), "--overwrite")
    assert snapshot(folder) == before


def test_index_build_with_overwrite_replaces_only_the_index_files(env, tmp_path):
    folder = tmp_path / "ix"
    an_index_with_notes(folder)
    result = run_cli(env, "index", "build", TINY, "--out", folder, "--overwrite")
    assert result.returncode == 0, result.describe()
    assert (folder / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in folder.iterdir()) == sorted(["config.yaml", INDEX_FILE, META_FILE, "notes.txt",
                                                               "trained.faiss", "vectors"])
    assert len(PassageIndex.load(folder)) > 6 and "old: 1" not in (folder / "config.yaml").read_text()
    assert os.listdir(tmp_path) == ["ix"]


def test_index_save_keeps_other_files_and_drops_only_its_own_stale_ones(tmp_path):
    folder = tmp_path / "ix"
    small_index(5).save(folder, extra_files={"config.yaml": "a: 1\n"})
    (folder / "notes.txt").write_text("keep me")
    (folder / "sub").mkdir()
    small_index(7).save(folder)  # writes no config.yaml: the previous save's one goes, the user's files stay
    assert sorted(p.name for p in folder.iterdir()) == sorted([INDEX_FILE, META_FILE, "notes.txt", "sub"])
    assert len(PassageIndex.load(folder)) == 7


def test_index_save_killed_before_or_after_its_commit_leaves_a_whole_index(tmp_path, monkeypatch):
    import jsarag.index.faiss_index as faiss_index

    folder = tmp_path / "ix"
    small_index(5).save(folder)
    (folder / "notes.txt").write_text("keep me")
    real_write = faiss_index.faiss.write_index
    monkeypatch.setattr(faiss_index.faiss, "write_index", lambda *a: (real_write(*a), 1 / 0))
    with pytest.raises(ZeroDivisionError):  # killed while writing: the old index is intact
        small_index(7).save(folder)
    assert len(PassageIndex.load(folder)) == 5
    monkeypatch.setattr(faiss_index.faiss, "write_index", real_write)
    real_finish = faiss_index._finish_interrupted_save
    monkeypatch.setattr(faiss_index, "_finish_interrupted_save",  # killed just after the commit
                        lambda path, *, discard_staging: real_finish(path, discard_staging=True) if discard_staging
                        else 1 / 0)
    with pytest.raises(ZeroDivisionError):  # killed after the commit: the next load completes the new index
        small_index(7).save(folder)
    monkeypatch.undo()
    assert len(PassageIndex.load(folder)) == 7
    assert sorted(p.name for p in folder.iterdir()) == sorted([INDEX_FILE, META_FILE, "notes.txt"])


@pytest.mark.parametrize("resume", [False, True], ids=["new", "resume"])
def test_train_refuses_a_folder_that_is_not_a_run(env, tmp_path, resume):
    folder = tmp_path / "mine"
    folder.mkdir()
    before = user_folder(folder)
    result = run_cli(env, "train", TINY, "--out", folder, *(["--resume"] if resume else []), *QUICK)
    check_user_error(result, str(folder), "not a jsarag run folder")
    assert snapshot(folder) == before, "train changed a folder that is not a run"


# ---- 3. the finite check -------------------------------------------------------------------------------
def test_a_diverging_run_stops_with_one_line_and_never_saves_non_finite_weights(env, tmp_path):
    from safetensors.torch import load_file

    run = tmp_path / "run"
    lrs = [f"optim.lr_{c}=1e6" for c in ("generator", "prior", "posterior")]
    result = run_cli(env, "train", TINY, "--out", run, *lrs, "data.dev=null", "data.max_train_examples=16",
                     "train.steps=8", "train.save_every=1", "train.keep_checkpoints=0", "train.max_nonfinite_steps=2")
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("note: precision")]
    assert result.returncode == 3, result.describe()
    assert len(lines) == 1 and lines[0].startswith("error: training stopped") and "non-finite" in lines[0], lines
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    skipped = [r["step"] for r in records if r.get("skipped_nonfinite")]
    assert len(skipped) == 2 and skipped[-1] == records[-1]["step"] < 8, records
    checkpoints = sorted((run / "checkpoints").glob("step_*"))
    assert checkpoints and (run / "checkpoints" / "latest").read_text().strip() == checkpoints[-1].name
    for ckpt in checkpoints:
        weights = list(ckpt.rglob("*.safetensors"))
        assert weights
        for path in weights:
            assert all(t.isfinite().all() for t in load_file(path).values()), f"non-finite weights in {path}"


def test_max_nonfinite_steps_is_validated():
    assert load_config(TINY).train.max_nonfinite_steps == 5
    with pytest.raises(ConfigError, match=r"train.max_nonfinite_steps=0 .*at least 1"):
        load_config(TINY, ["train.max_nonfinite_steps=0"])


# ---- 4. the run lock -----------------------------------------------------------------------------------
@pytest.mark.parametrize("resume", [False, True], ids=["new", "resume"])
def test_a_second_train_on_a_locked_run_folder_is_refused_naming_the_holder(env, tmp_path, resume):
    run = tmp_path / "run"
    with RunLock(run):  # this test process plays the first `jsarag train`
        before = snapshot(run)
        result = run_cli(env, "train", TINY, "--out", run, *(["--resume"] if resume else []), *QUICK)
        check_user_error(result, str(run), "in use", f"pid {os.getpid()}")
        assert snapshot(run) == before


def test_the_lock_goes_with_its_process_even_when_killed(env, tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from jsarag.outdirs import RunLock; lock = RunLock(Path(sys.argv[1])); "
                               "print('locked', flush=True); time.sleep(600)", str(run)],
                              env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=f"pid {holder.pid}"):
            RunLock(run)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunLock(run):  # free again
        assert (run / RUN_LOCK).read_text().strip() == str(os.getpid())


# ---- 5. leftovers and --resume ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A complete tiny run (2 steps, final evaluation on 4 dev examples), trained in this process."""
    from jsarag.train.loop import train

    run = tmp_path_factory.mktemp("finished") / "run"
    train(load_config(TINY, RUN_ARGS), run)
    return run


RUN_ARGS = ["train.steps=2", "data.max_train_examples=8", "data.max_eval_examples=4"]


def copy_of(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def eval_records(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if any(k.startswith("eval/") for k in r)]


def test_a_resumed_run_runs_the_final_evaluation_it_was_killed_in(finished_run, tmp_path):
    from jsarag.train.loop import train

    run = copy_of(finished_run, tmp_path)
    assert [r["step"] for r in eval_records(run)] == [2]
    shutil.rmtree(run / "eval")  # killed during the final evaluation: nothing of it written yet
    kept = [line for line in (run / "metrics.jsonl").read_text().splitlines() if '"eval/' not in line]
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in kept))
    train(load_config(TINY, RUN_ARGS), run, resume=True)
    assert json.loads((run / "eval" / "dev" / "summary.json").read_text())["examples"] == 4
    assert [r["step"] for r in eval_records(run)] == [2]


def test_leftovers_of_killed_checkpoint_saves_are_removed_at_the_next_start(finished_run, tmp_path):
    from jsarag.train.loop import train

    run = copy_of(finished_run, tmp_path)
    root = run / "checkpoints"
    (root / ".step_0000003.k2_x9abc" / "generator").mkdir(parents=True)
    (root / ".step_0000003.k2_x9abc" / "generator" / "model.safetensors").write_bytes(b"0" * 1000)
    (root / ".latest.ab12cd34").write_text("step_0000003")
    (root / ".step_notes").write_text("not ours: another name")
    (run / ".my-hidden-folder").mkdir()
    train(load_config(TINY, RUN_ARGS), run, resume=True)
    assert hidden(run) == sorted([".jsarag-train.lock", ".my-hidden-folder", ".step_notes"])
    assert [r["step"] for r in eval_records(run)] == [2]  # nothing left to do, nothing redone


def test_resume_of_a_run_without_a_checkpoint_says_it_starts_from_scratch(env, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config(TINY, QUICK), run / "config.yaml")  # a run killed before its first checkpoint
    (run / "metrics.jsonl").write_text("")
    result = run_cli(env, "train", TINY, "--out", run, "--resume", *QUICK)
    assert result.returncode == 0, result.describe()
    assert "holds no checkpoint: --resume starts the run from scratch" in result.stderr, result.describe()
    assert (run / "checkpoints" / "step_0000001").is_dir()


def test_resume_keeps_metrics_written_before_a_line_torn_by_a_kill(tmp_path):
    """A kill in the middle of a metrics write leaves half a line; resuming must not fail on it, and the
    records up to the checkpoint stay (the file is replaced whole, never rewritten in place)."""
    from jsarag.train.logger import RunLogger, read_metrics

    lines = [json.dumps({"step": s, "loss": float(s)}) for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 4, "lo')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    logger = RunLogger(tmp_path, enabled=True, tensorboard=False, resume_step=2)
    logger.log(3, {"loss": 30.0})
    logger.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_metrics_lines_are_strict_json_when_a_value_is_not_finite(tmp_path):
    """An overflowing step logs an infinite gradient norm (and skipped_nonfinite): the line must stay JSON that any
    parser reads (no Infinity or NaN constants), with null for the value."""
    from jsarag.train.logger import RunLogger

    logger = RunLogger(tmp_path, enabled=True, tensorboard=False)
    logger.log(1, {"loss": math.nan, "grad_norm/prior": math.inf, "grad_norm/generator": -math.inf,
                   "skipped_nonfinite": 1, "seconds": 0.5})
    logger.close()
    line = (tmp_path / "metrics.jsonl").read_text()
    assert json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in {line}")) == {
        "step": 1, "loss": None, "grad_norm/prior": None, "grad_norm/generator": None, "skipped_nonfinite": 1,
        "seconds": 0.5}
