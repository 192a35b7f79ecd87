"""A test whose command is missing is skipped saying how to get it, and fails instead under CI=true."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
NEEDS_A_MISSING_COMMAND = """
from tests.tools import require_tool


def test_needs_it():
    require_tool("no-such-command-anywhere", "apt-get install no-such-package")
"""


def run_pytest_on(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    test_file = tmp_path / "test_needs_it.py"
    test_file.write_text(NEEDS_A_MISSING_COMMAND)
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(test_file)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)


def test_a_missing_command_is_a_skip_that_says_how_to_get_it(tmp_path: Path) -> None:
    result = run_pytest_on(tmp_path, ci=None)
    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout
    assert "needs no-such-command-anywhere, which is not installed (apt-get install no-such-package)" in result.stdout


def test_under_ci_a_missing_command_is_a_failure(tmp_path: Path) -> None:
    result = run_pytest_on(tmp_path, ci="true")
    assert result.returncode == 1, result.stdout
    assert "1 failed" in result.stdout and "CI=true, so a missing command is a failure" in result.stdout
