"""tokend: a loopback credential daemon.

Importing `tokend` is cheap on purpose: the client commands (`tokend get`) must start fast, so the
public names below are loaded only when first used.
"""

from __future__ import annotations

from tokend._version import __version__

__all__ = [
    "ConfigError",
    "Credential",
    "Manager",
    "Settings",
    "State",
    "TokendError",
    "UpstreamError",
    "__version__",
    "create_app",
]

_LAZY = {
    "ConfigError": "tokend.errors",
    "Credential": "tokend.credential",
    "Manager": "tokend.renewal.manager",
    "Settings": "tokend.config.settings",
    "State": "tokend.credential",
    "TokendError": "tokend.errors",
    "UpstreamError": "tokend.errors",
    "create_app": "tokend.api.routes",
}

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms on every `tokend get`)
if TYPE_CHECKING:
    from typing import Any

    from tokend.api.routes import create_app
    from tokend.config.settings import Settings
    from tokend.credential import Credential, State
    from tokend.errors import ConfigError, TokendError, UpstreamError
    from tokend.renewal.manager import Manager


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tokend' has no attribute {name!r}")
