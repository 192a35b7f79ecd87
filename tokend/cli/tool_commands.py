"""The credential helpers' commands, each in the protocol its tool speaks: git's credential helper,
kubectl's exec plugin, the AWS credential_process and Docker's credential helper."""

from __future__ import annotations

import sys

from tokend.cli.client_commands import daemon_client
from tokend.cli.exits import Exit

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing, ~2 ms of `tokend get`; mypy reads it alike
if TYPE_CHECKING:
    import argparse
    from typing import Any

__all__ = ["aws_credential_command", "docker_credential_command", "git_credential_command",
           "kube_credential_command"]


def git_credential_command(args: argparse.Namespace) -> int:
    from tokend.outputs import asking, git

    attributes = git.parse(sys.stdin.buffer.read(asking.REQUEST_LIMIT + 1))
    if args.operation == "store":
        return Exit.OK  # nothing to keep: the daemon renews its tokens itself
    client = daemon_client(args)
    if args.operation == "erase":
        git.erase(client, attributes, args.provider)
        return Exit.OK
    credential = git.get(client, attributes, args.provider)
    if credential is not None:  # else no answer at all: git asks its next helper, or the user
        sys.stdout.write(git.unparse(credential))
    return Exit.OK


def kube_credential_command(args: argparse.Namespace) -> int:
    import json
    import os

    from tokend.outputs.kube import exec_credential

    credential = exec_credential(daemon_client(args), args.name, os.environ.get("KUBERNETES_EXEC_INFO"))
    print(json.dumps(credential))
    return Exit.OK


def aws_credential_command(args: argparse.Namespace) -> int:
    import json

    from tokend.outputs.credential_process import process_credential

    print(json.dumps(process_credential(daemon_client(args), args.name)))
    return Exit.OK


def docker_credential_command(operation: str, args: Any) -> int:
    import json

    from tokend.outputs import asking, docker

    request = sys.stdin.buffer.read(asking.REQUEST_LIMIT + 1)
    if operation in ("store", "erase"):
        return Exit.OK  # docker login and logout: the daemon's tokens are its own to renew
    client = daemon_client(args)
    if operation == "list":
        print(json.dumps(docker.listing(client)))
        return Exit.OK
    credential = docker.get(client, docker.server_url(request))
    if credential is None:
        print(docker.NOT_FOUND)
        return Exit.FAILURE
    print(json.dumps(credential))
    return Exit.OK
