"""Running the real daemon as a subprocess, the way users do, for end-to-end tests."""

from __future__ import annotations

import itertools
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tokend.testing import FakeProviders, write_fake_config

HEADERS = {"X-Tokend-Request": "test"}
# How long a daemon may take to listen and to be ready. Starting is its imports and the first logins
# against local fakes: a second or two, but far more on a machine whose cores run other suites too (the
# suite runs in parallel). A daemon that exits meanwhile fails the wait at once, so the bound only matters
# for one that hangs.
STARTUP_TIMEOUT = 120.0


def _port_candidates() -> Iterator[int]:
    """This process's share of the ports between 20000 and the kernel's ephemeral range, from a random
    place on: another xdist worker of the same run has a share of its own (none of the same ports), the
    ports the kernel hands out (a bind to port 0, an outgoing connection) are never among them, and a
    port is not offered again before the share is used up."""
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return iter(())
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    share = range(20000 + worker, ephemeral, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    if not share:
        return iter(())
    start = random.randrange(len(share))
    return itertools.cycle(itertools.chain(share[start:], share[:start]))


_CANDIDATES = _port_candidates()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing holds, for a server a test starts (or a URL that must find none).

    The server binds it a moment later: a port the kernel could give to anyone meanwhile (another test's
    bind to port 0, any outgoing connection) would make that a race, so it is taken outside the range the
    kernel hands out, from this worker's own share, where the system says what that range is."""
    for port in itertools.islice(_CANDIDATES, 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(directory: Path, fakes: FakeProviders, *, extra: str = "", **options: object) -> Path:
    """The demo's config for the fakes, on a free port."""
    return write_fake_config(directory, fakes, free_port(), extra=extra, **options)


def add_settings(config: Path, settings: dict[str, str]) -> Path:
    """Put TOML lines in providers' tables of a written config: {"felloh": 'git_hosts = ["h"]'}."""
    text = config.read_text()
    for name, lines in settings.items():
        header = f"[providers.{name}]\n"
        assert header in text, f"no provider {name} in {config}"
        text = text.replace(header, f"{header}{lines}\n", 1)
    config.write_text(text)
    return config


def accepting(path: Path) -> bool:
    """Whether a unix socket accepts connections; probed with a socket of our own, because httpcore
    leaks its socket when a unix connect fails."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def tokend_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tokend", *args]


class Daemon:
    def __init__(self, config: Path, *, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        port = next(line for line in config.read_text().splitlines() if line.startswith("port"))
        self.url = f"http://127.0.0.1:{port.split('=')[1].strip()}"
        self.process: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.url, headers=HEADERS, timeout=30)

    def start(self, *, ready: bool = True) -> None:
        with self.log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                tokend_command("--config", str(self.config), "run"), stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.wait_listening()
        if ready:
            self.wait_until(lambda: self.client.get("/readyz").status_code == 200, timeout=STARTUP_TIMEOUT,
                            what="all providers ready")

    def wait_listening(self, timeout: float = STARTUP_TIMEOUT) -> None:
        def listening() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"tokend exited with {self.process.returncode}:\n{self.log()}")
            try:
                return self.client.get("/livez").status_code == 200
            except httpx.TransportError:
                return False

        self.wait_until(listening, timeout=timeout, what="tokend to listen")

    def wait_until(self, condition: Any, *, timeout: float = 30.0, what: str = "condition") -> None:
        """Poll `condition` every 50 ms; generous bounds, because CI machines are busy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.log()}")

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.post(path, **kwargs)

    def terminate(self, timeout: float = 15.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took to exit)."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        self.client.close()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class LimitedDaemon(Daemon):
    """The daemon with the open-files limit systemd gives a service by default (1024)."""

    def __init__(self, config: Path, *, log_path: Path, open_files: int) -> None:
        super().__init__(config, log_path=log_path)
        self.open_files = open_files

    def start(self, *, ready: bool = True) -> None:
        limit = self.open_files

        def lower_limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                tokend_command("--config", str(self.config), "run"), stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=lower_limit,
            )
        self.wait_listening()
        if ready:
            self.wait_until(lambda: self.client.get("/readyz").status_code == 200, timeout=STARTUP_TIMEOUT,
                            what="all providers ready")

    def peak_memory(self) -> int:
        """The daemon's peak resident memory so far, in bytes."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc/PID/status")


def room_for(descriptors: int) -> None:
    """Raise this process's open-files limit to `descriptors`, for tests that open that many sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < descriptors:
        assert hard >= descriptors, f"the tests need {descriptors} open files; the hard limit is {hard}"
        resource.setrlimit(resource.RLIMIT_NOFILE, (descriptors, hard))
