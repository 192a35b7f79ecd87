"""`tokend exec`: run a command with what it needs to reach tokend in its environment.

    tokend exec --provider fts -- python app.py
    tokend exec --env fts=FTS_TOKEN -- ./short-script.sh

The child gets `TOKEND_URL` (and `TOKEND_CLIENT_KEY` when one was given), so the client libraries work
with no settings, and the cloud SDKs' variables for the metadata endpoints that are on (tokend.outputs);
per `--provider` whose proxy is on, `TOKEND_PROXY_URL_<NAME>`; and only with `--env`, a
token itself, which cannot be renewed once in an environment (for short commands). Like aws-vault exec,
tokend then stays out of the way: signals are passed on to the child, its exit status is passed back, and
nothing is printed on its streams.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess

from tokend.errors import TokendError, UnknownProvider
from tokend.outputs.environment import metadata_environment

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path
    from typing import Any

    from tokend.api.client import Client

__all__ = ["Unrunnable", "child_environment", "run", "unsafe_variable"]

# What a shell would do: 127 for a command not found, 126 for one that cannot be run.
NOT_FOUND, NOT_EXECUTABLE = 127, 126
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
              signal.SIGWINCH)
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Variables that change how the child runs rather than what it is told: a token put in one of them would
# be taken as a library to preload, a file to run, a place to find programs or tokend itself.
_UNSAFE_PREFIXES = {
    "LD_": "the dynamic loader reads it (LD_PRELOAD, LD_LIBRARY_PATH: code loaded into the command)",
    "DYLD_": "the macOS dynamic loader reads it (code loaded into the command)",
    "PYTHON": "the Python interpreter reads it (PYTHONPATH, PYTHONSTARTUP: code the command would run)",
    "TOKEND_": "tokend's own settings: the command's clients would look for tokend, or a key, elsewhere",
    "BASH_FUNC_": "bash imports it as a shell function",
}
_UNSAFE_NAMES = {
    "PATH": "it decides which program each command name runs",
    "IFS": "it changes how a shell splits words",
    "ENV": "a POSIX shell runs the file it names at start",
    "BASH_ENV": "bash runs the file it names at start",
    "SHELLOPTS": "it changes how bash runs", "BASHOPTS": "it changes how bash runs",
    "PS4": "bash evaluates it when tracing", "PROMPT_COMMAND": "bash runs it",
    "NODE_OPTIONS": "Node.js reads it (--require: code the command would run)",
    "NODE_PATH": "Node.js loads modules from it",
    "PERL5OPT": "perl reads options from it", "PERL5LIB": "perl loads modules from it",
    "RUBYOPT": "ruby reads options from it", "RUBYLIB": "ruby loads libraries from it",
    "JAVA_TOOL_OPTIONS": "the JVM reads options from it (-javaagent: code the command would run)",
    "_JAVA_OPTIONS": "the JVM reads options from it",
    "GCONV_PATH": "the C library loads modules from it",
}


def unsafe_variable(variable: str) -> str | None:
    """Why a token must not be put in `variable` (the end of a sentence), or None when it may."""
    name = variable.upper()
    if name in _UNSAFE_NAMES:
        return _UNSAFE_NAMES[name]
    return next((why for prefix, why in _UNSAFE_PREFIXES.items() if name.startswith(prefix)), None)


def child_environment(
    client: Client, url: str, client_key: str | None, providers: Sequence[str], tokens: Mapping[str, str],
    files: Path | None = None,
) -> dict[str, str]:
    """The child's environment: ours, plus tokend's address and key, proxy URLs and the asked-for tokens.

    `tokens` maps a provider to the variable its token goes in. Raises UnknownProvider (nothing is run) for a
    provider the daemon does not have, TokendError when one is not readable with the key or has no token.
    """
    env = dict(os.environ)
    env["TOKEND_URL"] = url
    if client_key is not None:
        env["TOKEND_CLIENT_KEY"] = client_key
    if providers:
        status = _json(client, "GET", "/status")["providers"]
        for name in providers:
            if name not in status:
                raise UnknownProvider(
                    name, f"the daemon at {url} has no provider named {name!r} (or the key may not read it)")
            if (proxy := status[name].get("proxy")) is not None:
                env[f"TOKEND_PROXY_URL_{_variable_part(name)}"] = proxy["url"]
    for name, variable in tokens.items():
        if not _VARIABLE.match(variable):
            raise TokendError(f"--env {name}={variable}: {variable!r} is not an environment variable name")
        if (why := unsafe_variable(variable)) is not None:
            raise TokendError(f"--env {name}={variable}: refusing to put a token in {variable}: {why}")
        env[variable] = _json(client, "GET", f"/token/{_quoted(name)}", name)["token"]
    # The metadata endpoints' variables last (the asked-for ones are checked before the daemon is asked anything).
    env.update({key: value for key, value in metadata_environment(client).items() if key not in tokens.values()})
    aws_token = env.pop("AWS_CONTAINER_AUTHORIZATION_TOKEN", None)
    if aws_token is not None and files is not None:
        aws_environment(env, aws_token, files)
    return env


# What an AWS SDK would use before the container endpoint (its credential chain), so none of it reaches the child.
AWS_PREFERRED = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ROLE_ARN",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_AUTHORIZATION_TOKEN")


def aws_environment(env: dict[str, str], token: str, files: Path) -> None:
    """The AWS SDKs' variables for [metadata.aws]: its token in a 0600 file under `files` (with no trailing
    newline: botocore refuses one), the variables an SDK would prefer unset, and an empty shared credentials
    file in place of ~/.aws/credentials."""
    for name in AWS_PREFERRED:
        env.pop(name, None)
    token_file = files / "aws-container-authorization-token"
    with os.fdopen(os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(token)
    env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] = str(token_file)
    empty = files / "aws-credentials"
    os.close(os.open(empty, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(empty)


def aws_profile_warning(env: Mapping[str, str]) -> str | None:
    """A sentence when the AWS config file's default profile holds credentials of its own, which an SDK would
    use before the container endpoint; None when it has none."""
    import configparser

    path = env.get("AWS_CONFIG_FILE") or os.path.expanduser("~/.aws/config")
    parser = configparser.RawConfigParser()
    try:
        parser.read(path)
    except (configparser.Error, OSError, UnicodeDecodeError):
        return None
    own = {"aws_access_key_id", "credential_process", "role_arn", "sso_session", "sso_start_url",
           "web_identity_token_file"}
    if parser.has_section("default") and (found := sorted(own & set(parser.options("default")))):
        return (f"{path}: the default profile sets {', '.join(found)}, which AWS SDKs use before tokend's "
                "container endpoint; remove them, or run the command with another profile")
    return None


def run(command: Sequence[str], env: Mapping[str, str]) -> int:
    """Run `command` (no shell), pass our signals on to it, and return its exit status as a shell would
    report it (128 + the signal's number when it was killed by one)."""
    try:
        child = subprocess.Popen(list(command), env=dict(env))
    except FileNotFoundError:
        raise Unrunnable(NOT_FOUND, f"command not found: {command[0]}") from None
    except PermissionError:
        raise Unrunnable(NOT_EXECUTABLE, f"cannot run {command[0]}: permission denied") from None
    except OSError as exc:
        # ENOEXEC: a file with no #! line and no binary format the kernel knows (a shell would try it as a
        # script; tokend runs no shell). Anything else the kernel refuses is unrunnable alike.
        why = ("not a program this system can start (a script needs a #! line)" if exc.errno == errno.ENOEXEC
               else exc.strerror or str(exc))
        raise Unrunnable(NOT_EXECUTABLE, f"cannot run {command[0]}: {why}") from None
    previous = {sig: signal.signal(sig, lambda number, frame: _forward(child, number)) for sig in _FORWARDED}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


class Unrunnable(TokendError):
    """The command could not be started; `code` is the exit status a shell would give."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _forward(child: subprocess.Popen[bytes], number: int) -> None:
    if child.poll() is None:
        child.send_signal(number)


def _json(client: Client, method: str, path: str, provider: str | None = None) -> Any:
    reply = client.request(method, path)
    if reply.status != 200:
        message = f"{method} {path}: {reply.error_message()}"
        if provider is not None and reply.error_code == "unknown_provider":
            raise UnknownProvider(provider, message)
        raise TokendError(message)
    return reply.json()



def _quoted(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


def _variable_part(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", name).upper()
