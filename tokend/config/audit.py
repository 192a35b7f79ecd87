"""Findings about a configuration that loads but may be unsafe: what `tokend check` reports and the
daemon logs at start and on reload.

An error is something that exposes a secret or a token to other users of the machine (a world-readable
file of secrets, a socket anyone may connect to, a config file anyone may rewrite). A warning is a
choice worth hearing about (a plain-string secret, plain http to a loopback upstream, a remote bind).
The daemon neither starts nor reloads with an error (refuse_exposures), as `tokend check` fails with one: the
same verdict from both. Warnings are logged, and `tokend check` lists them.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from tokend.config.secrets import SecretValue
from tokend.config.settings import Settings
from tokend.errors import ConfigError
from tokend.redact import SHORT_VALUE

__all__ = ["Finding", "audit", "log_findings", "refuse_exposures"]

log = logging.getLogger("tokend")


@dataclass(frozen=True)
class Finding:
    level: Literal["warning", "error"]
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


def audit(settings: Settings, config_path: Path | None = None) -> list[Finding]:
    """Every finding about `settings` (and the file it came from, when given), errors first."""
    found = [
        *_plain_secrets(settings),
        *_secret_files(settings),
        *_padded_secrets(settings),
        *_short_secrets(settings),
        *_config_file(settings, config_path),
        *_listener(settings),
        *_plain_http(settings),
    ]
    if not settings.providers:
        found.append(Finding("warning", "no providers are configured: tokend will serve nothing"))
    return sorted(found, key=lambda finding: finding.level != "error")


def refuse_exposures(findings: list[Finding]) -> None:
    """ConfigError naming each error: a config that exposes a secret or a token is not run."""
    errors = [finding.message for finding in findings if finding.level == "error"]
    if errors:
        raise ConfigError(f"the config has {len(errors)} error(s) that expose a secret or a token to other users "
                          "of this machine; tokend does not run it until they are fixed (`tokend check` lists "
                          "them too)", errors)


def log_findings(findings: list[Finding]) -> None:
    for finding in findings:
        log.log(logging.ERROR if finding.level == "error" else logging.WARNING, "config: %s", finding.message)


def _secrets(settings: Settings) -> Iterator[tuple[str, SecretValue]]:
    for name, provider in settings.providers.items():
        for field, secret in provider.secrets().items():
            yield f'provider "{name}", field "{field}"', secret
    for name, client in settings.clients.items():
        if client.key is not None:
            yield f'client "{name}", field "key"', client.key
    if settings.state is not None:
        yield 'field "state.encryption_key"', settings.state.encryption_key


def _plain_secrets(settings: Settings) -> Iterator[Finding]:
    for where, secret in _secrets(settings):
        if secret.plain:
            yield Finding("warning", f'{where}: a plain-string secret in the config file; '
                                     'prefer { env = "..." }, { file = "..." } or { credential = "..." }')


def _secret_files(settings: Settings) -> Iterator[Finding]:
    seen: set[Path] = set()
    for where, secret in _secrets(settings):
        if secret.path is None or secret.path in seen:
            continue
        seen.add(secret.path)
        if (finding := _readable_by_others(secret.path, f"{where}: secret file {secret.path}")) is not None:
            yield finding


def _padded_secrets(settings: Settings) -> Iterator[Finding]:
    """Spaces or tabs around a secret are sent with it: an editor's stray space makes a login fail with
    `invalid_client` long after `check` passed. Said without the value, only where and what."""
    for where, secret in _secrets(settings):
        value = secret.get()
        ends = [end for end, padded in (("leading", value[:1].isspace()), ("trailing", value[-1:].isspace()))
                if padded]
        if ends:
            yield Finding("warning", f"{where}: the secret from {secret.source} has {' and '.join(ends)} "
                                     "whitespace (a space or a tab), which is sent as part of it; remove it "
                                     "unless the provider's secret really holds it")


def _short_secrets(settings: Settings) -> Iterator[Finding]:
    """No generated key or token is this short: most likely a placeholder left in. Masking it wherever it
    occurs would cut up every message, so it is masked only where it stands as a word of its own."""
    for where, secret in _secrets(settings):
        if len(secret.get()) < SHORT_VALUE:
            yield Finding("warning", f"{where}: the secret from {secret.source} is shorter than {SHORT_VALUE} "
                                     "characters, too short to be a real one; it is masked in logs and errors only "
                                     "where it stands alone, not inside longer words")


def _config_file(settings: Settings, path: Path | None) -> Iterator[Finding]:
    if path is None:
        return
    mode = _mode(path)
    if mode is None:
        return
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        # Whoever may rewrite it may point a provider's URL at their own server and collect the
        # credentials at the next reload, or add a client key of their own.
        yield Finding("error", f"config file {path} can be changed by other users (mode {mode:04o}): chmod go-w it")
    plain = any(secret.plain for _, secret in _secrets(settings))
    if plain and (finding := _readable_by_others(path, f"config file {path} holds plain-string secrets and")):
        # Plain strings are allowed, with a warning: this one says how far they reach, and what to do.
        yield Finding("warning", finding.message)


def _readable_by_others(path: Path, what: str) -> Finding | None:
    mode = _mode(path)
    if mode is None:
        return None
    if mode & stat.S_IROTH:
        return Finding("error", f"{what} is readable by every user (mode {mode:04o}): chmod 600 it")
    if mode & stat.S_IRGRP:
        return Finding("warning", f"{what} is readable by its group (mode {mode:04o}): chmod 600 it "
                                  "unless the whole group may hold this secret")
    return None


def _listener(settings: Settings) -> Iterator[Finding]:
    server = settings.server
    if server.socket is not None:
        if server.socket_mode & 0o006:
            level: Literal["warning", "error"] = "warning" if settings.clients else "error"
            yield Finding(level, f"socket_mode {server.socket_mode:#o} lets every user of this machine connect "
                                 f"to {server.socket}" + ("" if settings.clients else " and read every token"))
    elif server.allow_remote:
        yield Finding("warning", f"tokend listens on {server.host}, beyond loopback (allow_remote = true): only "
                                 "right for a pod or compose network namespace shared with the app")


def _plain_http(settings: Settings) -> Iterator[Finding]:
    plain = [f'"{name}"' for name, provider in settings.providers.items()
             if provider.url is not None and urlsplit(provider.url).scheme == "http"]
    if plain:  # one finding for all of them: a local test set-up has several, and they say the same thing
        who = f"providers {', '.join(plain)} log" if len(plain) > 1 else f"provider {plain[0]} logs"
        yield Finding("warning", f"{who} in over plain http to a loopback host: fine for local testing, never "
                                 "for real credentials")


def _mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None
