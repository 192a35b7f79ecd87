"""Fake upstream providers: real HTTP servers on 127.0.0.1 that answer like the providers' documentation.

They serve the test-suite and `tokend demo`, so that tokend can be run end to end with no account anywhere.

    with serve_fakes() as fakes:
        fakes.felloh.fail(503, times=1, retry_after=2)   # the next login answers 503 with Retry-After
        ...  # point tokend at fakes.felloh_url, fakes.fintech_studios_url and fakes.flotiq_url

Each fake is a Starlette app (`fake.app`); `FakeServer` runs one with uvicorn in a daemon thread. Tests flip
a fake's switches (`fail`, `hang`, `recover`, `revoke`, `report_expiry`, credentials, `lifetime`) from their own
thread while the server answers from its thread, so everything the two share is read or written under a lock.
An upstream that is down altogether is a stopped `FakeServer`; `restart()` brings it back on the same port.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tokend.testing.aws import FakeSTS
from tokend.testing.base import ExpiryStyle, FakeAPI, FakeServer, FakeUpstream, pattern
from tokend.testing.entra import FakeEntraID
from tokend.testing.federation import FakeEntraFederated, FakeGoogleFederation, FakeOIDCIssuer, FakeTokenExchange
from tokend.testing.felloh import FakeFelloh, FellohKey
from tokend.testing.fintech_studios import FakeFintechStudios
from tokend.testing.flotiq import FakeFlotiq
from tokend.testing.github import FakeGitHub
from tokend.testing.google import FakeGoogle
from tokend.testing.http import FakeTokenAPI
from tokend.testing.keys import new_private_key, self_signed_certificate
from tokend.testing.oauth2 import FakeAuthorizationServer, FakeOAuth2
from tokend.testing.salesforce import FakeSalesforce

__all__ = [
    "ExpiryStyle",
    "FakeAPI",
    "FakeAuthorizationServer",
    "FakeEntraFederated",
    "FakeEntraID",
    "FakeFelloh",
    "FakeFintechStudios",
    "FakeFlotiq",
    "FakeGitHub",
    "FakeGoogle",
    "FakeGoogleFederation",
    "FakeOAuth2",
    "FakeOIDCIssuer",
    "FakeProviders",
    "FakeSTS",
    "FakeSalesforce",
    "FakeServer",
    "FakeTokenAPI",
    "FakeTokenExchange",
    "FakeUpstream",
    "FellohKey",
    "new_private_key",
    "pattern",
    "self_signed_certificate",
    "serve_fakes",
    "write_fake_config",
]




@dataclass
class FakeProviders:
    """The three fakes started by serve_fakes(), with the base URL each one answers on."""

    felloh: FakeFelloh
    fintech_studios: FakeFintechStudios
    flotiq: FakeFlotiq
    felloh_url: str
    fintech_studios_url: str
    flotiq_url: str


@contextlib.contextmanager
def serve_fakes(*, lifetime: float = 3600.0) -> Iterator[FakeProviders]:
    """Start all three fakes, each on its own FakeServer, and stop them on exit."""
    felloh, fintech_studios, flotiq = (
        FakeFelloh(lifetime=lifetime),
        FakeFintechStudios(lifetime=lifetime),
        FakeFlotiq(),
    )
    servers = [FakeServer(fake.app) for fake in (felloh, fintech_studios, flotiq)]
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.enter_context(server)
        # Registered last, so it runs first: all three wind down together before each stop() waits.
        for server in servers:
            stack.callback(server._request_exit)
        yield FakeProviders(felloh, fintech_studios, flotiq, *(server.url for server in servers))


def write_fake_config(directory: Path, fakes: FakeProviders, port: int, *, extra: str = "", **options: object) -> Path:
    """A tokend config for the three fakes, its secrets in 0600 files as they would be in production.

    `options` are added to every provider table (`min_refresh_interval=0.5`); `extra` is appended as is.
    """
    secrets = {
        "felloh_public_key": fakes.felloh.public_key,
        "felloh_private_key": fakes.felloh.private_key,
        "fts_api_key": fakes.fintech_studios.api_key,
        "fts_password": fakes.fintech_studios.password,
        "flotiq_api_key": sorted(fakes.flotiq.api_keys)[0],
    }
    for name, value in secrets.items():
        path = directory / name
        path.touch(mode=0o600)
        path.write_text(value + "\n")
    common = "".join(f"{key} = {json.dumps(value)}\n" for key, value in options.items())
    config = directory / "tokend.toml"
    config.write_text(f"""\
[server]
host = "127.0.0.1"
port = {port}

[providers.felloh]
kind = "felloh"
base_url = "{fakes.felloh_url}"
public_key = {{ file = "{directory / 'felloh_public_key'}" }}
private_key = {{ file = "{directory / 'felloh_private_key'}" }}
{common}
[providers.fts]
kind = "fintech_studios"
base_url = "{fakes.fintech_studios_url}"
api_key = {{ file = "{directory / 'fts_api_key'}" }}
email = "{fakes.fintech_studios.email}"
password = {{ file = "{directory / 'fts_password'}" }}
{common}
[providers.flotiq]
kind = "flotiq"
base_url = "{fakes.flotiq_url}"
api_key = {{ file = "{directory / 'flotiq_api_key'}" }}
{common}
{extra}""")
    return config
