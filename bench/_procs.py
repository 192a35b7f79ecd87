"""The helper processes of bench/run.py: starting and stopping them, and reading what they cost (RSS, CPU).

Every helper is bench/_servers.py in a role, in its own session and process group, stopped on the way out
whatever happens: its stdin is its lifeline, so even a runner killed with SIGKILL leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SERVERS = Path(__file__).with_name("_servers.py")
HEADER = "X-Tokend-Request: 1"  # without it the daemon answers 403, and the figures would mean nothing
STARTUP_TIMEOUT = 30.0
GRACE = 5.0  # seconds a helper gets to stop by itself before it is killed
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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
        return rss_mib(self.process.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(kib) / 1024


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of the process, all its threads, so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime and stime, fields 14 and 15 of stat(5)


class Helpers:
    """The processes of bench/_servers.py; all stopped on exit, the last started first."""

    def __init__(self, logs: Path) -> None:
        self._logs = logs
        self._running: list[subprocess.Popen[str]] = []

    def __enter__(self) -> Helpers:
        return self

    def __exit__(self, *exc: object) -> None:
        for process in reversed(self._running):
            self.stop(process)

    def start(self, role: str, *args: str, log: str | None = None, fds: tuple[int, ...] = ()) -> subprocess.Popen[str]:
        with (self._logs / f"{log or role}.log").open("w") as out:
            process = subprocess.Popen(
                [sys.executable, str(SERVERS), role, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=out, text=True, pass_fds=fds, start_new_session=True,
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

    def log_tail(self, log: str, lines: int = 20) -> str:
        return "\n".join((self._logs / f"{log}.log").read_text().splitlines()[-lines:])

    def first_line(self, process: subprocess.Popen[str], log: str) -> str:
        """The first line the helper prints, waited for no longer than STARTUP_TIMEOUT."""
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], STARTUP_TIMEOUT)
        line = process.stdout.readline().strip() if ready else ""
        if not line:
            raise RuntimeError(f"the {log} printed nothing:\n{self.log_tail(log)}")
        return line


def get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers=dict([HEADER.split(": ")]))
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_until_ok(helpers: Helpers, server: Server, path: str, timeout: float = STARTUP_TIMEOUT,
                  every: float = 0.05) -> float | None:
    """Seconds until `path` answers 200 (polled every `every` s), or None after `timeout`."""
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < timeout:
        if server.process.poll() is not None:
            raise RuntimeError(f"the {server.name} exited:\n{helpers.log_tail(server.name)}")
        with contextlib.suppress(OSError):
            if get(server.port, path)[0] == 200:
                return elapsed
        time.sleep(every)
    return None


class CpuSampler:
    """A process's CPU time, read in the background every `every` seconds until stop(): (Unix time, seconds)."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        self.samples: list[tuple[float, float]] = []
        self._pid, self._every = pid, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while True:
            with contextlib.suppress(OSError):  # the process is gone: the samples so far stand
                self.samples.append((time.time(), cpu_seconds(self._pid)))
            if self._stop.wait(self._every):
                return

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.samples

    def percent(self, start: float, end: float) -> float | None:
        """The CPU share between the first sample at or after `start` and the last at or before `end`."""
        inside = [(at, cpu) for at, cpu in self.samples if start <= at <= end]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] <= 0:
            return None
        (t0, c0), (t1, c1) = inside[0], inside[-1]
        return 100 * (c1 - c0) / (t1 - t0)
