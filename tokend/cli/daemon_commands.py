"""The commands that run tokend itself or look at its config: run, check, demo and init."""

from __future__ import annotations

import sys
from pathlib import Path

from tokend.cli.exits import Exit, UsageError, err
from tokend.errors import ConfigError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing, ~2 ms of `tokend get`; mypy reads it alike
if TYPE_CHECKING:
    import argparse
    import socket

    from tokend.cli.demo import Demo
    from tokend.config.settings import Settings
    from tokend.fleet.probe import FleetReport
    from tokend.logs import LogFormat

__all__ = ["check_command", "demo_command", "init_command", "run_command", "run_daemon"]


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


def run_command(args: argparse.Namespace) -> int:
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


def check_command(args: argparse.Namespace) -> int:
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
        err(f"tokend: no provider named {name!r} in the config")
        return Exit.UNKNOWN_PROVIDER
    try:
        credential = asyncio.run(login_once(name, settings))
    except UpstreamError as exc:
        err(f"tokend: login to {name} failed: {exc.message}")
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


def demo_command(args: argparse.Namespace) -> int:
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


def init_command(args: argparse.Namespace) -> int:
    from tokend.cli.init import environment_variables, starter_config
    from tokend.config.secret_files import write_new_secret_file

    try:
        text = starter_config(args.kinds)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.output is None:
        print(text, end="")
        return Exit.OK
    try:
        write_new_secret_file(Path(args.output), text.removesuffix("\n"))
    except FileExistsError:
        err(f"tokend: {args.output} exists; tokend init never overwrites a file: remove it or give another --output")
        return Exit.FAILURE
    except OSError as exc:
        err(f"tokend: cannot write {args.output} ({exc.strerror})")
        return Exit.FAILURE
    needs = environment_variables(text)
    then = f"set {', '.join(needs)}, then run" if needs else "uncomment the providers you use, then run"
    err(f"tokend: wrote {args.output} (mode 0600); {then} `tokend check --config {args.output}`")
    return Exit.OK
