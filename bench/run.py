"""tokend's benchmark: one table of figures, each against a baseline measured in the same run.

    /work/venv/bin/python bench/run.py           # about 2 minutes
    /work/venv/bin/python bench/run.py --quick   # about 30 seconds

The machine is shared and noisy, so each figure is read against a baseline measured seconds away from it:
the daemon's req/s against a bare ASGI app under the same uvicorn set-up, `tokend get` against
`python -c pass` and curl, the daemon's memory against the bare app's. bench/README.md says how to read it.
All traffic goes to 127.0.0.1; every process started here is stopped on the way out, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import _load

import tokend
from tokend.server import GRACEFUL_SHUTDOWN, listen_tcp

ROOT = Path(__file__).resolve().parent.parent
SERVERS = Path(__file__).with_name("_servers.py")
RESULTS = Path(__file__).with_name("results") / "latest.json"

PROVIDER = "felloh"  # a 128-character bearer token with an expiry: the common case
TOKEN_PATH = f"/token/{PROVIDER}"
HEADER = "X-Tokend-Request: 1"  # without it the daemon answers 403, and the figures would mean nothing
CONNECTIONS = 32
STARTUP_TIMEOUT = 30.0
GRACE = 5.0  # seconds a helper gets to stop by itself before it is killed
GROWTH_TOLERANCE_MIB = 1.0  # allocator noise; a real per-request leak over 100k+ requests is far larger


@dataclass(frozen=True)
class Plan:
    load_seconds: float  # one measured load run
    warmup_seconds: float  # one unmeasured run per server first: imports, caches and pools settle
    rounds: int  # measured runs per server, taken in turns
    cli_runs: int  # timed runs of each command


PLANS = {"full": Plan(10, 2, 3, 20), "quick": Plan(5, 1, 1, 10)}


# --- helper processes ---------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[str]
    requests: int = 0  # answered under load so far
    seconds: float = 0.0  # spent under load so far

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(kib) / 1024


class Helpers:
    """The processes of bench/_servers.py, each in its own session and process group; all stopped on exit."""

    def __init__(self, logs: Path) -> None:
        self._logs = logs
        self._running: list[subprocess.Popen[str]] = []

    def __enter__(self) -> Helpers:
        return self

    def __exit__(self, *exc: object) -> None:
        for process in reversed(self._running):
            self.stop(process)

    def start(self, role: str, *args: str, fds: tuple[int, ...] = ()) -> subprocess.Popen[str]:
        with (self._logs / f"{role}.log").open("w") as log:
            process = subprocess.Popen(
                [sys.executable, str(SERVERS), role, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=log, text=True, pass_fds=fds, start_new_session=True,
            )
        self._running.append(process)
        return process

    def stop(self, process: subprocess.Popen[str]) -> None:
        if process not in self._running:
            return
        self._running.remove(process)
        assert process.stdin is not None and process.stdout is not None
        process.stdin.close()  # the helper's cue to shut down cleanly
        try:
            process.wait(timeout=GRACE)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # still unreaped, so the group id is still its own
            process.wait()
        process.stdout.close()

    def log_tail(self, role: str, lines: int = 20) -> str:
        return "\n".join((self._logs / f"{role}.log").read_text().splitlines()[-lines:])

    def first_line(self, process: subprocess.Popen[str], role: str) -> str:
        """The first line `role` prints, waited for no longer than STARTUP_TIMEOUT."""
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], STARTUP_TIMEOUT)
        line = process.stdout.readline().strip() if ready else ""
        if not line:
            raise RuntimeError(f"the {role} printed nothing:\n{self.log_tail(role)}")
        return line


def _get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers=dict([HEADER.split(": ")]))
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _wait_until_ok(helpers: Helpers, server: Server, path: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the {server.name} exited at start:\n{helpers.log_tail(server.name)}")
        with contextlib.suppress(OSError):
            if _get(server.port, path)[0] == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"the {server.name} was not ready in {STARTUP_TIMEOUT:g}s:\n{helpers.log_tail(server.name)}")


def _start_daemon(helpers: Helpers, tmp: Path, cpu: list[str]) -> Server:
    # tokend's own listen_tcp, so the daemon gets the socket `tokend run` would make (backlog, TCP_NODELAY);
    # bound here first, so the fakes can write the real port into the config.
    with listen_tcp("127.0.0.1", 0) as sock:
        port = sock.getsockname()[1]
        fakes = helpers.start("fakes", f"--dir={tmp}", f"--port={port}")
        config = helpers.first_line(fakes, "fakes")
        process = helpers.start("daemon", f"--fd={sock.fileno()}", f"--config={config}", *cpu, fds=(sock.fileno(),))
    daemon = Server("daemon", port, process)
    _wait_until_ok(helpers, daemon, "/readyz")  # every provider logged in: the hot path is the fast path
    return daemon


def _start_bare(helpers: Helpers, body_size: int, cpu: list[str]) -> Server:
    with listen_tcp("127.0.0.1", 0) as sock:
        process = helpers.start("bare", f"--fd={sock.fileno()}", f"--body-size={body_size}",
                                f"--graceful={GRACEFUL_SHUTDOWN}", *cpu, fds=(sock.fileno(),))
        bare = Server("bare", sock.getsockname()[1], process)
    _wait_until_ok(helpers, bare, TOKEN_PATH)
    return bare


def _pin_cpus() -> tuple[list[str], str]:
    """Both servers on one CPU, this runner (so the load generator and the CLI runs) on another."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return [], "not pinned (one CPU)"
    os.sched_setaffinity(0, {cpus[1]})
    return [f"--cpu={cpus[0]}"], f"servers on CPU {cpus[0]}, load generator and CLI runs on CPU {cpus[1]}"


# --- measurements -------------------------------------------------------------------------------------------


@dataclass
class Measured:
    loads: dict[str, list[_load.Load]]  # the measured load runs of each server
    rss_mib: dict[str, float]
    requests: dict[str, int]  # the daemon's answered requests when each RSS was read
    cli_ms: dict[str, list[float]]
    body_bytes: int


def _load_server(server: Server, seconds: float, force_python: bool) -> _load.Load:
    load = _load.run(server.url(TOKEN_PATH), connections=CONNECTIONS, seconds=seconds, headers=[HEADER],
                     force_python=force_python)
    server.requests += load.requests
    server.seconds += load.seconds
    return load


def _rps_rounds(servers: list[Server], plan: Plan, force_python: bool) -> dict[str, list[_load.Load]]:
    for server in servers:
        _load_server(server, plan.warmup_seconds, force_python)
    loads: dict[str, list[_load.Load]] = {server.name: [] for server in servers}
    for round_ in range(plan.rounds):
        # A B, B A, A B...: a slow spell on the shared machine lands on both servers alike.
        for server in servers if round_ % 2 == 0 else servers[::-1]:
            loads[server.name].append(_load_server(server, plan.load_seconds, force_python))
    return loads


def _time_cli(daemon: Server, runs: int, cwd: Path) -> dict[str, list[float]]:
    tokend_script = Path(sys.executable).with_name("tokend")
    tokend_get = [str(tokend_script)] if tokend_script.exists() else [sys.executable, "-m", "tokend"]
    commands = {
        "tokend get": [*tokend_get, "get", PROVIDER, "--url", daemon.url("")],
        "python -c pass": [sys.executable, "-c", "pass"],
    }
    if shutil.which("curl"):
        commands["curl"] = ["curl", "-s", "-f", "-H", HEADER, daemon.url(TOKEN_PATH)]
    # No TOKEND_* from the caller's shell, and a directory with no tokend.toml: `--url` alone decides.
    env = {key: value for key, value in os.environ.items() if not key.startswith("TOKEND_")}
    cwd.mkdir()
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for round_ in range(runs + 1):
        for name, command in commands.items():  # in turns, so a noisy second hits all three alike
            started = time.perf_counter()
            result = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True, check=False, timeout=30)
            elapsed_ms = (time.perf_counter() - started) * 1000
            if result.returncode != 0:
                raise RuntimeError(f"{name} exited with {result.returncode}: {result.stderr.strip()}")
            if round_:  # the first round only warms the page cache
                samples[name].append(elapsed_ms)
    return samples


def _measure(helpers: Helpers, tmp: Path, plan: Plan, cpu: list[str], force_python: bool) -> Measured:
    daemon = _start_daemon(helpers, tmp, cpu)
    rss = {"daemon at start": daemon.rss_mib()}
    body = _get(daemon.port, TOKEN_PATH)[1]
    bare = _start_bare(helpers, len(body), cpu)
    rss["bare at start"] = bare.rss_mib()
    loads = _rps_rounds([bare, daemon], plan, force_python)
    rss["bare after load"] = bare.rss_mib()
    helpers.stop(bare)
    requests = {"N": daemon.requests}
    rss["daemon after N"] = daemon.rss_mib()
    _load_server(daemon, daemon.seconds, force_python)  # as long again: about N more requests
    requests["2N"] = daemon.requests
    rss["daemon after 2N"] = daemon.rss_mib()
    cli = _time_cli(daemon, plan.cli_runs, tmp / "cli")
    return Measured(loads, rss, requests, cli, len(body))


# --- the report ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    on: str  # "value", "ratio" (value / baseline) or "growth" (value - baseline)
    op: str  # "<=" or ">="
    limit: float

    def met(self, row: Row) -> bool:
        x = {"value": row.value, "ratio": row.ratio, "growth": row.value - (row.baseline or 0.0)}[self.on]
        return x is not None and (x <= self.limit if self.op == "<=" else x >= self.limit)

    def __str__(self) -> str:
        return f"{self.on}{self.op}{self.limit:g}"


@dataclass(frozen=True)
class Row:
    metric: str
    unit: str
    value: float
    baseline: float | None
    now: tuple[Target, ...] = ()
    later: tuple[Target, ...] = ()  # the next goal: reported, not yet required

    @property
    def ratio(self) -> float | None:
        return self.value / self.baseline if self.baseline else None

    def verdict(self, targets: tuple[Target, ...]) -> str:
        if not targets:
            return "-"
        return "PASS" if all(target.met(self) for target in targets) else "FAIL"

    def target_text(self) -> str:
        now = " & ".join(map(str, self.now)) or "-"
        return now + (f" (later {' & '.join(map(str, self.later))})" if self.later else "")

    def result_text(self) -> str:
        return self.verdict(self.now) + (f" (later {self.verdict(self.later)})" if self.later else "")


def _rows(m: Measured) -> list[Row]:
    # Each server's best round, and that round's p99: noise on a shared machine only ever slows a run
    # down, so the fastest run is the closest to what the server can do.
    best = {server: max(loads, key=lambda load: load.rps) for server, loads in m.loads.items()}
    cli = {name: statistics.median(samples) for name, samples in m.cli_ms.items()}
    n, n2 = (_count(m.requests[key]) for key in ("N", "2N"))
    rows = [
        Row(f"GET {TOKEN_PATH} req/s vs bare ASGI", "req/s", best["daemon"].rps, best["bare"].rps,
            (Target("ratio", ">=", 0.5),), (Target("ratio", ">=", 0.85),)),
        Row(f"p99 latency at {CONNECTIONS} conns vs bare", "ms", best["daemon"].p99_ms, best["bare"].p99_ms),
        Row("tokend get vs python -c pass", "ms", cli["tokend get"], cli["python -c pass"],
            (Target("value", "<=", 150),), (Target("ratio", "<=", 2),)),
    ]
    if "curl" in cli:
        rows.append(Row("tokend get vs curl", "ms", cli["tokend get"], cli["curl"]))
    rss = m.rss_mib
    limit, later_limit = (Target("value", "<=", 80),), (Target("value", "<=", 60),)
    return [
        *rows,
        Row("RSS at start vs bare at start", "MiB", rss["daemon at start"], rss["bare at start"], limit, later_limit),
        Row(f"RSS after N={n} req vs bare loaded", "MiB", rss["daemon after N"], rss["bare after load"],
            limit, later_limit),
        Row(f"RSS after 2N={n2} req vs after N", "MiB", rss["daemon after 2N"], rss["daemon after N"],
            limit, (*later_limit, Target("growth", "<=", GROWTH_TOLERANCE_MIB))),
    ]


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if unit == "req/s" else f"{value:.1f}"


def _table(rows: list[Row]) -> str:
    cells = [("metric", "unit", "value", "baseline", "ratio", "target", "result")]
    for row in rows:
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}"
        cells.append((row.metric, row.unit, _number(row.value, row.unit), _number(row.baseline, row.unit), ratio,
                      row.target_text(), row.result_text()))
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    numeric = {2, 3, 4}
    return "\n".join(
        "  ".join(cell.rjust(width) if i in numeric else cell.ljust(width)
                  for i, (cell, width) in enumerate(zip(line, widths, strict=True))).rstrip()
        for line in cells
    )


def _report(m: Measured, rows: list[Row], context: dict[str, object]) -> dict[str, object]:
    return {
        **context,
        "rows": [{**asdict(row), "ratio": row.ratio, "target": row.target_text(), "result_now": row.verdict(row.now),
                  "result_later": row.verdict(row.later)} for row in rows],
        "loads": {name: [asdict(load) for load in loads] for name, loads in m.loads.items()},
        "rss_mib": m.rss_mib,
        "daemon_requests": m.requests,
        "cli_ms": m.cli_ms,
        "body_bytes": m.body_bytes,
    }


def _git_revision() -> str:
    result = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                            text=True, check=False)
    return result.stdout.strip() or "unknown"


# --- main -----------------------------------------------------------------------------------------------------


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # so that the `finally`s and `with`s below stop every helper


def _context(plan: Plan, pinning: str, python_load: bool, seconds: float) -> dict[str, object]:
    """What a reader of latest.json needs to compare two runs."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable, *sys.argv]),
        "git": _git_revision(),
        "plan": asdict(plan),
        "load_generator": "python asyncio client (--python-load)" if python_load else _load.generator_name(),
        "pinning": pinning,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "seconds": round(seconds, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter runs: about 30 seconds in all")
    parser.add_argument("--python-load", action="store_true", help="use the Python load generator even if wrk is there")
    args = parser.parse_args()
    if Path(tokend.__file__).resolve().parent.parent != ROOT:
        sys.exit(f"tokend is imported from {tokend.__file__}, not this checkout: pip install -e {ROOT}")
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    plan = PLANS["quick" if args.quick else "full"]
    started = time.monotonic()
    cpu, pinning = _pin_cpus()
    try:
        with tempfile.TemporaryDirectory(prefix="tokend-bench-") as tmp, Helpers(Path(tmp)) as helpers:
            measured = _measure(helpers, Path(tmp), plan, cpu, args.python_load)
    except (RuntimeError, subprocess.SubprocessError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the helpers are stopped by now
        return 130
    rows = _rows(measured)
    context = _context(plan, pinning, args.python_load, time.monotonic() - started)
    print(_table(rows))
    print(f"\nload: {context['load_generator']}, {CONNECTIONS} connections, {plan.rounds} x {plan.load_seconds:g}s "
          f"per server (best shown), {measured.body_bytes}-byte bodies; {pinning}; "
          f"CLI: median of {plan.cli_runs}; took {context['seconds']}s; git {context['git']}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(_report(measured, rows, context), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
