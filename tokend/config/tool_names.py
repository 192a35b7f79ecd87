"""What other tools name, in the one form tokend compares: a Docker registry. Imports nothing, so that the
settings and the credential helpers (which must start fast) share it."""

from __future__ import annotations

__all__ = ["registry_key"]


def registry_key(server: str) -> str:
    """A registry as Docker names it, in one form: `https://ghcr.io/` and `ghcr.io` -> `ghcr.io`;
    Docker Hub's `https://index.docker.io/v1/` -> `index.docker.io/v1`."""
    text = server.strip().lower()
    for scheme in ("https://", "http://"):
        text = text.removeprefix(scheme)
    return text.rstrip("/")
