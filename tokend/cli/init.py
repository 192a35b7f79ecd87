"""`tokend init`: the text of a commented starting config, built from each kind's own example table.

Asked for kinds, their tables are live, so that the file passes `tokend check` once the environment
variables it names are set. Asked for none, every kind's table is there commented out, to uncomment.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from tokend.providers import PROVIDER_KINDS, all_kinds

__all__ = ["environment_variables", "starter_config"]

DEFAULT_KINDS: tuple[str, ...] = tuple(kind.name for kind in all_kinds() if kind.example)

_HEADER = """\
# tokend configuration, written by `tokend init`. Check it with `tokend check --config FILE`, then
# run it with `tokend run --config FILE` (or put it at ~/.config/tokend/config.toml, found from anywhere).
#
# A secret is { env = "NAME" }, { file = "/path" } (mode 0600), { credential = "name" } (systemd's
# LoadCredential=), { command = ["prog", "arg"] } (the first line it prints), { keyring = "service/user" },
# or a plain string (allowed, with a warning). Each [providers.NAME] table's NAME is what clients ask for:
# GET /token/NAME, or `tokend get NAME`.
"""

_SERVER = """\
[server]
host = "127.0.0.1"                         # loopback only: tokend serves local programs
port = 8765
# socket = "/run/tokend/tokend.sock"       # or a unix socket instead of TCP
"""

_ENV = re.compile(r'\{ env = "([A-Za-z_][A-Za-z0-9_]*)" \}')


def starter_config(kinds: Sequence[str] = ()) -> str:
    """The config text for `kinds` (each once, in the order asked); ValueError names an unknown kind."""
    examples = {kind.name: kind.example for kind in all_kinds() if kind.example}
    unknown = [name for name in kinds if name not in examples]
    if unknown:
        known = set(PROVIDER_KINDS)
        what = "has no starting table yet" if unknown[0] in known else "is not a provider kind"
        near = difflib.get_close_matches(unknown[0].lower().replace("-", "_"), examples, n=1)
        guess = f"did you mean {near[0]}? " if near and unknown[0] not in known else ""
        raise ValueError(f"{unknown[0]!r} {what}; {guess}tokend init knows {', '.join(examples)}")
    if kinds:
        tables = [examples[name] for name in dict.fromkeys(kinds)]
        names = environment_variables("".join(tables))
        needs = f"#\n# Set before tokend starts: {', '.join(names)}.\n" if names else ""
        state = [_STATE] if any(name in _KEEP_STATE for name in kinds) else []
        return "\n".join([_HEADER + needs, _SERVER, *tables, *state])
    commented = [_commented(examples[name]) for name in DEFAULT_KINDS]
    intro = "# Uncomment the providers you use (or run `tokend init KIND ...` for live tables):\n"
    return "\n".join([_HEADER, _SERVER, intro, *commented])

# Kinds whose credential only its user can renew (a rotated refresh token): without [state], a restart loses it.
_KEEP_STATE = ("oauth2_refresh_token",)
_STATE = """\
# A user token's refresh token rotates: keep it across restarts (docs/state.md), or its user signs in again after
# each one. Make its key in this file's folder, readable by you alone, then uncomment:
#   (umask 077; openssl rand -base64 32 > state_key)
# [state]
# encryption_key = { file = "state_key" }   # a relative path is read from this file's folder
"""


def environment_variables(text: str) -> list[str]:
    """The variables the live (uncommented) lines of `text` read secrets from, each once."""
    live = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    return list(dict.fromkeys(_ENV.findall(live)))


def _commented(table: str) -> str:
    return "".join(line if line.startswith("#") else f"# {line}" for line in table.splitlines(keepends=True))
