"""The commands that ask a running daemon: get, refresh, status, exec, reload, login and logout, and Felloh's
keys. Like the helpers, they import nothing beyond the standard library until they need it, so that they
start fast."""

from __future__ import annotations

import sys
from pathlib import Path

from tokend.cli.exits import Exit, UsageError, err
from tokend.errors import TokendError, UnknownProvider

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing, ~2 ms of `tokend get`; mypy reads it alike
if TYPE_CHECKING:
    import argparse
    from typing import Any

__all__ = ["daemon_client", "exec_command", "get_command", "keys_create_command", "keys_delete_command",
           "keys_list_command", "login_command", "logout_command", "refresh_command", "reload_command",
           "rotate_command", "status_command", "where_looked"]


def daemon_client(args: argparse.Namespace) -> Any:
    from tokend.api.client import Client
    from tokend.config.discovery import address_problem, check_key_destination, daemon_address, find_config

    config = find_config(args.config)
    plain = getattr(args, "quick", False)  # a credential helper: tomllib only for a file that needs it
    address, key = daemon_address(args.url, config, plain=plain), _client_key(args)
    given = "--url" if args.url else "$TOKEND_URL"
    if (args.url or _environ("TOKEND_URL")) and (problem := address_problem(address)):
        raise UsageError(f"{given} {address.url!r} {problem}")
    if key is not None:
        check_key_destination(address, config, plain=plain)
    return Client(address, client_key=key)


def where_looked(args: Any) -> str:
    """After "tokend is not running at URL": that URL was only the default, when no config file named one."""
    from tokend.config.discovery import find_config, looked_for_config

    if getattr(args, "url", None) or _environ("TOKEND_URL") or find_config(getattr(args, "config", None)):
        return ""
    return (f"\n  no config file was found (looked at {looked_for_config()}), so tokend tried the default address; "
            "name the config with --config PATH or $TOKEND_CONFIG, or the daemon with --url or $TOKEND_URL")


def _environ(name: str) -> str | None:
    import os

    return os.environ.get(name) or None


def _client_key(args: argparse.Namespace) -> str | None:
    """The client key from --client-key-file or $TOKEND_CLIENT_KEY (never a command-line value: others
    on the machine can read a process's arguments)."""
    import os

    if args.client_key_file is None:
        return os.environ.get("TOKEND_CLIENT_KEY") or None
    try:
        with open(args.client_key_file, encoding="utf-8") as file:
            key = file.read().strip()
    except OSError as exc:
        raise TokendError(f"cannot read the client key file {args.client_key_file} ({exc.strerror})") from None
    if not key:
        raise TokendError(f"the client key file {args.client_key_file} is empty")
    return key


def _token_command(args: argparse.Namespace, method: str, path: str, body: Any = None) -> int:
    from urllib.parse import quote

    # The raw token is asked for as such: no JSON to parse, nor the json module to import, on the way.
    query = "?format=raw" if args.format == "raw" else ""
    client = daemon_client(args)
    reply = client.request(method, path.format(name=quote(args.name, safe="")) + query, body)
    if reply.status != 200:
        code = _failed(reply, client.address.url)
        if code == Exit.UNKNOWN_PROVIDER:
            _say_which_providers(client, args.name)
        return code
    if method == "POST":
        _say_how_refreshed(args.name, reply, named=body is not None)
    if args.format == "raw":
        print(reply.body.decode())
        return Exit.OK
    data = reply.json()
    if args.format == "json":
        import json

        print(json.dumps(data, indent=2))
    else:
        for header, value in data["headers"].items():
            print(f"{header}: {value}")
    return Exit.OK


def _say_which_providers(client: Any, name: str) -> None:
    """After "No provider named X": the providers this caller may ask for, and the one X is likely a typo of."""
    import difflib

    reply = client.request("GET", "/status")
    names = sorted(reply.json().get("providers", {})) if reply.status == 200 else []
    if not names:
        return
    near = difflib.get_close_matches(name, names, n=1)
    err(f"  configured: {', '.join(names)}" + (f"; did you mean {near[0]}?" if near else ""))


def get_command(args: argparse.Namespace) -> int:
    return _token_command(args, "GET", "/token/{name}")


def refresh_command(args: argparse.Namespace) -> int:
    body = None if args.rejected_file is None else {"rejected": _rejected_token(args.rejected_file)}
    return _token_command(args, "POST", "/token/{name}/refresh", body)


def _rejected_token(path: str) -> str:
    """The token named in --rejected-file (`-`: stdin), without the line ending a file or a pipe adds."""
    try:
        if path == "-":
            token = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as file:
                token = file.read()
    except OSError as exc:
        raise UsageError(f"cannot read the rejected token from {path} ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} does not hold a token (not UTF-8 text)") from None
    token = token.strip()
    if not token:
        raise UsageError(f"{'stdin' if path == '-' else path} is empty: --rejected-file needs the refused token")
    return token


def _say_how_refreshed(name: str, reply: Any, *, named: bool) -> None:
    """On stderr (stdout holds the token): whether this refresh made a login, and if not, why."""
    if reply.headers.get("x-tokend-new-login") == "no":
        why = ("the token named as rejected had already been replaced" if named else
               "the last login was within min_refresh_interval")
        err(f"tokend: {name}: no new login: {why}, so the current token was answered")
    elif reply.headers.get("x-tokend-new-login") == "yes":
        err(f"tokend: {name}: logged in: a new token")


def _failed(reply: Any, url: str | None = None) -> int:
    code = reply.error_code
    if code == "refresh_throttled":
        wait = reply.headers.get("retry-after")
        err(f"tokend: {reply.error_message()}" + (f"; try again in {wait}s" if wait else ""))
        return Exit.THROTTLED
    if code == "refresh_failed":
        err(f"tokend: the login failed: {reply.error_message()}")
        return Exit.UNAVAILABLE
    # The daemon asked may not be the one meant (`tokend demo` moves to another port when 8765 is taken).
    where = f" (asked the daemon at {url})" if code == "unknown_provider" and url else ""
    err(f"tokend: {reply.error_message()}{where}")
    if code == "unknown_provider":
        return Exit.UNKNOWN_PROVIDER
    if code == "token_unavailable":
        return Exit.UNAVAILABLE
    if code in ("unauthorized", "forbidden"):
        return Exit.DENIED
    return Exit.FAILURE


def status_command(args: argparse.Namespace) -> int:
    if args.watch:
        from tokend.cli.status_watch import watch

        status = watch(daemon_client(args))
        return Exit.OK if status == 0 else _failed(daemon_client(args).request("GET", "/status"))
    reply = daemon_client(args).request("GET", "/status")
    if reply.status != 200:
        return _failed(reply)
    data = reply.json()
    if args.json:
        import json

        print(json.dumps(data, indent=2))
        return Exit.OK
    import time

    from tokend.cli.status_watch import status_rows, table

    print(table(status_rows(data, time.time())))
    return Exit.OK if data["ready"] else Exit.UNAVAILABLE


def exec_command(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from tokend.outputs.execute import Unrunnable, aws_profile_warning, child_environment, run, unsafe_variable

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        err("tokend exec: which command? tokend exec [--provider NAME] [--env NAME=VAR] -- COMMAND [ARGS]")
        return Exit.USAGE
    tokens = {}
    for pair in args.env:
        name, equals, variable = pair.partition("=")
        if not equals or not name or not variable:
            err(f"tokend exec: --env {pair}: expected NAME=VAR, the provider and the variable for its token")
            return Exit.USAGE
        if (why := unsafe_variable(variable)) is not None:
            err(f"tokend exec: --env {pair}: refusing to put a token in {variable}: {why}")
            return Exit.USAGE
        tokens[name] = variable
    client = daemon_client(args)  # the same checks as every client command: the address, where the key may go
    key = _client_key(args)
    # Files the child's SDKs read (the AWS endpoint's token): private to this run, removed when it ends.
    with tempfile.TemporaryDirectory(prefix="tokend-exec-") as files:
        try:
            env = child_environment(client, client.address.url, key, args.provider, tokens, Path(files))
        except UnknownProvider as exc:  # as `tokend get` says it
            err(f"tokend exec: {exc.message}")
            return Exit.UNKNOWN_PROVIDER
        if "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE" in env and (warning := aws_profile_warning(env)) is not None:
            err(f"tokend exec: warning: {warning}")
        try:
            return run(command, env)
        except Unrunnable as exc:
            err(f"tokend exec: {exc.message}")
            return exc.code


def reload_command(args: argparse.Namespace) -> int:
    reply = daemon_client(args).request("POST", "/reload")
    if reply.status == 400 and reply.error_code == "bad_config":
        err(f"tokend: {reply.error_message()}")
        for problem in reply.json().get("problems", []):
            err(f"  - {problem}")
        return Exit.CONFIG
    if reply.status != 200:
        return _failed(reply)
    changes = reply.json()
    print("reloaded: " + "; ".join(
        f"{what} {', '.join(changes[what]) or '-'}" for what in ("added", "changed", "removed")
    ) + f"; {len(changes['unchanged'])} unchanged")
    if changes["restart_needed"]:
        err(f"tokend: warning: [{'], ['.join(changes['restart_needed'])}] changed; restart tokend to apply it")
    return Exit.OK


_WATCH_EVERY = 1.0  # seconds between two looks at a sign-in under way (the daemon itself polls upstream)


def login_command(args: argparse.Namespace) -> int:
    import time
    from urllib.parse import quote

    client = daemon_client(args)
    path = f"/token/{quote(args.name, safe='')}/login"
    reply = client.request("POST", path)
    if reply.status != 200:
        return _failed(reply, client.address.url)
    sign_in = reply.json()
    print(f"To sign {args.name} in, open {sign_in['verification_uri']} and enter the code {sign_in['user_code']}")
    if sign_in.get("verification_uri_complete"):
        print(f"  (or open {sign_in['verification_uri_complete']}, which holds the code)")
    print(f"The code expires at {sign_in['expires_at']}. Waiting for the approval...", flush=True)
    while sign_in["state"] == "waiting":
        time.sleep(_WATCH_EVERY)
        reply = client.request("GET", path)
        if reply.status != 200:
            return _failed(reply, client.address.url)
        sign_in = reply.json()
    if sign_in["state"] == "signed_in":
        print(f"{args.name} is signed in: tokend holds its token and renews it")
        return Exit.OK
    err(f"tokend: {args.name}: the sign-in {sign_in['state']}: {sign_in['message']}")
    return Exit.UNAVAILABLE


def logout_command(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    client = daemon_client(args)
    reply = client.request("POST", f"/token/{quote(args.name, safe='')}/logout")
    if reply.status != 200:
        return _failed(reply, client.address.url)
    print(reply.json()["message"])
    return Exit.OK


def _admin(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    """A call to the daemon's Felloh admin endpoints; None (after saying why) when it was refused."""
    from urllib.parse import quote, urlencode

    query = f"?{urlencode({'organisation': args.organisation})}" if args.organisation and body is None else ""
    client = daemon_client(args)
    reply = client.request(method, f"/felloh/{quote(args.provider, safe='')}{path}{query}", body)
    if reply.status not in (200, 201):
        where = f" (asked the daemon at {client.address.url})" if reply.error_code == "unknown_provider" else ""
        err(f"tokend: {reply.error_message()}{where}")
        return None
    return reply.json()


def keys_list_command(args: argparse.Namespace) -> int:
    data = _admin(args, "GET", "/keys")
    if data is None:
        return Exit.FAILURE
    rows = [("ID", "NAME", "PUBLIC KEY", "SECRET", "CREATED", "USER", "")]
    for key in data["keys"]:
        rows.append((key["id"], key["name"], key["public_key"], f"…{key['secret_key_last_four']}",
                     key["created_at"], key["user_id"], "in use" if key["in_use"] else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return Exit.OK


def keys_create_command(args: argparse.Namespace) -> int:
    from tokend.config.secret_files import write_new_secret_file

    body = {"name": args.name, "organisation": args.organisation}
    data = _admin(args, "POST", "/keys", {k: v for k, v in body.items() if v is not None})
    if data is None:
        return Exit.FAILURE
    print(f"public key: {data['public_key']}")
    if args.secret_file:
        try:
            write_new_secret_file(Path(args.secret_file), data["secret_key"])
        except OSError as exc:
            # The key exists now: the secret must not be lost with the error.
            err(f"tokend: cannot write {args.secret_file} ({exc.strerror}); the secret key follows, once:")
            print(f"secret key: {data['secret_key']}")
            return Exit.FAILURE
        print(f"secret key written to {args.secret_file} (mode 0600)")
    if args.show_secret:
        print(f"secret key: {data['secret_key']}")
    elif not args.secret_file:
        print("the secret key is not shown: pass --show-secret or --secret-file PATH to keep it "
              "(Felloh will not show it again); delete this key if you do not need it")
    return Exit.OK


def keys_delete_command(args: argparse.Namespace) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            err("tokend: not deleting without confirmation; pass --yes")
            return Exit.FAILURE
        if input(f"Delete Felloh API key {args.key_id}? This cannot be undone. [y/N] ").strip().lower() != "y":
            err("tokend: not deleted")
            return Exit.FAILURE
    data = _admin(args, "DELETE", f"/keys/{args.key_id}")
    if data is None:
        return Exit.FAILURE
    print(f"deleted {data['deleted']} (request id {data['request_id']})")
    return Exit.OK


def rotate_command(args: argparse.Namespace) -> int:
    body = {"organisation": args.organisation} if args.organisation else {}
    data = _admin(args, "POST", "/rotate", body)
    if data is None:
        return Exit.FAILURE
    print(f"{data['provider']} now logs in with key {data['new_key_id'] or '(id not yet listed)'} "
          f"({data['new_public_key']})")
    if data["old_key_deleted"]:
        print(f"old key {data['old_key_id']} deleted")
        return Exit.OK
    err(f"tokend: warning: {data['warning']}")
    return Exit.UNAVAILABLE
