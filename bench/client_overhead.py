"""What tokend_client's Auth classes add to each request, with a ready token: target under 0.3 ms.

    pip install -e . './clients/python[httpx,requests]'
    python bench/client_overhead.py            # about a minute on 2 cores
    python bench/client_overhead.py --quick    # a few seconds, for a smoke run

For httpx (sync and async) and requests, it sends the same GET to a local upstream server, without auth
(the baseline) and with `Auth("felloh")`, alternating the two in rounds so that both see the same machine;
it prints the median of the rounds' per-request times and the difference and ratio to the baseline of the
same run. The machines are shared and noisy: read the difference and the PASS/FAIL column, not the absolute
numbers. Also printed: the auth step alone, in-process (no network at all), and, for scale, what one round
trip to tokend costs (what every request would pay without the client's cache).

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
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the upstream server role
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve())
        return
    count, rounds = (300, 3) if args.quick else (2000, 7)
    with _stack() as (tokend_url, upstream_url):
        _report(tokend_url, upstream_url, count, rounds)


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


def _alternate(
    plain: Callable[[int], float], authed: Callable[[int], float], count: int, rounds: int
) -> tuple[float, float]:
    """Median per-request seconds of each, over rounds that alternate which one goes first."""
    plain(count // 10), authed(count // 10)  # warm-up: connections, caches, the credential
    plain_times: list[float] = []
    auth_times: list[float] = []
    for round_ in range(rounds):
        if round_ % 2:
            auth_times.append(authed(count))
            plain_times.append(plain(count))
        else:
            plain_times.append(plain(count))
            auth_times.append(authed(count))
    return statistics.median(plain_times), statistics.median(auth_times)


def _httpx_sync(client: Client, url: str, count: int, rounds: int) -> tuple[float, float]:
    with httpx.Client() as plain, httpx.Client(auth=HttpxAuth("felloh", client=client)) as authed:
        return _alternate(lambda n: _per_request(lambda: plain.get(url), n),
                          lambda n: _per_request(lambda: authed.get(url), n), count, rounds)


def _httpx_async(client: Client, url: str, count: int, rounds: int) -> tuple[float, float]:
    async def go() -> tuple[float, float]:
        async with httpx.AsyncClient() as plain, httpx.AsyncClient(auth=HttpxAuth("felloh", client=client)) as authed:
            plain_times: list[float] = []
            auth_times: list[float] = []
            await _per_request_async(lambda: plain.get(url), count // 10)
            await _per_request_async(lambda: authed.get(url), count // 10)
            for round_ in range(rounds):
                pair = [(plain_times, plain), (auth_times, authed)]
                for times, session in pair[::-1] if round_ % 2 else pair:
                    times.append(await _per_request_async(lambda s=session: s.get(url), count))  # type: ignore[misc]
            return statistics.median(plain_times), statistics.median(auth_times)

    return asyncio.run(go())


def _requests(client: Client, url: str, count: int, rounds: int) -> tuple[float, float]:
    with requests.Session() as plain, requests.Session() as authed:
        authed.auth = RequestsAuth("felloh", client=client)
        return _alternate(lambda n: _per_request(lambda: plain.get(url, timeout=10), n),
                          lambda n: _per_request(lambda: authed.get(url, timeout=10), n), count, rounds)


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


def _report(tokend_url: str, upstream_url: str, count: int, rounds: int) -> None:
    url = f"{upstream_url}/agent/organisations"
    with Client(tokend_url) as client, Client(tokend_url, max_age=0) as uncached:
        client.credential("felloh")
        results = {"httpx sync": _httpx_sync(client, url, count, rounds),
                   "httpx async": _httpx_async(client, url, count, rounds),
                   "requests": _requests(client, url, count, rounds)}
        alone = _auth_step_alone(client, url, count)
        round_trip = min(_per_request(lambda: uncached.credential("felloh"), count // 4) for _ in range(3))
    print(f"tokend_client per-request overhead, ready token ({count} requests x {rounds} rounds, medians; "
          f"{os.cpu_count()} CPUs)\n")
    print(f"{'library':<14}{'plain GET':>12}{'with Auth':>12}{'difference':>13}{'ratio':>8}   target < {TARGET_MS} ms")
    for name, (plain, authed) in results.items():
        difference = (authed - plain) * 1000
        verdict = "PASS" if difference < TARGET_MS else "FAIL"
        print(f"{name:<14}{plain * 1000:>9.3f} ms{authed * 1000:>9.3f} ms{difference:>+10.3f} ms"
              f"{authed / plain:>7.2f}x   {verdict}")
    print("\nin-process, no network (min of 3):")
    for name, seconds in alone.items():
        print(f"  {name:<28}{seconds * 1e6:>8.1f} us")
    print(f"  {'one round trip to tokend':<28}{round_trip * 1e6:>8.1f} us  (paid only when no fresh token is kept)")


if __name__ == "__main__":
    main()
