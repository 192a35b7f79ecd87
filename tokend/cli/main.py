"""The command line: parse, call, print; the entry points of `tokend` and of the helpers installed beside it.

The client commands (get, status, refresh) and the helpers import nothing beyond the standard library, so
that they start fast; the daemon's modules are imported only by the commands that need them. The commands
themselves are in tokend.cli.daemon_commands, client_commands and tool_commands, the argparse tree in
tokend.cli.parser.
"""

from __future__ import annotations

import sys

from tokend.cli.client_commands import get_command, where_looked
from tokend.cli.exits import Exit, UsageError, err
from tokend.cli.tool_commands import (
    aws_credential_command,
    docker_credential_command,
    git_credential_command,
    kube_credential_command,
)
from tokend.errors import ConfigError, DaemonUnavailable, TokendError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing, ~2 ms of `tokend get`; mypy reads it alike
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Exit", "docker_credential_main", "git_credential_main", "main"]


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at exit: a closed pipe is then caught below
        return code
    except BrokenPipeError:
        # The reader went away (`| head`): what it did not read, it did not want. Point stdout at
        # /dev/null so that the interpreter's own flush at exit does not complain either.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return Exit.OK


def _main(argv: list[str] | None) -> int:
    from tokend.cli.quickargs import quick_args

    words = sys.argv[1:] if argv is None else argv
    # The helpers git, kubectl and scripts run again and again skip argparse (tokend.cli.quickargs).
    args: Any = quick_args(words) if words else None
    if args is not None:
        args.handler = _QUICK_HANDLERS[args.command]
    else:
        from tokend.cli.parser import build_parser

        if not words:  # a bare `tokend`: what it can do, rather than "the following arguments are required"
            build_parser().print_help()
            return Exit.USAGE
        try:
            args = build_parser().parse_args(words)
        except SystemExit as exc:  # --help, --version, or argparse's own usage error (2)
            sys.stdout.flush()
            return exc.code if isinstance(exc.code, int) else Exit.USAGE
    try:
        return int(args.handler(args))
    except UsageError as exc:
        err(f"tokend: {exc}")
        return Exit.USAGE
    except ConfigError as exc:
        err(f"tokend: {exc.message}")
        for problem in exc.problems if exc.problems != [exc.message] else []:
            err(f"  - {problem}")
        return Exit.CONFIG
    except DaemonUnavailable as exc:
        err(f"tokend: {exc.message}{where_looked(args)}")
        return Exit.UNREACHABLE
    except TokendError as exc:
        err(f"tokend: {exc.message}")
        return Exit.FAILURE
    except KeyboardInterrupt:
        return Exit.OK


_QUICK_HANDLERS = {"get": get_command, "git-credential": git_credential_command,
                   "kube-credential": kube_credential_command, "aws-credential": aws_credential_command}


def docker_credential_main(argv: list[str] | None = None) -> int:
    """`docker-credential-tokend OPERATION`: Docker's credential helper. Docker shows what is on stdout when
    the exit status is not 0, so errors go there too."""
    from tokend.cli.quickargs import Args

    operation = (sys.argv[1:] if argv is None else argv)[:1]
    if operation not in (["get"], ["list"], ["store"], ["erase"]):
        print("usage: docker-credential-tokend get|list|store|erase (run by Docker, not by hand)")
        return Exit.USAGE
    args = Args(config=None, url=None, client_key_file=None, quick=True)  # Docker passes no options
    try:
        return docker_credential_command(operation[0], args)
    except UsageError as exc:  # a $TOKEND_URL that is no daemon's
        print(f"tokend: {exc}")
        return Exit.FAILURE
    except DaemonUnavailable as exc:
        print(f"tokend: {exc.message}{where_looked(args)}")
        return Exit.FAILURE
    except TokendError as exc:
        print(f"tokend: {exc.message}")
        return Exit.FAILURE


def git_credential_main(argv: list[str] | None = None) -> int:
    """`git-credential-tokend [OPTIONS] get|store|erase`: what git runs for `credential.helper = tokend` (git
    puts `git credential-` before a helper's name that is not a path or a `!command`)."""
    return main(["git-credential", *(sys.argv[1:] if argv is None else argv)])
