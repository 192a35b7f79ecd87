"""The suite's own machinery: a test whose command is missing is skipped saying how to get it (a failure
under CI=true), and under `python -m tests` the tests that share a module's fixture run on one worker."""

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


SHARES_A_MODULE_FIXTURE = """
import os
import pytest


@pytest.fixture(scope="module")
def machine():
    with open("setups", "a") as log:
        log.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")
    yield


@pytest.mark.parametrize("n", range(12))
def test_uses_it(machine, n):
    with open("workers", "a") as log:
        log.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")


@pytest.mark.parametrize("n", range(12))
def test_alone(n):
    pass
"""


def test_tests_sharing_a_module_fixture_run_on_one_worker_with_the_suites_options(tmp_path: Path) -> None:
    """The grouping rests on pytest-xdist's `--dist loadgroup`, which some pytest releases silently defeat
    (pytest 9.2 keeps node ids where pytest-xdist 3.8 cannot mark them); the suite's machines and daemons
    would then be started on several workers at once, each test finding another's state."""
    from tests.__main__ import parallel

    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n")
    (tmp_path / "test_shared.py").write_text(SHARES_A_MODULE_FIXTURE)
    options = parallel([])
    assert options, "pytest-xdist is part of the test extra"
    options[1] = "3"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *options, "."],
                            cwd=tmp_path, capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "24 passed" in result.stdout
    workers = (tmp_path / "workers").read_text().split()
    assert len(workers) == 12 and len(set(workers)) == 1, f"the module's tests ran on {sorted(set(workers))}"
    assert len((tmp_path / "setups").read_text().split()) == 1
