"""Provider kinds: one module per kind, and the table that maps a config's `kind` to its class."""

from __future__ import annotations

from typing import Any

from tokend.config import ProviderConfig
from tokend.providers.base import Provider
from tokend.providers.felloh import Felloh
from tokend.providers.fintech_studios import FintechStudios
from tokend.providers.flotiq import Flotiq
from tokend.redact import Redactor

__all__ = ["PROVIDER_CLASSES", "Felloh", "FintechStudios", "Flotiq", "Provider", "build_provider"]

PROVIDER_CLASSES = {"felloh": Felloh, "fintech_studios": FintechStudios, "flotiq": Flotiq}


def build_provider(name: str, config: ProviderConfig, redactor: Redactor) -> Provider:
    cls: Any = PROVIDER_CLASSES[config.kind]
    provider: Provider = cls(name, config, redactor)
    return provider
