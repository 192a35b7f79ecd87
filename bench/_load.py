"""HTTP load for bench/run.py: wrk when it is installed, else a small asyncio client (clearly slower).

Either runs as a child process in its own session, killed at the end whatever happens, and yields a Load.
Run directly, this module is the fallback client:

    python bench/_load.py URL --connections 32 --seconds 10 --header 'X-Tokend-Request: 1'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Load:
    """What one load run measured."""

    requests: int
    seconds: float
    rps: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    p50_ms: float | None = None


def generator_name() -> str:
    return "wrk" if shutil.which("wrk") else "python asyncio client (fallback: wrk not installed)"


def run(
    url: str,
    *,
    connections: int,
    seconds: float,
    headers: list[str],
    force_python: bool = False,
    paths: list[str] | None = None,
    allow_errors: bool = False,
) -> Load:
    """Load `url` for `seconds` with keep-alive connections; raise if any answer was not 2xx.

    With `paths`, the requests go to those paths of `url` in turn. With `allow_errors`, answers that are
    not 2xx are counted in the result instead of raising (a load that is the setting, not the measure).
    """
    if force_python or not shutil.which("wrk"):
        command = [sys.executable, __file__, url, f"--connections={connections}", f"--seconds={seconds}"]
        command += [f"--header={header}" for header in headers] + [f"--path={path}" for path in paths or []]
        load = Load(**json.loads(_bounded(command, seconds)))
    else:
        # wrk takes whole seconds only.
        command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", url]
        command += [arg for header in headers for arg in ("-H", header)]
        with tempfile.TemporaryDirectory(prefix="tokend-wrk-") as tmp:
            if paths:
                script = Path(tmp) / "paths.lua"
                script.write_text(_ROUND_ROBIN.replace("PATHS", ", ".join(json.dumps(path) for path in paths)))
                command += ["-s", str(script)]
            load = parse_wrk(_bounded(command, seconds))
    if load.non_2xx and not allow_errors:
        # A refused request (403, 503) costs less than a served one: the figures would flatter the server.
        raise RuntimeError(f"{load.non_2xx} of {load.requests} answers from {url} were not 2xx")
    return load


# wrk's hook for the request to send next: each path in turn (wrk.format adds the -H headers).
_ROUND_ROBIN = """
local paths = {PATHS}
local next_path = 0
request = function()
  next_path = next_path % #paths + 1
  return wrk.format(nil, paths[next_path])
end
"""


def _bounded(command: list[str], seconds: float) -> str:
    """The stdout of `command`, which must finish soon after `seconds`; its process group dies either way."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        out, _ = process.communicate(timeout=seconds + 30)
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)  # not reaped yet, so the group id is still its own
        process.wait()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"{command[0]} failed with exit code {process.returncode}:\n{out}")
    return out


_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_wrk(out: str) -> Load:
    requests = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(\w+)", out, re.MULTILINE)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(\w+)", out, re.MULTILINE)
    if not (requests and rps and p99):
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return Load(
        requests=int(requests[1]),
        seconds=float(requests[2]) * _TIME_UNITS_MS[requests[3]] / 1000,
        rps=float(rps[1]),
        p99_ms=float(p99[1]) * _TIME_UNITS_MS[p99[2]],
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
        p50_ms=float(p50[1]) * _TIME_UNITS_MS[p50[2]] if p50 else None,
    )


# --- the fallback client ----------------------------------------------------------------------------------


@dataclass
class _Tally:
    latencies: list[float]
    non_2xx: int = 0
    socket_errors: int = 0


async def _connection(host: str, port: int, requests: list[bytes], deadline: float, tally: _Tally) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        tally.socket_errors += 1
        return
    try:
        sent = 0
        while (start := time.perf_counter()) < deadline:
            writer.write(requests[sent % len(requests)])
            sent += 1
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            await reader.readexactly(int(length[1]) if length else 0)
            tally.latencies.append(time.perf_counter() - start)
            tally.non_2xx += head[9:10] != b"2"
    except (OSError, asyncio.IncompleteReadError):
        tally.socket_errors += 1
    finally:
        writer.close()


async def _load(url: str, connections: int, seconds: float, headers: list[str], paths: list[str]) -> Load:
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    requests = [
        ("\r\n".join([f"GET {path} HTTP/1.1", f"Host: {parts.netloc}", *headers]) + "\r\n\r\n").encode()
        for path in paths or [parts.path or "/"]
    ]
    tally = _Tally([])
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(_connection(parts.hostname, parts.port, requests, deadline, tally)
                           for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latencies = sorted(tally.latencies) or [0.0]
    return Load(
        requests=len(tally.latencies),
        seconds=elapsed,
        rps=len(tally.latencies) / elapsed,
        p99_ms=latencies[int(0.99 * (len(latencies) - 1))] * 1000,
        non_2xx=tally.non_2xx,
        socket_errors=tally.socket_errors,
        p50_ms=latencies[int(0.5 * (len(latencies) - 1))] * 1000,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="A keep-alive HTTP/1.1 load generator, wrk's stand-in.")
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--path", action="append", default=[], help="paths of URL to request in turn")
    args = parser.parse_args()
    try:  # uvloop, when there, makes the client less of a bottleneck
        from uvloop import run as run_loop
    except ImportError:
        run_loop = asyncio.run
    print(json.dumps(asdict(run_loop(_load(args.url, args.connections, args.seconds, args.header, args.path)))))


if __name__ == "__main__":
    main()
