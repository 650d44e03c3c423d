"""Every committed comparison page (docs/results/NAME.md) is what its own command rebuilds, with --from-results,
from the result files committed beside it: no page is edited by hand, and no change to the page code or to a
result file leaves a page that its files no longer give. Loads no model and reads no dataset: seconds a page."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest
from helpers import REPO, jsarag

# The pages `jsarag compare` wrote: each has its folder of result files beside it (other notes live there too).
PAGES = sorted(p for p in (REPO / "docs" / "results").glob("*.md") if (p.with_suffix("") / "runs").is_dir())


def page_command(page: Path) -> list[str]:
    """The arguments of the `jsarag compare ...` line in the page's bash block."""
    text = page.read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [line for line in block.splitlines() if line.startswith("jsarag compare ")]
    assert len(lines) == 1, f"{page.name}: expected one `jsarag compare` line, found {len(lines)}"
    return shlex.split(lines[0])[1:]


def test_there_are_committed_pages():
    assert {p.stem for p in PAGES} >= {"dstc11", "squad"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_a_committed_page_is_what_its_result_files_rebuild(page, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the command's config path is relative to the checkout
    shutil.copytree(page.with_suffix(""), tmp_path / page.stem)  # plots are rewritten there, not in the checkout
    jsarag(*page_command(page), "--from-results", "--report-dir", tmp_path)
    assert (tmp_path / page.name).read_text() == page.read_text()
