"""`tokend demo`: the real daemon against the built-in fake providers, so a newcomer sees it work.

The fakes (tokend.testing) run in background threads; the daemon runs as `tokend run` would, from a
config file written to a private temporary directory, with its secrets in 0600 files.
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tokend.config import Settings
from tokend.discovery import DEFAULT_PORT
from tokend.errors import TokendError
from tokend.server import listen_tcp
from tokend.testing import FakeProviders, serve_fakes, write_fake_config


@dataclass
class Demo:
    settings: Settings
    sock: socket.socket
    banner: list[str]
    config_path: Path  # the demo's config file, read again on SIGHUP or `tokend reload`


@contextlib.contextmanager
def demo_environment(*, port: int | None, lifetime: float) -> Iterator[Demo]:
    """Fakes started, a config written for them, the daemon's socket bound: all it needs is to be served.

    With no port given, 8765 if it is free, else any free port (a real tokend may already hold 8765).
    """
    with serve_fakes(lifetime=lifetime) as fakes, tempfile.TemporaryDirectory(prefix="tokend-demo-") as tmp:
        # Bind first, so that a free port is known before the config (and `tokend get`) names it.
        sock = _listen(port)
        actual_port = sock.getsockname()[1]
        config_path = write_fake_config(Path(tmp), fakes, actual_port)
        settings = Settings.load(config_path)
        yield Demo(settings, sock, banner(config_path, actual_port, fakes, lifetime), config_path)


def _listen(port: int | None) -> socket.socket:
    if port is not None:
        return listen_tcp("127.0.0.1", port)
    try:
        return listen_tcp("127.0.0.1", DEFAULT_PORT)
    except TokendError:
        return listen_tcp("127.0.0.1", 0)


def banner(config: Path, port: int, fakes: FakeProviders, lifetime: float) -> list[str]:
    base = f"http://127.0.0.1:{port}"
    header = "-H 'X-Tokend-Request: 1'"
    felloh_token = f"$(curl -s {header} '{base}/token/felloh?format=raw')"
    return [
        f"tokend demo: three fake providers whose tokens live {lifetime:g}s, renewed at about "
        f"{lifetime * 2 / 3:.0f}s. Config: {config}",
        "",
        "Try, in another terminal:",
        f"  curl -s {header} {base}/token/felloh",
        f"  curl -s {header} '{base}/token/fts?format=raw'",
        f"  curl -s {header} {base}/token/flotiq",
        f"  curl -s {header} {base}/status",
        f"  tokend get felloh --url {base}",
        "Use a token against the fake Felloh API:",
        f'  curl -s -H "Authorization: Bearer {felloh_token}" {fakes.felloh_url}{fakes.felloh.protected_path}',
        "",
        "Each login and renewal shows below as a 'login provider=...' line. Press Ctrl-C to stop.",
        "",
    ]
