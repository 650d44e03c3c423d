"""Built-in models are built once per cache, even when several processes ask at once (DDP ranks, xdist workers)."""

from __future__ import annotations

import threading
import time

import pytest

from jsarag.models import pretrained


def test_concurrent_requests_build_once(tmp_path, monkeypatch):
    monkeypatch.setenv("JSARAG_CACHE", str(tmp_path))
    builds = []

    def build(folder):
        builds.append(folder)
        time.sleep(0.3)  # long enough for the other caller to arrive while the first one builds
        (folder / "weights.bin").write_bytes(b"w")

    results = []
    callers = [threading.Thread(target=lambda: results.append(pretrained._materialise("dummy", build, "test")))
               for _ in range(2)]
    for c in callers:
        c.start()
    for c in callers:
        c.join()
    assert len(builds) == 1
    assert results == [tmp_path / "dummy", tmp_path / "dummy"]
    assert (tmp_path / "dummy" / "weights.bin").read_bytes() == b"w"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".dummy.") and p.is_dir()] == []


def test_a_failed_build_leaves_nothing_and_the_next_call_builds(tmp_path, monkeypatch):
    monkeypatch.setenv("JSARAG_CACHE", str(tmp_path))

    def broken(folder):
        (folder / "half.bin").write_bytes(b"h")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        pretrained._materialise("dummy", broken, "test")
    assert not (tmp_path / "dummy").exists()
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []
    path = pretrained._materialise("dummy", lambda f: (f / "ok.bin").write_bytes(b"o"), "test")
    assert (path / "ok.bin").is_file()
