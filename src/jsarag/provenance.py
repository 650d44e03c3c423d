"""Which code a run ran, for its log header and, through it, a comparison's results: jsarag's version and, when
the package is imported from a git checkout of jsarag (an editable install, as in development and studies), the
commit, with ``+changes`` where the package's sources differ from it (untracked files not ignored by git count)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from jsarag import __version__

PACKAGE = Path(__file__).resolve().parent


def code_header() -> dict[str, str]:
    """``{"jsarag": version}``, and ``"commit"`` when there is one (see the module docstring)."""
    header = {"jsarag": __version__}
    commit = _commit(PACKAGE)
    if commit:
        header["commit"] = commit
    return header


@functools.cache
def _commit(package: Path) -> str | None:
    """The checkout's commit (12 hex digits) if ``package`` is its ``src/jsarag``; None for an installed wheel,
    or a package that sits inside some other repository (a virtual environment kept in a project's checkout)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True, timeout=20,
                              check=True).stdout.strip()

    try:
        if git("rev-parse", "--show-prefix") != "src/jsarag/":
            return None
        commit = git("rev-parse", "--short=12", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=normal", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+changes" if changed else "")
