"""What tokend_client's Auth classes add to each request, with a ready token: target under 0.3 ms.

    pip install -e . './clients/python[httpx,requests]'
    python bench/client_overhead.py            # about 40 s on 2 cores
    python bench/client_overhead.py --quick    # a few seconds, for a smoke run

For httpx (sync and async) and requests, it sends the same GET to a local upstream server, without auth
(the baseline) and with `Auth("felloh")`, in blocks of 20 side by side so that both see the same moment of
the machine; it prints the medians of the blocks' per-request times, and the median of their paired
differences and the ratio to the baseline of the same run. The machines are shared and noisy: read the
difference and the PASS/FAIL column, not the absolute numbers. Also printed: the auth step alone, in-process
(no network at all), and, for scale, what one round trip to tokend costs (what every request would pay
without the client's cache).

The upstream server runs in a process of its own (`--serve`, an asyncio server that answers every request
with the same 200), so that its work does not compete with the measured client for the GIL. tokend is the
real daemon against the fake providers of tokend.testing. Everything listens on 127.0.0.1 and stops at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import requests
from tokend_client import Client
from tokend_client.httpx import Auth as HttpxAuth
from tokend_client.requests import Auth as RequestsAuth

from tokend.testing import serve_fakes, write_fake_config

TARGET_MS = 0.3
_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer blocks of fewer requests")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the upstream server role
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve())
        return
    blocks, size = (40, 10) if args.quick else (300, 20)
    with _stack() as (tokend_url, upstream_url):
        _report(tokend_url, upstream_url, blocks, size)


# -- the upstream server (its own process) -------------------------------------------------------------------


class _Answering(asyncio.Protocol):
    """Answers each request head (GETs: no body) with the same 200, on a kept-alive connection."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            self._buffer = self._buffer[end + 4:]
            self._transport.write(_ANSWER)


async def _serve() -> None:
    server = await asyncio.get_running_loop().create_server(_Answering, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    # Ends when the parent closes our stdin (or dies): nothing is left behind.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


# -- setup ----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _stack() -> Iterator[tuple[str, str]]:
    """The fakes (in-process threads, idle once the token is there), the daemon and the upstream server."""
    with tempfile.TemporaryDirectory() as directory, serve_fakes() as fakes, contextlib.ExitStack() as stack:
        port = _free_port()
        config = write_fake_config(Path(directory), fakes, port)
        logs = Path(directory)
        daemon = _start([sys.executable, "-m", "tokend", "--config", str(config), "run"], stack, logs / "daemon.log")
        upstream = _start([sys.executable, __file__, "--serve"], stack, logs / "upstream.log", pipe=True)
        assert upstream.stdout is not None
        upstream_url = f"http://127.0.0.1:{upstream.stdout.readline().strip()}"
        tokend_url = f"http://127.0.0.1:{port}"
        _wait_ready(tokend_url, daemon)
        yield tokend_url, upstream_url


def _start(
    command: list[str], stack: contextlib.ExitStack, log_path: Path, *, pipe: bool = False
) -> subprocess.Popen[str]:
    """Start a helper that stops with the stack; stdin is a pipe, so that it also ends if we die."""
    log = stack.enter_context(log_path.open("w"))
    stdout = subprocess.PIPE if pipe else log
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=stdout, stderr=log, text=True)
    stack.callback(_stop, process)
    return process


def _stop(process: subprocess.Popen[str]) -> None:
    if process.stdin is not None:
        process.stdin.close()
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def _wait_ready(url: str, daemon: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise SystemExit(f"tokend exited with {daemon.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        time.sleep(0.1)
    raise SystemExit("tokend did not become ready in 60 s")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- measuring ------------------------------------------------------------------------------------------------


def _per_request(call: Callable[[], object], count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        call()
    return (time.perf_counter() - started) / count


async def _per_request_async(call: Callable[[], Awaitable[object]], count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        await call()
    return (time.perf_counter() - started) / count


class _Figures(NamedTuple):
    plain: float  # median seconds per request, over the blocks
    authed: float
    difference: float  # median of the blocks' paired differences: what the Auth adds


def _summary(plain: list[float], authed: list[float]) -> _Figures:
    differences = [a - p for p, a in zip(plain, authed, strict=True)]
    return _Figures(statistics.median(plain), statistics.median(authed), statistics.median(differences))


def _paired(plain: Callable[[], object], authed: Callable[[], object], blocks: int, size: int) -> _Figures:
    """Blocks of `size` requests, plain and with Auth side by side (which goes first alternates), so that
    both see the same moment of a shared machine; the medians shrug off the blocks another process hit."""
    _per_request(plain, size * 5), _per_request(authed, size * 5)  # warm-up: connections, the credential
    plain_times: list[float] = []
    auth_times: list[float] = []
    for index in range(blocks):
        if index % 2:
            auth_times.append(_per_request(authed, size))
            plain_times.append(_per_request(plain, size))
        else:
            plain_times.append(_per_request(plain, size))
            auth_times.append(_per_request(authed, size))
    return _summary(plain_times, auth_times)


async def _paired_async(plain: Callable[[], Awaitable[object]], authed: Callable[[], Awaitable[object]],
                        blocks: int, size: int) -> _Figures:
    await _per_request_async(plain, size * 5), await _per_request_async(authed, size * 5)
    plain_times: list[float] = []
    auth_times: list[float] = []
    for index in range(blocks):
        if index % 2:
            auth_times.append(await _per_request_async(authed, size))
            plain_times.append(await _per_request_async(plain, size))
        else:
            plain_times.append(await _per_request_async(plain, size))
            auth_times.append(await _per_request_async(authed, size))
    return _summary(plain_times, auth_times)


def _httpx_sync(client: Client, url: str, blocks: int, size: int) -> _Figures:
    with httpx.Client() as plain, httpx.Client(auth=HttpxAuth("felloh", client=client)) as authed:
        return _paired(lambda: plain.get(url), lambda: authed.get(url), blocks, size)


def _httpx_async(client: Client, url: str, blocks: int, size: int) -> _Figures:
    async def go() -> _Figures:
        async with httpx.AsyncClient() as plain, httpx.AsyncClient(auth=HttpxAuth("felloh", client=client)) as authed:
            return await _paired_async(lambda: plain.get(url), lambda: authed.get(url), blocks, size)

    return asyncio.run(go())


def _requests(client: Client, url: str, blocks: int, size: int) -> _Figures:
    with requests.Session() as plain, requests.Session() as authed:
        authed.auth = RequestsAuth("felloh", client=client)
        return _paired(lambda: plain.get(url, timeout=10), lambda: authed.get(url, timeout=10), blocks, size)


def _auth_step_alone(client: Client, url: str, count: int) -> dict[str, float]:
    """The auth step with no network: what each Auth does to a request before it is sent."""
    httpx_auth, requests_auth = HttpxAuth("felloh", client=client), RequestsAuth("felloh", client=client)
    httpx_request = httpx.Request("GET", url)
    prepared = requests.Request("GET", url).prepare()

    def httpx_step() -> None:
        flow = httpx_auth.sync_auth_flow(httpx_request)
        next(flow)
        flow.close()

    steps = {"httpx.Auth flow step": httpx_step, "requests.Auth call": lambda: requests_auth(prepared.copy()),
             "Client.credential (kept)": lambda: client.credential("felloh")}
    return {name: min(_per_request(step, count * 5) for _ in range(3)) for name, step in steps.items()}


def _report(tokend_url: str, upstream_url: str, blocks: int, size: int) -> None:
    url = f"{upstream_url}/agent/organisations"
    with Client(tokend_url) as client, Client(tokend_url, max_age=0) as uncached:
        client.credential("felloh")
        results = {"httpx sync": _httpx_sync(client, url, blocks, size),
                   "httpx async": _httpx_async(client, url, blocks, size),
                   "requests": _requests(client, url, blocks, size)}
        alone = _auth_step_alone(client, url, 2000)
        round_trip = min(_per_request(lambda: uncached.credential("felloh"), 500) for _ in range(3))
    print(f"tokend_client per-request overhead, ready token ({blocks} blocks of {size} requests each way, "
          f"medians; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})\n")
    print(f"{'library':<14}{'plain GET':>12}{'with Auth':>12}{'difference':>13}{'ratio':>8}   target < {TARGET_MS} ms")
    for name, (plain, authed, added) in results.items():
        difference = added * 1000
        verdict = "PASS" if difference < TARGET_MS else "FAIL"
        print(f"{name:<14}{plain * 1000:>9.3f} ms{authed * 1000:>9.3f} ms{difference:>+10.3f} ms"
              f"{authed / plain:>7.2f}x   {verdict}")
    print("\nin-process, no network (min of 3):")
    for name, seconds in alone.items():
        print(f"  {name:<28}{seconds * 1e6:>8.1f} us")
    print(f"  {'one round trip to tokend':<28}{round_trip * 1e6:>8.1f} us  (paid only when no fresh token is kept)")


if __name__ == "__main__":
    main()
