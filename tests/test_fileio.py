"""write_text_atomic: whole or nothing, also with several writers of one path."""

from __future__ import annotations

import os
import threading

import pytest

from jsarag.fileio import write_text_atomic


def test_a_file_is_replaced_whole_with_the_umasks_permissions(tmp_path):
    path = tmp_path / "sub" / "summary.json"
    write_text_atomic(path, "first ∑\n")
    write_text_atomic(path, "second\n")
    assert path.read_text(encoding="utf-8") == "second\n"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not a temporary file's 0600
    assert sorted(p.name for p in path.parent.iterdir()) == ["summary.json"]


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "result.json"
    write_text_atomic(path, "kept\n")
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(path, "half written \ud800")  # a lone surrogate: UTF-8 cannot encode it
    assert path.read_text() == "kept\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_writers_of_one_path_at_once_never_fail_nor_leave_a_part(tmp_path):
    """Two comparisons sharing a report folder both write runs/untrained.json: with one fixed temporary name, one
    writer renamed the other's half-written file away (a reader saw a part) and the other's rename then failed."""
    path = tmp_path / "untrained.json"
    texts = ["a" * 200_000, "b" * 300_000]
    errors, seen = [], set()

    def write(text):
        try:
            for _ in range(40):
                write_text_atomic(path, text)
                seen.add(path.read_text())
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert seen <= set(texts) and path.read_text() in texts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["untrained.json"]
