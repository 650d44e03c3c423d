"""A run's log names the code it ran: jsarag's version, and the commit of the checkout it was imported from."""

from __future__ import annotations

import subprocess

from helpers import REPO

import jsarag
from jsarag import provenance


def _git(where, *args) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True)


def test_the_header_names_the_version_and_this_checkouts_commit():
    header = provenance.code_header()
    assert header["jsarag"] == jsarag.__version__
    head = _git(REPO, "rev-parse", "--short=12", "HEAD")
    if head.returncode != 0 or provenance.PACKAGE != REPO / "src" / "jsarag":  # not a checkout of this package
        assert "commit" not in header
        return
    changed = _git(REPO / "src" / "jsarag", "status", "--porcelain", "--", ".").stdout.strip()
    assert header["commit"] == head.stdout.strip() + ("+changes" if changed else "")


def test_no_commit_outside_a_checkout_of_jsarag_or_inside_another_repository(tmp_path):
    assert provenance._commit(tmp_path) is None  # not a repository
    (tmp_path / "venv" / "jsarag").mkdir(parents=True)
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "--allow-empty", "-m", "x")
    assert provenance._commit(tmp_path / "venv" / "jsarag") is None  # a project's repository, not jsarag's
    (tmp_path / "src" / "jsarag").mkdir(parents=True)
    (tmp_path / "src" / "jsarag" / "m.py").write_text("x = 1\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "-m", "y")
    head = _git(tmp_path, "rev-parse", "--short=12", "HEAD").stdout.strip()
    assert provenance._commit(tmp_path / "src" / "jsarag") == head
    (tmp_path / "src" / "jsarag" / "m.py").write_text("x = 2\n")
    provenance._commit.cache_clear()
    assert provenance._commit(tmp_path / "src" / "jsarag") == head + "+changes"
    provenance._commit.cache_clear()
