"""The credential helpers' command lines, read without argparse.

git runs its helper for every fetch and push, kubectl its exec plugin and the AWS CLI its credential_process for
every command, and a script may call `tokend get` in a loop: importing argparse and building tokend's whole
parser (with its help formatter, which imports shutil and the compression modules) costs more than the rest of
such a call. The common, well-formed
command lines of these commands are read here; anything else (help, a typo, an option this does not know, a
value that is not one of the choices) returns None, and argparse reads it as always, errors and all.
"""

from __future__ import annotations

__all__ = ["QUICK_COMMANDS", "Args", "quick_args"]

# command: (its positional arguments, its options beyond the client ones, each with its choices or None)
_COMMANDS: dict[str, tuple[tuple[str, ...], dict[str, tuple[str, ...] | None]]] = {
    "get": (("name",), {"--format": ("raw", "json", "headers")}),
    "git-credential": (("operation",), {"--provider": None}),
    "kube-credential": (("name",), {}),
    "aws-credential": (("name",), {}),
}
_CLIENT_OPTIONS: dict[str, tuple[str, ...] | None] = {"--url": None, "--client-key-file": None, "--config": None}
_DEFAULTS = {"format": "raw", "provider": None, "url": None, "client_key_file": None, "config": None}
_OPERATIONS = ("get", "store", "erase")
QUICK_COMMANDS = frozenset(_COMMANDS)


class Args:
    """What argparse's Namespace would hold for the same command line."""

    def __init__(self, **values: object) -> None:
        self.__dict__.update(values)

    def __repr__(self) -> str:
        return f"Args({self.__dict__!r})"


def quick_args(argv: list[str]) -> Args | None:
    """The parsed command line of `get` or a credential helper, or None for argparse to read."""
    values: dict[str, object] = dict(_DEFAULTS)
    words = iter(argv)
    command = None
    positionals: list[str] = []
    for word in words:
        if not word.startswith("-"):
            if command is None:
                if word not in _COMMANDS:
                    return None
                command = word
            else:
                positionals.append(word)
            continue
        options = _CLIENT_OPTIONS if command is None else {**_CLIENT_OPTIONS, **_COMMANDS[command][1]}
        option, equals, value = word.partition("=")
        if option not in options or (command is None and option != "--config"):
            return None  # -h, --version, an unknown option, or a client option before the command
        if not equals:
            value = next(words, "")
            if not value or value.startswith("-"):
                return None
        choices = options[option]
        if choices is not None and value not in choices:
            return None
        values[option.removeprefix("--").replace("-", "_")] = value
    if command is None or len(positionals) != len(_COMMANDS[command][0]):
        return None
    if command == "git-credential" and positionals[0] not in _OPERATIONS:
        return None
    values.update(zip(_COMMANDS[command][0], positionals, strict=True))
    return Args(command=command, quick=True, **values)
