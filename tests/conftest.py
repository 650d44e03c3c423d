"""Shared fixtures: an isolated model cache for the whole session (no network, nothing in ~/.cache)."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Under pytest-xdist (`make test` runs one worker per core) each worker and the processes it starts get
# their share of the cores, not all of them each.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))


# At most this much under pytest's temporary folder during a whole `make test` (3.2 GiB measured on 2026-12-04);
# the folders of tests that passed are removed at the end (tmp_path_retention_policy in pyproject.toml).
SUITE_WRITES_GIB = 4

# The files that take longest, longest first (per-file seconds under `make test` with 2 workers, on a 2-core
# AVX2-only EPYC: about 280, 180, 150, 85, 80, 70, 60 and 50; every other file takes under 25). `make test` hands
# whole files to its workers in collection order (`--dist loadfile --no-loadscope-reorder`), so the long ones
# start first and the run ends on short files, not on one long file while the other cores idle.
LONGEST_FIRST = ("test_benchmarks_smoke.py", "test_cli.py", "test_resume_and_distributed.py",
                 "test_checkpoint_integrity.py", "test_study.py", "test_safety.py", "test_real_models.py",
                 "test_gradients.py")


def pytest_sessionstart(session):
    """A warning when the temporary folder's disk has less free space than the suite writes there: a full disk
    fails dozens of tests with torch's words ("unexpected pos ..."), not ours. Printed also under -q."""
    folder, need = tempfile.gettempdir(), SUITE_WRITES_GIB * 2**30
    free = shutil.disk_usage(folder).free
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if free < need and reporter is not None and not hasattr(session.config, "workerinput"):
        reporter.write_line(f"warning: {free / 2**30:.1f} GiB free in {folder}, and the suite writes up to about "
                            f"{SUITE_WRITES_GIB} GiB there: tests that save checkpoints will fail on a full disk",
                            yellow=True)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # a stable sort: the rest keep their order


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    """Built-in models are built once per test run into a private cache (SmolLM2's conversion takes
    20-60 s), shared by the xdist workers (the build holds a file lock; the others wait for it).
    JSARAG_TEST_CACHE=~/.cache/jsarag reuses a cache across runs instead."""
    if "JSARAG_TEST_CACHE" in os.environ:
        os.environ["JSARAG_CACHE"] = os.environ["JSARAG_TEST_CACHE"]
    elif "JSARAG_CACHE" not in os.environ:
        root = tmp_path_factory.getbasetemp()
        if "PYTEST_XDIST_WORKER" in os.environ:
            root = root.parent  # the run's folder, above each worker's own
        (root / "jsarag-cache").mkdir(exist_ok=True)
        os.environ["JSARAG_CACHE"] = str(root / "jsarag-cache")
    yield
