"""`python -m tests [PYTEST ARGS]`: the Python suite, then the Node client's, whatever the first one's outcome.

The exit status is 0 only when both passed. Each suite's closing summary is repeated at the end, so that a
long run's outcome is the last thing on the screen. Without npm the Node suite is skipped, saying how to
get it, except under CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.tools import in_ci

ROOT = Path(__file__).resolve().parent.parent
NODE = ROOT / "clients" / "node"
PYTEST_SUMMARY = re.compile(r"^=* ?((?:\d+ \w+|no tests ran)[^=]* in [\d.]+s(?: \([\d:]+\))?) ?=*$")
NODE_COUNT = re.compile(r"^(?:# |\u2139 )(tests|pass|fail|cancelled|skipped|todo) (\d+)$")


def streamed(argv: list[str], cwd: Path, keep: Callable[[str], bool]) -> tuple[int, list[str]]:
    """Run argv with its output passed through as it comes; return its exit status and the lines kept."""
    kept: list[str] = []
    with subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as process:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            if keep(line.rstrip("\n")):
                kept.append(line.strip())
    return process.returncode, kept


def python_suite(args: list[str]) -> tuple[int, str]:
    code, lines = streamed([sys.executable, "-m", "pytest", *args], ROOT,
                           lambda line: PYTEST_SUMMARY.match(line) is not None)
    found = PYTEST_SUMMARY.match(lines[-1]) if lines else None
    return code, found.group(1) if found else "no summary line"


def node_suite() -> tuple[int, str]:
    npm = shutil.which("npm")
    if npm is None:
        reason = "npm is not installed (Node 18 or later, with npm: https://nodejs.org)"
        return (1, f"failed: {reason}; CI=true") if in_ci() else (0, f"skipped: {reason}")
    installed = subprocess.run([npm, "ci", "--silent", "--no-audit", "--no-fund"], cwd=NODE)
    if installed.returncode != 0:
        return installed.returncode, "failed: npm ci could not install the suite's development dependency"
    code, lines = streamed([npm, "test", "--silent"], NODE, lambda line: NODE_COUNT.match(line) is not None)
    counts = dict(found.groups() for found in map(NODE_COUNT.match, lines) if found)
    return code, ", ".join(f"{counts.get(key, '?')} {key}" for key in ("tests", "pass", "fail", "skipped"))


def main(args: list[str]) -> int:
    python_code, python_summary = python_suite(args)
    node_code, node_summary = node_suite()
    print(f"\nPython suite: {python_summary} (exit {python_code})")
    print(f"Node suite: {node_summary} (exit {node_code})")
    return 0 if python_code == 0 and node_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
