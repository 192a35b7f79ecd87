"""Start-up memory of the daemon with and without a signing kind: `python bench/signing_memory.py`.

The daemon imports cryptography and joserfc only when a provider signs (github_app, google_service_account,
jwt_bearer, private_key_jwt). This starts `tokend run` twice against the demo's fakes, once with its three
providers and once with a GitHub App provider added, and prints each one's RSS once every provider is ready
(the median of `--runs` starts each), and whether the signing libraries were loaded.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._procs import rss_mib
from tokend.testing import FakeGitHub, FakeServer, serve_fakes, write_fake_config

HEADERS = {"X-Tokend-Request": "1"}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _measure(config: Path, port: int) -> tuple[float, bool]:
    """RSS (MiB) of a daemon once ready, and whether cryptography's native library is mapped into it."""
    process = subprocess.Popen([sys.executable, "-m", "tokend", "--config", str(config), "run"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", headers=HEADERS).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"the daemon did not become ready (exit code {process.poll()})")
            time.sleep(0.05)
        time.sleep(1.0)  # let the first renewals' scheduling settle
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        return rss_mib(process.pid), "cryptography" in maps
    finally:
        process.terminate()
        process.wait(timeout=15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    github = FakeGitHub()
    with serve_fakes() as fakes, FakeServer(github.app) as server, tempfile.TemporaryDirectory() as tmp:
        key = Path(tmp) / "app.pem"
        key.touch(mode=0o600)
        key.write_text(github.private_key)
        signing = (f'[providers.github]\nkind = "github_app"\nclient_id = "{github.client_id}"\n'
                   f'installation_id = {min(github.installations)}\nprivate_key = {{ file = "{key}" }}\n'
                   f'base_url = "{server.url}"\n')
        for label, extra in (("3 providers, no signing kind", ""), ("3 providers + a github_app", signing)):
            port = _free_port()
            directory = Path(tmp) / label.split(",")[0].replace(" ", "-") / str(bool(extra))
            directory.mkdir(parents=True)
            config = write_fake_config(directory, fakes, port, extra=extra)
            figures = [_measure(config, port) for _ in range(args.runs)]
            loaded = {mapped for _, mapped in figures}
            print(f"{label}: RSS at start {statistics.median(rss for rss, _ in figures):.1f} MiB "
                  f"(median of {args.runs}); cryptography loaded: {' / '.join(map(str, sorted(loaded)))}")


if __name__ == "__main__":
    main()
