"""Shared fixtures: an isolated model cache for the whole session (no network, nothing in ~/.cache)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    """Built-in models are built once per session into a private cache (SmolLM2's conversion takes
    ~20 s). JSARAG_TEST_CACHE=~/.cache/jsarag reuses a cache across sessions instead."""
    if "JSARAG_TEST_CACHE" in os.environ:
        os.environ["JSARAG_CACHE"] = os.environ["JSARAG_TEST_CACHE"]
    elif "JSARAG_CACHE" not in os.environ:
        os.environ["JSARAG_CACHE"] = str(tmp_path_factory.mktemp("jsarag-cache"))
    yield
