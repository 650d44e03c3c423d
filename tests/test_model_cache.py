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


def _write_gguf(path, name: str) -> None:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_name(name)
    writer.add_tensor("token_embd.weight", np.arange(6, dtype=np.float32).reshape(2, 3))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_the_smollm2_build_parses_its_gguf_file_once_and_leaves_gguf_as_it_was(tmp_path):
    """transformers' tokenizer, config and weight loaders each open a GGUFReader; within the build they share
    one. Another file still gets a reader of its own, and afterwards everything is as before."""
    import gguf

    mine, other = tmp_path / "mine.gguf", tmp_path / "other.gguf"
    _write_gguf(mine, "mine")
    _write_gguf(other, "other")
    original = gguf.GGUFReader
    with pretrained._parsed_once(mine):
        first, second = gguf.GGUFReader(str(mine)), gguf.GGUFReader(mine)
        elsewhere = gguf.GGUFReader(str(other))
        assert first is second
        assert bytes(first.fields["general.name"].parts[-1]).decode() == "mine"
        assert bytes(elsewhere.fields["general.name"].parts[-1]).decode() == "other"
        assert first.tensors[0].data.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert gguf.GGUFReader is original
    with pytest.raises(RuntimeError), pretrained._parsed_once(mine):
        raise RuntimeError("a failed build")
    assert gguf.GGUFReader is original
