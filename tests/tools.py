"""Commands some tests need beyond Python, pip, git and node.

On a developer's machine a test whose command is missing is skipped, its reason saying how to get it
(pytest's summary lists each). Under CI (`CI=true`, as `.ci/run` runs) the same is a failure: CI installs
every one of them, so a skip there would hide a test that never ran.
"""

from __future__ import annotations

import os
import shutil

import pytest

DEBIAN = "Debian/Ubuntu: apt-get install"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require_tool(name: str, how_to_get: str) -> str:
    """The full path of command `name` (or of the file, for a path); skip, or fail under CI, without it."""
    found = shutil.which(name)
    if found is not None:
        return found
    # The summary line points at this file, where the skip is raised: the reason names the test instead.
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
    reason = f"{test}: needs {name}, which is not installed ({how_to_get})"
    if in_ci():
        pytest.fail(f"{reason}; CI=true, so a missing command is a failure, not a skip", pytrace=False)
    pytest.skip(reason)
