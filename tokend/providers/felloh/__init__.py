"""Felloh: a key pair exchanged for a bearer token (login.py), API key management and rotation done by the
daemon with the token it holds (keys.py), and the local admin routes for them (routes.py), offered to the
daemon as an extension (extension.py)."""

from __future__ import annotations

from tokend.providers.base import Kind
from tokend.providers.felloh.login import Felloh, FellohConfig

__all__ = ["KIND", "Felloh", "FellohConfig"]


EXAMPLE = """\
[providers.felloh]
kind = "felloh"
environment = "sandbox"                    # or "production"; or base_url = "https://..." instead
public_key = { env = "FELLOH_PUBLIC_KEY" }
private_key = { env = "FELLOH_PRIVATE_KEY" }   # or { file = "/run/secrets/felloh_private_key" }, mode 0600
"""

KIND = Kind("felloh", FellohConfig, "tokend.providers.felloh.login:Felloh", example=EXAMPLE)
