"""Outside programs the tests drive (git, kubectl, nginx): skipped with how to get one where it is
missing, and a failure under CI=true, where .ci/run installs them and a skip would hide a gap."""

from __future__ import annotations

import os
import shutil

import pytest


def require(program: str, how: str) -> str:
    """The path of `program`, or skip (fail on CI) saying how to install it."""
    path = shutil.which(program) or (program if os.path.isfile(program) and os.access(program, os.X_OK) else None)
    if path is not None:
        return path
    message = f"{program} is not installed ({how})"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
