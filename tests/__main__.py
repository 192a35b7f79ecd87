"""`python -m tests [PYTEST ARGS]`: the Python suite and the Node client's, each whatever the other's outcome.

The Python suite runs in parallel, under pytest-xdist, on WORKERS workers; the Node suite meanwhile, its
output shown after the Python suite's. Most of the suite's time is spent waiting (for a daemon to start, a
token to expire, a renewal), so there are more workers than cores. Tests that share a fixture wider than
one test (a module's daemon) run on one worker (tests/tools.py, `group_shared_fixtures`). Options of
your own for pytest-xdist (`-n 0`, `-n 8`, `--dist ...`, `-p no:xdist`) replace these.

The exit status is 0 only when both passed. Each suite's closing summary is repeated at the end, so that a
long run's outcome is the last thing on the screen. Without npm the Node suite is skipped, saying how to
get it, except under CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from tests.tools import in_ci

ROOT = Path(__file__).resolve().parent.parent
NODE = ROOT / "clients" / "node"
PYTEST_SUMMARY = re.compile(r"^=* ?((?:\d+ \w+|no tests ran)[^=]* in [\d.]+s(?: \([\d:]+\))?) ?=*$")
NODE_COUNT = re.compile(r"^(?:# |\u2139 )(tests|pass|fail|cancelled|skipped|todo) (\d+)$")
WORKERS = 2 * (os.cpu_count() or 1)
XDIST_OPTIONS = ("-n", "--numprocesses", "--dist", "-d", "--tx", "no:xdist", "-pno:xdist")


def parallel(args: list[str]) -> list[str]:
    """pytest-xdist's options, unless `args` (the caller's pytest arguments) choose their own, or xdist is not
    installed (an environment from before it was in the test extra: the suite then runs in one process)."""
    if any(arg.startswith(XDIST_OPTIONS) for arg in args) or importlib.util.find_spec("xdist") is None:
        return []
    return ["-n", str(WORKERS), "--dist", "loadgroup"]


def streamed(argv: list[str], cwd: Path, keep: Callable[[str], bool],
             out: TextIO | None = None) -> tuple[int, list[str]]:
    """Run argv with its output passed on to `out` (standard output) as it comes; return its exit status
    and the lines kept."""
    kept: list[str] = []
    with subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as process:
        assert process.stdout is not None
        for line in process.stdout:
            (out or sys.stdout).write(line)
            if keep(line.rstrip("\n")):
                kept.append(line.strip())
    return process.returncode, kept


def python_suite(args: list[str]) -> tuple[int, str]:
    code, lines = streamed([sys.executable, "-m", "pytest", *parallel(args), *args], ROOT,
                           lambda line: PYTEST_SUMMARY.match(line) is not None)
    found = PYTEST_SUMMARY.match(lines[-1]) if lines else None
    return code, found.group(1) if found else "no summary line"


def node_suite(out: TextIO) -> tuple[int, str]:
    """The Node suite, its output written to `out`."""
    npm = shutil.which("npm")
    if npm is None:
        reason = "npm is not installed (Node 18 or later, with npm: https://nodejs.org)"
        return (1, f"failed: {reason}; CI=true") if in_ci() else (0, f"skipped: {reason}")
    installed, _ = streamed([npm, "ci", "--silent", "--no-audit", "--no-fund"], NODE, lambda line: False, out)
    if installed != 0:
        return installed, "failed: npm ci could not install the suite's development dependency"
    code, lines = streamed([npm, "test", "--silent"], NODE, lambda line: NODE_COUNT.match(line) is not None, out)
    counts = dict(found.groups() for found in map(NODE_COUNT.match, lines) if found)
    return code, ", ".join(f"{counts.get(key, '?')} {key}" for key in ("tests", "pass", "fail", "skipped"))


def main(args: list[str]) -> int:
    node_output = io.StringIO()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        node = pool.submit(node_suite, node_output)
        python_code, python_summary = python_suite(args)
        node_code, node_summary = node.result()
    sys.stdout.write(node_output.getvalue())
    print(f"\nPython suite: {python_summary} (exit {python_code})")
    print(f"Node suite: {node_summary} (exit {node_code})")
    return 0 if python_code == 0 and node_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
