"""The command line: parse, call, print. The only module that prints or exits.

The client commands (get, status, refresh) import nothing beyond the standard library, so that they
start fast; the daemon's modules are imported only by the commands that need them.
"""

from __future__ import annotations

import enum
import sys
from pathlib import Path

from tokend._version import __version__
from tokend.errors import ConfigError, DaemonUnavailable, TokendError, UnknownProvider

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing, ~2 ms of `tokend get`; mypy reads it alike
if TYPE_CHECKING:
    import argparse
    import socket
    from typing import Any

    from tokend.cli.demo import Demo
    from tokend.config.settings import Settings
    from tokend.fleet.probe import FleetReport
    from tokend.logs import LogFormat


class Exit(enum.IntEnum):
    OK = 0
    FAILURE = 1  # anything else: the daemon failed to start, answered something unexpected
    USAGE = 2  # argparse's own code for a bad command line
    CONFIG = 3  # the config file is unusable
    UNREACHABLE = 4  # the daemon is not running, or not where the config says
    UNAVAILABLE = 5  # the daemon runs but has no token to give, or a forced refresh failed
    UNKNOWN_PROVIDER = 6
    DENIED = 7  # the daemon refused the request: a missing, unknown or out-of-scope client key
    THROTTLED = 8  # a forced refresh made no login now (Retry-After, refused credentials, a refused new token)


# What `tokend --help` says of each exit code, so that a script's author need not read the source.
_EXIT_MEANINGS = {
    Exit.OK: "ok",
    Exit.FAILURE: "anything else (the daemon failed to start, or answered something unexpected)",
    Exit.USAGE: "bad command line",
    Exit.CONFIG: "bad config file",
    Exit.UNREACHABLE: "daemon not reachable (not running, or not at that address)",
    Exit.UNAVAILABLE: "no token available, or a forced refresh failed",
    Exit.UNKNOWN_PROVIDER: "unknown provider",
    Exit.DENIED: "refused (no client key, an unknown one, or one not allowed that provider)",
    Exit.THROTTLED: "refresh throttled: no login was attempted now (the message says why and when to retry)",
}


class _UsageError(Exception):
    """A command line that parses but cannot be used (a --url that is no daemon's)."""


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
    if not words:  # a bare `tokend`: what it can do, rather than "the following arguments are required"
        _parser().print_help()
        return Exit.USAGE
    # The helpers git, kubectl and scripts run again and again skip argparse (tokend.cli.quickargs).
    args: Any = quick_args(words)
    if args is not None:
        args.handler = _QUICK_HANDLERS[args.command]
    else:
        try:
            args = _parser().parse_args(words)
        except SystemExit as exc:  # --help, --version, or argparse's own usage error (2)
            sys.stdout.flush()
            return exc.code if isinstance(exc.code, int) else Exit.USAGE
    try:
        return int(args.handler(args))
    except _UsageError as exc:
        _err(f"tokend: {exc}")
        return Exit.USAGE
    except ConfigError as exc:
        _err(f"tokend: {exc.message}")
        for problem in exc.problems if exc.problems != [exc.message] else []:
            _err(f"  - {problem}")
        return Exit.CONFIG
    except DaemonUnavailable as exc:
        _err(f"tokend: {exc.message}{_where_looked(args)}")
        return Exit.UNREACHABLE
    except TokendError as exc:
        _err(f"tokend: {exc.message}")
        return Exit.FAILURE
    except KeyboardInterrupt:
        return Exit.OK


def _parser(kinds: tuple[str, ...] | None = None) -> argparse.ArgumentParser:
    """tokend's command line. `kinds`: the provider kinds, for `init`'s completion; left out otherwise, so that
    a client command does not import the provider models just to parse its arguments."""
    import argparse

    exit_codes = "\n".join(f"  {int(code)}  {meaning}" for code, meaning in _EXIT_MEANINGS.items())
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
    run.set_defaults(handler=_run)

    check = commands.add_parser("check", help="validate the config file and report findings")
    check.add_argument("--login", metavar="NAME", help="also log in once as provider NAME and show what "
                       "would be served (tokens cut to their first and last four characters)")
    check.set_defaults(handler=_check)

    for name, help_text, handler in (
        ("get", "print a provider's token (raw by default)", _get),
        ("refresh", "force a new login now and print the token; says on stderr whether a login was made", _refresh),
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
    reload.set_defaults(handler=_reload)

    status = commands.add_parser("status", help="show every provider's state")
    status.add_argument("--json", action="store_true", help="print the daemon's JSON as it is")
    status.add_argument("--watch", action="store_true", help="keep the view up to date (Ctrl-C stops)")
    _client_options(status)
    status.set_defaults(handler=_status)

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
    execute.set_defaults(handler=_exec)

    for name, help_text, handler in (
        ("login", "sign a user in to an oauth2_refresh_token provider (the device authorization grant, run "
         "by the daemon): shows the code to enter, waits, exits 0 once the daemon holds a token", _login),
        ("logout", "sign a user token out: revoke its refresh token (at revocation_url) and forget its tokens",
         _logout),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("name", help="the provider's name in the config")
        _client_options(command)
        command.set_defaults(handler=handler)
    git = commands.add_parser("git-credential", help="git's credential helper: the token of the provider whose "
                              "git_hosts lists the host git asks for",
                              description="git's credential helper protocol on stdin and stdout. Set up with: "
                              "git config --global credential.https://HOST.helper tokend (git runs "
                              "git-credential-tokend, installed with tokend, which takes these options; "
                              "'!tokend git-credential' works too)")
    git.add_argument("--provider", metavar="NAME", help="answer with this provider, whatever the host")
    git.add_argument("operation", choices=("get", "store", "erase"), help="what git asks (it says which)")
    _client_options(git)
    git.set_defaults(handler=_git_credential)

    kube = commands.add_parser("kube-credential", help="kubectl's exec plugin: an ExecCredential with the token",
                               description="Print an ExecCredential holding provider NAME's token, in the "
                               "apiVersion $KUBERNETES_EXEC_INFO asks for (client.authentication.k8s.io/v1 "
                               "by default).")
    kube.add_argument("name", help="the provider's name in the config")
    _client_options(kube)
    kube.set_defaults(handler=_kube_credential)

    aws = commands.add_parser("aws-credential", help="the AWS CLI's and SDKs' credential_process: provider "
                              "NAME's AWS credential as JSON",
                              description="Print provider NAME's AWS credential in the credential_process "
                              "protocol. In ~/.aws/config: credential_process = tokend aws-credential NAME")
    aws.add_argument("name", help="the AWS provider's name in the config")
    _client_options(aws)
    aws.set_defaults(handler=_aws_credential)

    _felloh_commands(commands)

    demo = commands.add_parser("demo", help="run tokend against built-in fake providers (no accounts needed)")
    demo.add_argument("--port", type=int, default=None, help="local port (default 8765, or a free one if 8765 "
                      "is taken; 0 always picks a free one)")
    demo.add_argument("--lifetime", type=float, default=30.0, help="seconds each fake token lives (default 30)")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.add_argument("--check", action="store_true", help="a self-test: start, ask for each provider's token "
                      "once and use it against its fake API, stop; exit 0 if all worked")
    demo.set_defaults(handler=_demo)

    init = commands.add_parser("init", help="write a commented starting config for the kinds asked for",
                               description="Print (or write to a new file, mode 0600) a starting config with a "
                               "provider table for each KIND; with none, every kind's table commented out.")
    init.add_argument("kinds", nargs="*", metavar="KIND", choices=kinds,
                      help="provider kinds: felloh, fintech_studios, flotiq, oauth2_client_credentials, ...")
    init.add_argument("--output", metavar="FILE", help="write to FILE, which must not exist yet (default: stdout)")
    init.set_defaults(handler=_init)

    help_command = commands.add_parser("help", help="show this help, or a command's: tokend help COMMAND")
    help_command.add_argument("topic", nargs="*", metavar="COMMAND", help="a command (felloh keys: its commands)")
    help_command.set_defaults(handler=_help)

    completion = commands.add_parser("completion", help="print a shell completion script (bash, zsh or fish)")
    completion.add_argument("shell", choices=("bash", "zsh", "fish"))
    completion.set_defaults(handler=_completion)
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
    for command, handler in ((listing, _keys_list), (create, _keys_create), (delete, _keys_delete),
                             (rotate, _rotate)):
        command.add_argument("--provider", required=True, metavar="NAME", help="the Felloh provider's name")
        command.add_argument("--organisation", metavar="ID", help="the organisation ID (default: the "
                             "provider's organisation setting)")
        _client_options(command)
        command.set_defaults(handler=handler)


def _client_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--url", help="the daemon's URL, or unix:/path (default: $TOKEND_URL, else the "
                         "config file's [server] table)")
    command.add_argument("--client-key-file", metavar="PATH", help="a file holding this program's client key, "
                         "when the daemon has [clients] (default: $TOKEND_CLIENT_KEY)")


def _err(line: str) -> None:
    print(line, file=sys.stderr)


# --- daemon commands ------------------------------------------------------------------------------------


def _config_path(args: argparse.Namespace) -> Path:
    from tokend.config.discovery import find_config, looked_for_config

    path = find_config(args.config)
    if path is None:
        raise ConfigError(f"no config file: pass --config PATH or set $TOKEND_CONFIG (looked at "
                          f"{looked_for_config()})")
    return path


def _without_httpx_command_line() -> None:
    """httpx imports its own command line (rich, click, pygments: about 6 MiB) whenever those happen to be
    installed beside it; a daemon never runs it. Marking the module absent makes httpx skip it, as it does
    where they are not installed. Only for the daemon's own process, before anything imports httpx."""
    if "httpx" not in sys.modules:
        sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]


def _run(args: argparse.Namespace) -> int:
    return run_daemon(_config_path(args), args.log_level, args.log_format)


def run_daemon(path: Path, log_level: str = "info", log_format: LogFormat = "text",
               sock: socket.socket | None = None) -> int:
    """`tokend run` once its arguments are read: the config at `path` loaded and audited, then served until a
    stop signal. `sock`: a listening socket to serve on instead of the config's address (the benchmark's,
    which binds its ports before anything starts)."""
    _without_httpx_command_line()
    from tokend.config.audit import audit, refuse_exposures
    from tokend.config.settings import Settings
    from tokend.daemon import serve
    from tokend.logs import configure_logging

    settings = Settings.load(path)
    refuse_exposures(audit(settings, path))  # as `tokend check` fails: one verdict
    configure_logging(log_level, log_format)
    return Exit.OK if serve(settings, sock, config_path=path) else Exit.FAILURE


def _check(args: argparse.Namespace) -> int:
    from tokend.config.audit import Finding, audit
    from tokend.config.settings import Settings
    from tokend.providers.upstream import build_client

    path = _config_path(args)
    settings = Settings.load(path)
    build_client(settings.upstream.ca_bundle)  # the trust store and the proxy variables, as the daemon will use them
    findings = audit(settings, path)
    fleet = _probe_fleet(settings)
    if fleet is not None:
        findings += [Finding("error", error) for error in fleet.errors]
        findings += [Finding("warning", warning) for warning in fleet.warnings]
        findings.sort(key=lambda finding: finding.level != "error")
    errors = sum(finding.level == "error" for finding in findings)
    print(f"config {'has ' + str(errors) + ' error(s)' if errors else 'OK'}: {len(settings.providers)} "
          f"provider(s), {len(settings.clients)} client(s)")
    _print_parts(settings, fleet)
    for finding in findings:
        print(finding)
    if errors:
        return Exit.CONFIG
    return _check_login(settings, args.login) if args.login else Exit.OK


def _print_parts(settings: Settings, fleet: FleetReport | None) -> None:
    """What `tokend check` lists: each provider with its secrets' sources, proxy, git and Docker matches and sinks;
    the listeners; the fleet."""
    for name, provider in settings.providers.items():
        sources = ", ".join(f"{field} from {secret.source}" for field, secret in provider.secrets().items())
        login_url = f" at {provider.url}" if provider.url else ""
        print(f"  {name}: {provider.kind}{login_url}" + (f" ({sources})" if sources else ""))
        for field, description in provider.key_descriptions().items():
            print(f"    {field}: {description}")
        if provider.proxy:
            also = f", and on {provider.proxy_listen}" if provider.proxy_listen else ""
            print(f"    proxy: /proxy/{name}/ -> {provider.proxy_target}{also}")
        for tool, hosts in (("git", provider.git_hosts), ("docker", provider.docker_registries)):
            if hosts:
                user = provider.git_user if tool == "git" else provider.registry_user
                print(f"    {tool}: {', '.join(hosts)} as {user}")
        for sink in provider.sinks:
            print(f"    sink: {sink.path} ({sink.describe()})")
        if settings.fleet is not None and not provider.fleet:
            print("    fleet: off for this provider (fleet = false)")
    listening = settings.server.socket or f"http://{settings.server.host}:{settings.server.port}"
    print(f"  serving on {listening}")
    if settings.state is not None:
        print(f"  state folder: {settings.state.folder} (encryption_key from {settings.state.encryption_key.source})")
    for protocol, listen in settings.metadata.listening().items():
        print(f"  metadata endpoint {protocol} on http://{listen}")
    if settings.fleet is not None and fleet is not None:
        print(f"  fleet: namespace {settings.fleet.namespace}")
        for line in fleet.lines:
            print(f"    {line}")


def _probe_fleet(settings: Settings) -> FleetReport | None:
    """One bounded look at the fleet's Redis (tokend.fleet.probe), or None without [fleet]."""
    if settings.fleet is None:
        return None
    import asyncio

    from tokend.fleet.probe import probe

    return asyncio.run(probe(settings.fleet, settings.providers))


def _check_login(settings: Settings, name: str) -> int:
    import asyncio

    from tokend.credential import iso_utc
    from tokend.errors import UpstreamError
    from tokend.renewal.logins import login_once

    config = settings.providers.get(name)
    if config is None:
        _err(f"tokend: no provider named {name!r} in the config")
        return Exit.UNKNOWN_PROVIDER
    try:
        credential = asyncio.run(login_once(name, settings))
    except UpstreamError as exc:
        _err(f"tokend: login to {name} failed: {exc.message}")
        return Exit.UNAVAILABLE
    from tokend.redact import Redactor

    redactor = Redactor(secret.get() for secret in config.secrets().values())

    def shown(value: str) -> str:
        return redactor.scrub(value.replace(credential.token, _cut(credential.token)))

    print(f"login OK: {name} would serve")
    print(f"  token: {_cut(credential.token)} ({credential.token_type})")
    print(f"  expires_at: {iso_utc(credential.expires_at) or 'never'}" +
          (f" (corrected: {credential.expiry_note})" if credential.expiry_note else ""))
    for header, value in credential.headers.items():
        print(f"  header {header}: {shown(value)}")
    for param, value in credential.query.items():
        print(f"  query {param}={shown(value)}")
    if credential.request_id:
        print(f"  upstream request id: {credential.request_id}")
    return Exit.OK


def _cut(token: str) -> str:
    """A token cut to its first and last four characters: enough to recognise, too little to use."""
    return f"{token[:4]}…{token[-4:]}" if len(token) >= 16 else "…"


def _demo(args: argparse.Namespace) -> int:
    import os
    import signal
    import threading

    _without_httpx_command_line()
    from tokend.cli.demo import demo_environment
    from tokend.daemon import serve
    from tokend.logs import configure_logging

    configure_logging("warning" if args.check else "info")
    with demo_environment(port=args.port, lifetime=args.lifetime) as demo:
        if args.check:
            return _demo_check(demo)
        print("\n".join(demo.banner), file=sys.stderr, flush=True)
        if args.duration is not None:  # stop as Ctrl-C would
            timer = threading.Timer(args.duration, os.kill, args=(os.getpid(), signal.SIGINT))
            timer.daemon = True
            timer.start()
        return Exit.OK if serve(demo.settings, demo.sock, config_path=demo.config_path) else Exit.FAILURE


def _demo_check(demo: Demo) -> int:
    import os
    import signal
    import threading

    from tokend.cli.demo import self_check
    from tokend.daemon import serve

    outcome: list[tuple[bool, list[str]]] = []

    def check_then_stop() -> None:
        try:
            outcome.append(self_check(demo))
        finally:  # stop as Ctrl-C would, whatever the check found
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=check_then_stop, daemon=True).start()
    stopped = serve(demo.settings, demo.sock, config_path=demo.config_path)
    passed, lines = outcome[0] if outcome else (False, ["the check did not finish"])
    print("\n".join(lines))
    if passed and stopped:
        print(f"tokend demo --check: {len(lines)} provider(s) served and used, then stopped cleanly")
        return Exit.OK
    print("tokend demo --check: failed", file=sys.stderr)
    return Exit.FAILURE


def _init(args: argparse.Namespace) -> int:
    from tokend.cli.init import environment_variables, starter_config
    from tokend.config.secret_files import write_new_secret_file

    try:
        text = starter_config(args.kinds)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    if args.output is None:
        print(text, end="")
        return Exit.OK
    try:
        write_new_secret_file(Path(args.output), text.removesuffix("\n"))
    except FileExistsError:
        _err(f"tokend: {args.output} exists; tokend init never overwrites a file: remove it or give another --output")
        return Exit.FAILURE
    except OSError as exc:
        _err(f"tokend: cannot write {args.output} ({exc.strerror})")
        return Exit.FAILURE
    needs = environment_variables(text)
    then = f"set {', '.join(needs)}, then run" if needs else "uncomment the providers you use, then run"
    _err(f"tokend: wrote {args.output} (mode 0600); {then} `tokend check --config {args.output}`")
    return Exit.OK


def _help(args: argparse.Namespace) -> int:
    """`tokend help felloh keys` is `tokend felloh keys --help`."""
    try:
        _parser().parse_args([*args.topic, "--help"])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else Exit.USAGE
    return Exit.OK


def _completion(args: argparse.Namespace) -> int:
    from tokend.cli.completion import completion_script
    from tokend.cli.init import DEFAULT_KINDS

    print(completion_script(_parser(kinds=DEFAULT_KINDS), args.shell), end="")
    return Exit.OK


# --- client commands ------------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> Any:
    from tokend.api.client import Client
    from tokend.config.discovery import address_problem, check_key_destination, daemon_address, find_config

    config = find_config(args.config)
    plain = getattr(args, "quick", False)  # a credential helper: tomllib only for a file that needs it
    address, key = daemon_address(args.url, config, plain=plain), _client_key(args)
    given = "--url" if args.url else "$TOKEND_URL"
    if (args.url or _environ("TOKEND_URL")) and (problem := address_problem(address)):
        raise _UsageError(f"{given} {address.url!r} {problem}")
    if key is not None:
        check_key_destination(address, config, plain=plain)
    return Client(address, client_key=key)


def _where_looked(args: Any) -> str:
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
    client = _client(args)
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
    _err(f"  configured: {', '.join(names)}" + (f"; did you mean {near[0]}?" if near else ""))


def _get(args: argparse.Namespace) -> int:
    return _token_command(args, "GET", "/token/{name}")


def _refresh(args: argparse.Namespace) -> int:
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
        raise _UsageError(f"cannot read the rejected token from {path} ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise _UsageError(f"{path} does not hold a token (not UTF-8 text)") from None
    token = token.strip()
    if not token:
        raise _UsageError(f"{'stdin' if path == '-' else path} is empty: --rejected-file needs the refused token")
    return token


def _say_how_refreshed(name: str, reply: Any, *, named: bool) -> None:
    """On stderr (stdout holds the token): whether this refresh made a login, and if not, why."""
    if reply.headers.get("x-tokend-new-login") == "no":
        why = ("the token named as rejected had already been replaced" if named else
               "the last login was within min_refresh_interval")
        _err(f"tokend: {name}: no new login: {why}, so the current token was answered")
    elif reply.headers.get("x-tokend-new-login") == "yes":
        _err(f"tokend: {name}: logged in: a new token")


def _failed(reply: Any, url: str | None = None) -> int:
    code = reply.error_code
    if code == "refresh_throttled":
        wait = reply.headers.get("retry-after")
        _err(f"tokend: {reply.error_message()}" + (f"; try again in {wait}s" if wait else ""))
        return Exit.THROTTLED
    if code == "refresh_failed":
        _err(f"tokend: the login failed: {reply.error_message()}")
        return Exit.UNAVAILABLE
    # The daemon asked may not be the one meant (`tokend demo` moves to another port when 8765 is taken).
    where = f" (asked the daemon at {url})" if code == "unknown_provider" and url else ""
    _err(f"tokend: {reply.error_message()}{where}")
    if code == "unknown_provider":
        return Exit.UNKNOWN_PROVIDER
    if code == "token_unavailable":
        return Exit.UNAVAILABLE
    if code in ("unauthorized", "forbidden"):
        return Exit.DENIED
    return Exit.FAILURE


def _status(args: argparse.Namespace) -> int:
    if args.watch:
        from tokend.cli.status_watch import watch

        status = watch(_client(args))
        return Exit.OK if status == 0 else _failed(_client(args).request("GET", "/status"))
    reply = _client(args).request("GET", "/status")
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


def _exec(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from tokend.outputs.execute import Unrunnable, aws_profile_warning, child_environment, run, unsafe_variable

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        _err("tokend exec: which command? tokend exec [--provider NAME] [--env NAME=VAR] -- COMMAND [ARGS]")
        return Exit.USAGE
    tokens = {}
    for pair in args.env:
        name, equals, variable = pair.partition("=")
        if not equals or not name or not variable:
            _err(f"tokend exec: --env {pair}: expected NAME=VAR, the provider and the variable for its token")
            return Exit.USAGE
        if (why := unsafe_variable(variable)) is not None:
            _err(f"tokend exec: --env {pair}: refusing to put a token in {variable}: {why}")
            return Exit.USAGE
        tokens[name] = variable
    client = _client(args)  # the same checks as every client command: the address, where the key may go
    key = _client_key(args)
    # Files the child's SDKs read (the AWS endpoint's token): private to this run, removed when it ends.
    with tempfile.TemporaryDirectory(prefix="tokend-exec-") as files:
        try:
            env = child_environment(client, client.address.url, key, args.provider, tokens, Path(files))
        except UnknownProvider as exc:  # as `tokend get` says it
            _err(f"tokend exec: {exc.message}")
            return Exit.UNKNOWN_PROVIDER
        if "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE" in env and (warning := aws_profile_warning(env)) is not None:
            _err(f"tokend exec: warning: {warning}")
        try:
            return run(command, env)
        except Unrunnable as exc:
            _err(f"tokend exec: {exc.message}")
            return exc.code


def _git_credential(args: argparse.Namespace) -> int:
    from tokend.outputs import asking, git

    attributes = git.parse(sys.stdin.buffer.read(asking.REQUEST_LIMIT + 1))
    if args.operation == "store":
        return Exit.OK  # nothing to keep: the daemon renews its tokens itself
    client = _client(args)
    if args.operation == "erase":
        git.erase(client, attributes, args.provider)
        return Exit.OK
    credential = git.get(client, attributes, args.provider)
    if credential is not None:  # else no answer at all: git asks its next helper, or the user
        sys.stdout.write(git.unparse(credential))
    return Exit.OK


def _kube_credential(args: argparse.Namespace) -> int:
    import json
    import os

    from tokend.outputs.kube import exec_credential

    credential = exec_credential(_client(args), args.name, os.environ.get("KUBERNETES_EXEC_INFO"))
    print(json.dumps(credential))
    return Exit.OK


def _aws_credential(args: argparse.Namespace) -> int:
    import json

    from tokend.outputs.credential_process import process_credential

    print(json.dumps(process_credential(_client(args), args.name)))
    return Exit.OK


_QUICK_HANDLERS = {"get": _get, "git-credential": _git_credential, "kube-credential": _kube_credential,
                   "aws-credential": _aws_credential}


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
        return _docker_credential(operation[0], args)
    except _UsageError as exc:  # a $TOKEND_URL that is no daemon's
        print(f"tokend: {exc}")
        return Exit.FAILURE
    except DaemonUnavailable as exc:
        print(f"tokend: {exc.message}{_where_looked(args)}")
        return Exit.FAILURE
    except TokendError as exc:
        print(f"tokend: {exc.message}")
        return Exit.FAILURE


def git_credential_main(argv: list[str] | None = None) -> int:
    """`git-credential-tokend [OPTIONS] get|store|erase`: what git runs for `credential.helper = tokend` (git
    puts `git credential-` before a helper's name that is not a path or a `!command`)."""
    return main(["git-credential", *(sys.argv[1:] if argv is None else argv)])


def _docker_credential(operation: str, args: Any) -> int:
    import json

    from tokend.outputs import asking, docker

    request = sys.stdin.buffer.read(asking.REQUEST_LIMIT + 1)
    if operation in ("store", "erase"):
        return Exit.OK  # docker login and logout: the daemon's tokens are its own to renew
    client = _client(args)
    if operation == "list":
        print(json.dumps(docker.listing(client)))
        return Exit.OK
    credential = docker.get(client, docker.server_url(request))
    if credential is None:
        print(docker.NOT_FOUND)
        return Exit.FAILURE
    print(json.dumps(credential))
    return Exit.OK


def _reload(args: argparse.Namespace) -> int:
    reply = _client(args).request("POST", "/reload")
    if reply.status == 400 and reply.error_code == "bad_config":
        _err(f"tokend: {reply.error_message()}")
        for problem in reply.json().get("problems", []):
            _err(f"  - {problem}")
        return Exit.CONFIG
    if reply.status != 200:
        return _failed(reply)
    changes = reply.json()
    print("reloaded: " + "; ".join(
        f"{what} {', '.join(changes[what]) or '-'}" for what in ("added", "changed", "removed")
    ) + f"; {len(changes['unchanged'])} unchanged")
    if changes["restart_needed"]:
        _err(f"tokend: warning: [{'], ['.join(changes['restart_needed'])}] changed; restart tokend to apply it")
    return Exit.OK


# --- user tokens ---------------------------------------------------------------------------------------

_WATCH_EVERY = 1.0  # seconds between two looks at a sign-in under way (the daemon itself polls upstream)


def _login(args: argparse.Namespace) -> int:
    import time
    from urllib.parse import quote

    client = _client(args)
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
    _err(f"tokend: {args.name}: the sign-in {sign_in['state']}: {sign_in['message']}")
    return Exit.UNAVAILABLE


def _logout(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    client = _client(args)
    reply = client.request("POST", f"/token/{quote(args.name, safe='')}/logout")
    if reply.status != 200:
        return _failed(reply, client.address.url)
    print(reply.json()["message"])
    return Exit.OK


# --- Felloh key commands --------------------------------------------------------------------------------


def _admin(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    """A call to the daemon's Felloh admin endpoints; None (after saying why) when it was refused."""
    from urllib.parse import quote, urlencode

    query = f"?{urlencode({'organisation': args.organisation})}" if args.organisation and body is None else ""
    client = _client(args)
    reply = client.request(method, f"/felloh/{quote(args.provider, safe='')}{path}{query}", body)
    if reply.status not in (200, 201):
        where = f" (asked the daemon at {client.address.url})" if reply.error_code == "unknown_provider" else ""
        _err(f"tokend: {reply.error_message()}{where}")
        return None
    return reply.json()


def _keys_list(args: argparse.Namespace) -> int:
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


def _keys_create(args: argparse.Namespace) -> int:
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
            _err(f"tokend: cannot write {args.secret_file} ({exc.strerror}); the secret key follows, once:")
            print(f"secret key: {data['secret_key']}")
            return Exit.FAILURE
        print(f"secret key written to {args.secret_file} (mode 0600)")
    if args.show_secret:
        print(f"secret key: {data['secret_key']}")
    elif not args.secret_file:
        print("the secret key is not shown: pass --show-secret or --secret-file PATH to keep it "
              "(Felloh will not show it again); delete this key if you do not need it")
    return Exit.OK


def _keys_delete(args: argparse.Namespace) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            _err("tokend: not deleting without confirmation; pass --yes")
            return Exit.FAILURE
        if input(f"Delete Felloh API key {args.key_id}? This cannot be undone. [y/N] ").strip().lower() != "y":
            _err("tokend: not deleted")
            return Exit.FAILURE
    data = _admin(args, "DELETE", f"/keys/{args.key_id}")
    if data is None:
        return Exit.FAILURE
    print(f"deleted {data['deleted']} (request id {data['request_id']})")
    return Exit.OK


def _rotate(args: argparse.Namespace) -> int:
    body = {"organisation": args.organisation} if args.organisation else {}
    data = _admin(args, "POST", "/rotate", body)
    if data is None:
        return Exit.FAILURE
    print(f"{data['provider']} now logs in with key {data['new_key_id'] or '(id not yet listed)'} "
          f"({data['new_public_key']})")
    if data["old_key_deleted"]:
        print(f"old key {data['old_key_id']} deleted")
        return Exit.OK
    _err(f"tokend: warning: {data['warning']}")
    return Exit.UNAVAILABLE
