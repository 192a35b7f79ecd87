"""Provider kinds: one module per kind, and the table that maps a config's `kind` to its class."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tokend.config import ProviderConfig, Settings
from tokend.credential import Credential
from tokend.errors import UpstreamError
from tokend.providers.base import Provider
from tokend.providers.felloh import Felloh
from tokend.providers.fintech_studios import FintechStudios
from tokend.providers.flotiq import Flotiq
from tokend.providers.http import HttpLogin
from tokend.providers.oauth2 import OAuth2ClientCredentials
from tokend.providers.static import StaticKey
from tokend.redact import Redactor

__all__ = [
    "PROVIDER_CLASSES",
    "Felloh",
    "FintechStudios",
    "Flotiq",
    "HttpLogin",
    "OAuth2ClientCredentials",
    "Provider",
    "StaticKey",
    "build_provider",
    "fetch_within_timeout",
    "login_once",
]

PROVIDER_CLASSES = {
    "felloh": Felloh,
    "fintech_studios": FintechStudios,
    "flotiq": Flotiq,
    "oauth2_client_credentials": OAuth2ClientCredentials,
    "http": HttpLogin,
    "static": StaticKey,
}


async def fetch_within_timeout(provider: Provider, timeout: float, client: httpx.AsyncClient) -> Credential:
    """One login, bounded as a whole by the provider's `timeout` (httpx's own bound each step only)."""
    try:
        async with asyncio.timeout(timeout):
            return await provider.fetch(client)
    except TimeoutError:
        raise UpstreamError(provider.name, f"login timed out after {timeout:g}s") from None


async def login_once(name: str, settings: Settings) -> Credential:
    """One real login as provider `name`, outside any daemon: for `tokend check --login`. It goes out
    the way the daemon's do: the same trust store (`ca_bundle`) and proxies."""
    from tokend.upstream import build_client

    config = settings.providers[name]
    redactor = Redactor(secret.get() for secret in config.secrets().values())
    async with build_client(settings) as client:
        return await fetch_within_timeout(build_provider(name, config, redactor), config.timeout, client)


def build_provider(name: str, config: ProviderConfig, redactor: Redactor) -> Provider:
    cls: Any = PROVIDER_CLASSES[config.kind]
    provider: Provider = cls(name, config, redactor)
    return provider
