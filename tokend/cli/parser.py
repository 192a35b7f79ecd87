"""tokend's command line, as argparse reads it: the commands, their options and their help, and the two
commands that describe the command line itself (`help`, `completion`). The helpers git, Docker and kubectl run
again and again never build it (tokend.cli.quickargs reads their common command lines)."""

from __future__ import annotations

import argparse
from typing import Any

from tokend._version import __version__
from tokend.cli.client_commands import (
    exec_command,
    get_command,
    keys_create_command,
    keys_delete_command,
    keys_list_command,
    login_command,
    logout_command,
    refresh_command,
    reload_command,
    rotate_command,
    status_command,
)
from tokend.cli.daemon_commands import check_command, demo_command, init_command, run_command
from tokend.cli.exits import EXIT_MEANINGS, Exit
from tokend.cli.tool_commands import aws_credential_command, git_credential_command, kube_credential_command

__all__ = ["build_parser"]


def build_parser(kinds: tuple[str, ...] | None = None) -> argparse.ArgumentParser:
    """tokend's command line. `kinds`: the provider kinds, for `init`'s completion; left out otherwise, so that
    a client command does not import the provider models just to parse its arguments."""
    import argparse

    exit_codes = "\n".join(f"  {int(code)}  {meaning}" for code, meaning in EXIT_MEANINGS.items())
    parser = argparse.ArgumentParser(prog="tokend", description="A loopback credential daemon.",
                                     epilog=f"exit codes:\n{exit_codes}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"tokend {__version__}")
    parser.add_argument("--config", metavar="PATH", help="config file (default: $TOKEND_CONFIG, "
                        "./tokend.toml, /etc/tokend/config.toml)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    run.add_argument("--log-format", choices=("text", "json"), default="text",
                     help="text for people (the default), json (one object per line) for log collectors")
    run.set_defaults(handler=run_command)

    check = commands.add_parser("check", help="validate the config file and report findings")
    check.add_argument("--login", metavar="NAME", help="also log in once as provider NAME and show what "
                       "would be served (tokens cut to their first and last four characters)")
    check.set_defaults(handler=check_command)

    for name, help_text, handler in (
        ("get", "print a provider's token (raw by default)", get_command),
        ("refresh", "force a new login now and print the token; says on stderr whether a login was made",
         refresh_command),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("name", help="the provider's name in the config")
        command.add_argument("--format", choices=("raw", "json", "headers"), default="raw")
        if name == "refresh":
            command.add_argument("--rejected-file", metavar="FILE", help="a file holding the token the upstream "
                                 "refused (- for stdin): tokend logs in at once if it is still the current one, "
                                 "and answers the newer one without a login if not")
        _client_options(command)
        command.set_defaults(handler=handler)

    reload = commands.add_parser("reload", help="make the daemon read its config file again (as SIGHUP does)")
    _client_options(reload)
    reload.set_defaults(handler=reload_command)

    status = commands.add_parser("status", help="show every provider's state")
    status.add_argument("--json", action="store_true", help="print the daemon's JSON as it is")
    status.add_argument("--watch", action="store_true", help="keep the view up to date (Ctrl-C stops)")
    _client_options(status)
    status.set_defaults(handler=status_command)

    execute = commands.add_parser(
        "exec", help="run a command with TOKEND_URL (and proxy URLs, or tokens with --env) in its environment",
        description="Run COMMAND with TOKEND_URL and the client key in its environment, so client libraries "
        "need no settings. Signals are passed on; its exit status is tokend's.")
    execute.add_argument("--provider", action="append", default=[], metavar="NAME",
                         help="check NAME exists; add TOKEND_PROXY_URL_<NAME> when its proxy is on")
    execute.add_argument("--env", action="append", default=[], metavar="NAME=VAR",
                         help="put provider NAME's token in variable VAR (it will not be renewed: short commands)")
    execute.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS]")
    _client_options(execute)
    execute.set_defaults(handler=exec_command)

    _provider_command(commands, "login", login_command, "sign a user in to an oauth2_refresh_token provider (the "
                      "device authorization grant, run by the daemon): shows the code to enter, waits, exits 0 "
                      "once the daemon holds a token")
    _provider_command(commands, "logout", logout_command, "sign a user token out: revoke its refresh token (at "
                      "revocation_url) and forget its tokens")
    git = commands.add_parser("git-credential", help="git's credential helper: the token of the provider whose "
                              "git_hosts lists the host git asks for",
                              description="git's credential helper protocol on stdin and stdout. Set up with: "
                              "git config --global credential.https://HOST.helper tokend (git runs "
                              "git-credential-tokend, installed with tokend, which takes these options; "
                              "'!tokend git-credential' works too)")
    git.add_argument("--provider", metavar="NAME", help="answer with this provider, whatever the host")
    git.add_argument("operation", choices=("get", "store", "erase"), help="what git asks (it says which)")
    _client_options(git)
    git.set_defaults(handler=git_credential_command)

    _provider_command(commands, "kube-credential", kube_credential_command, "kubectl's exec plugin: an "
                      "ExecCredential with the token", description="Print an ExecCredential holding provider "
                      "NAME's token, in the apiVersion $KUBERNETES_EXEC_INFO asks for "
                      "(client.authentication.k8s.io/v1 by default).")
    _provider_command(commands, "aws-credential", aws_credential_command, "the AWS CLI's and SDKs' "
                      "credential_process: provider NAME's AWS credential as JSON", description="Print provider "
                      "NAME's AWS credential in the credential_process protocol. In ~/.aws/config: "
                      "credential_process = tokend aws-credential NAME", named="the AWS provider's name in the config")

    _felloh_commands(commands)

    demo = commands.add_parser("demo", help="run tokend against built-in fake providers (no accounts needed)")
    demo.add_argument("--port", type=int, default=None, help="local port (default 8765, or a free one if 8765 "
                      "is taken; 0 always picks a free one)")
    demo.add_argument("--lifetime", type=float, default=30.0, help="seconds each fake token lives (default 30)")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.add_argument("--check", action="store_true", help="a self-test: start, ask for each provider's token "
                      "once and use it against its fake API, stop; exit 0 if all worked")
    demo.set_defaults(handler=demo_command)

    init = commands.add_parser("init", help="write a commented starting config for the kinds asked for",
                               description="Print (or write to a new file, mode 0600) a starting config with a "
                               "provider table for each KIND; with none, every kind's table commented out.")
    init.add_argument("kinds", nargs="*", metavar="KIND", choices=kinds,
                      help="provider kinds: felloh, fintech_studios, flotiq, oauth2_client_credentials, ...")
    init.add_argument("--output", metavar="FILE", help="write to FILE, which must not exist yet (default: stdout)")
    init.set_defaults(handler=init_command)

    helping = commands.add_parser("help", help="show this help, or a command's: tokend help COMMAND")
    helping.add_argument("topic", nargs="*", metavar="COMMAND", help="a command (felloh keys: its commands)")
    helping.set_defaults(handler=help_command)

    completion = commands.add_parser("completion", help="print a shell completion script (bash, zsh or fish)")
    completion.add_argument("shell", choices=("bash", "zsh", "fish"))
    completion.set_defaults(handler=completion_command)
    _config_after_command(commands)
    return parser


def _config_after_command(commands: Any) -> None:
    """Accept `tokend run --config PATH` as well as `tokend --config PATH run`. SUPPRESS keeps a value
    given before the command when none is given after it."""
    import argparse

    for command in commands.choices.values():
        command.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        for action in command._actions:  # nested commands: tokend felloh keys list --config PATH
            if isinstance(action, argparse._SubParsersAction):
                _config_after_command(action)


def _felloh_commands(commands: Any) -> None:
    felloh = commands.add_parser("felloh", help="manage a Felloh provider's API keys through the daemon")
    felloh_commands = felloh.add_subparsers(dest="felloh_command", required=True, metavar="COMMAND")
    keys = felloh_commands.add_parser("keys", help="list, create or delete API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")

    listing = key_commands.add_parser("list", help="the organisation's API keys")
    create = key_commands.add_parser("create", help="create an API key and print its public key")
    create.add_argument("--name", required=True, help="a human-friendly name for the key")
    create.add_argument("--show-secret", action="store_true", help="also print the new secret key")
    create.add_argument("--secret-file", metavar="PATH", help="write the new secret key to PATH (mode 0600)")
    delete = key_commands.add_parser("delete", help="delete an API key (never the one in use)")
    delete.add_argument("key_id", metavar="KEY_ID")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    rotate = felloh_commands.add_parser("rotate", help="replace the provider's key pair with a new one")
    for command, handler in ((listing, keys_list_command), (create, keys_create_command), (delete, keys_delete_command),
                             (rotate, rotate_command)):
        command.add_argument("--provider", required=True, metavar="NAME", help="the Felloh provider's name")
        command.add_argument("--organisation", metavar="ID", help="the organisation ID (default: the "
                             "provider's organisation setting)")
        _client_options(command)
        command.set_defaults(handler=handler)


def _provider_command(commands: Any, name: str, handler: Any, help_text: str, *, description: str | None = None,
                      named: str = "the provider's name in the config") -> None:
    """A command that asks the daemon about one provider, named as its one argument."""
    command = commands.add_parser(name, help=help_text, description=description)
    command.add_argument("name", help=named)
    _client_options(command)
    command.set_defaults(handler=handler)


def _client_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--url", help="the daemon's URL, or unix:/path (default: $TOKEND_URL, else the "
                         "config file's [server] table)")
    command.add_argument("--client-key-file", metavar="PATH", help="a file holding this program's client key, "
                         "when the daemon has [clients] (default: $TOKEND_CLIENT_KEY)")


def help_command(args: argparse.Namespace) -> int:
    """`tokend help felloh keys` is `tokend felloh keys --help`."""
    try:
        build_parser().parse_args([*args.topic, "--help"])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else Exit.USAGE
    return Exit.OK


def completion_command(args: argparse.Namespace) -> int:
    from tokend.cli.completion import completion_script
    from tokend.cli.init import DEFAULT_KINDS

    print(completion_script(build_parser(kinds=DEFAULT_KINDS), args.shell), end="")
    return Exit.OK
