"""Sink `format = "template"`: the names it knows, a header the token lacks, and the nginx recipe: a real
nginx sending a template sink's header upstream, reloaded by the sink's signal when the token is renewed."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest

from tests.daemon import Daemon, free_port, write_config
from tests.test_sinks import eventually, sink
from tests.tools import ThreadedHTTPServer, require_tool
from tokend.credential import Credential
from tokend.outputs import templated
from tokend.testing import FakeProviders, serve_fakes


def test_every_name_renders_as_get_token_serves(tmp_path: Path, daemon_factory: Callable[..., Daemon]) -> None:
    out = tmp_path / "fts.conf"
    template = "t={token} type={token_type} exp={expires_at} key={header:X-API-KEY} auth={header:authorization} {{x}}\n"
    daemon = daemon_factory(extra=sink("fts", out, format="template", template=template))
    eventually(out.exists, "the sink")
    served = daemon.get("/token/fts").json()
    headers = served["headers"]
    assert out.read_text() == (f"t={served['token']} type={served['token_type']} exp={served['expires_at']} "
                               f"key={headers['x-api-key']} auth={headers['Authorization']} {{x}}\n")


def test_a_header_the_token_lacks_is_a_sink_error_in_status(tmp_path: Path, daemon_factory: Callable[..., Daemon]
                                                            ) -> None:
    out = tmp_path / "flotiq.conf"
    daemon = daemon_factory(extra=sink("flotiq", out, format="template", template="{header:Authorization}"))
    eventually(lambda: daemon.get("/status").json()["providers"]["flotiq"]["sinks"][0]["error"] is not None, "error")
    shown = daemon.get("/status").json()["providers"]["flotiq"]["sinks"][0]
    assert "header Authorization" in shown["error"] and "X-AUTH-TOKEN" in shown["error"] and not out.exists()
    assert daemon.get("/token/flotiq").json()["token"] not in json.dumps(shown)


def test_templates_are_checked_when_the_config_is_loaded(tmp_path: Path, fakes: FakeProviders) -> None:
    from tokend.cli.main import main

    for options in ({"format": "template"}, {"template": "{token}"}, {"format": "template", "template": "{secret}"},
                    {"format": "template", "template": "{token"}, {"format": "template", "template": "{a.b}"}):
        config = write_config(tmp_path, fakes, extra=sink("fts", tmp_path / "out", **options))
        assert main(["--config", str(config), "check"]) == 3, options


def test_render_without_a_daemon() -> None:
    credential = Credential("tok", "Bearer", 0.0, {"Authorization": "Bearer tok"})
    assert templated.render("{token}|{expires_at}|{header:AUTHORIZATION}", credential) == \
        b"tok|1970-01-01T00:00:00Z|Bearer tok"
    assert templated.render("{expires_at}", Credential("k", "api_key", None, {})) == b""
    with pytest.raises(ValueError, match=r"known: \{token\}"):
        templated.check("{headers}")


# --- the nginx recipe --------------------------------------------------------------------------------------

LIFETIME = 6.0


class Upstream(ThreadedHTTPServer):
    """The service behind nginx: records the Authorization header of every request."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        super().__init__(self._answer)

    def _answer(self, request: BaseHTTPRequestHandler) -> None:
        self.seen.append(request.headers.get("Authorization", ""))
        request.send_response(200)
        request.send_header("Content-Length", "2")
        request.end_headers()
        request.wfile.write(b"ok")


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[[Path, str, Path], str]]:
    program = require_tool("nginx", "apt-get install nginx-light (or nginx)")
    started: list[subprocess.Popen[bytes]] = []

    def start(include: Path, upstream: str, pid_file: Path) -> str:
        port = free_port()
        temp = tmp_path / "nginx-temp"
        temp.mkdir()
        conf = tmp_path / "nginx.conf"
        conf.write_text(f"""
daemon off;
pid {pid_file};
error_log {tmp_path / 'nginx-error.log'} info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy; fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi; scgi_temp_path {temp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            include {include};
            proxy_pass http://{upstream};
        }}
    }}
}}
""")
        process = subprocess.Popen([program, "-p", f"{tmp_path}/", "-e", str(tmp_path / "nginx-error.log"), "-c",
                                    str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(process)
        eventually(lambda: pid_file.exists() and pid_file.read_text().strip() != "", "nginx's pid file")
        return f"http://127.0.0.1:{port}"

    yield start
    for process in started:
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_nginx_sends_the_renewed_token_after_the_sinks_signal(
    tmp_path: Path, nginx: Callable[[Path, str, Path], str]
) -> None:
    include, pid_file = tmp_path / "tokend-auth.conf", tmp_path / "nginx.pid"
    recipe = sink("felloh", include, format="template", signal="HUP", pid_file=str(pid_file),
                  template='proxy_set_header Authorization "{header:Authorization}";\n')
    with serve_fakes(lifetime=LIFETIME) as fakes, Upstream() as upstream:
        daemon = Daemon(write_config(tmp_path, fakes, extra=recipe), log_path=tmp_path / "daemon.log")
        try:
            daemon.start()
            eventually(include.exists, "the include file")
            url = nginx(include, upstream.host, pid_file)

            def through_nginx() -> str:
                assert httpx.get(url, timeout=10).text == "ok"
                return upstream.seen[-1]

            first = through_nginx()
            assert first.startswith("Bearer ") and fakes.felloh.is_valid(first.removeprefix("Bearer "))
            # The renewal rewrites the include and sends nginx SIGHUP: its new workers send the new token.
            eventually(lambda: through_nginx() != first, "nginx to send the renewed token", timeout=LIFETIME * 5)
            renewed = upstream.seen[-1]
            assert renewed.startswith("Bearer ") and fakes.felloh.is_valid(renewed.removeprefix("Bearer "))
            assert include.read_text().startswith('proxy_set_header Authorization "Bearer ')
        finally:
            daemon.kill()


# --- values a template's format could misread ------------------------------------------------------------

class HostileTokens(ThreadedHTTPServer):
    """An OAuth 2.0 token endpoint answering whatever token it is told to (`token`), as a hostile or broken
    upstream may; records the Authorization header of every other request (the service behind nginx)."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.seen: list[str] = []
        super().__init__(self._answer)

    def _answer(self, request: BaseHTTPRequestHandler) -> None:
        if request.command == "POST":
            request.rfile.read(int(request.headers.get("Content-Length") or 0))
            body = json.dumps({"access_token": self.token, "token_type": "Bearer", "expires_in": 3600}).encode()
        else:
            self.seen.append(request.headers.get("Authorization", ""))
            body = b"ok"
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)


def _hostile_provider(upstream: HostileTokens, include: Path, **options: object) -> str:
    return (f'[providers.hostile]\nkind = "oauth2_client_credentials"\n'
            f'token_url = "http://{upstream.host}/token"\nclient_id = "c"\nclient_secret = "s"\n'
            + sink("hostile", include, format="template",
                   template='proxy_set_header Authorization "{header:Authorization}";\n', **options))


INJECTION = 'x"; return 200 "INJECTED-BY-UPSTREAM'


@pytest.mark.parametrize("token", [INJECTION, "tok$remote_addr", "tok\\", "t{o}k", "tok en"])
def test_a_token_outside_token68_is_not_written_without_an_escaping(
    tmp_path: Path, fakes: FakeProviders, token: str
) -> None:
    include = tmp_path / "tokend-auth.conf"
    with HostileTokens(token) as upstream:
        daemon = Daemon(write_config(tmp_path, fakes, extra=_hostile_provider(upstream, include)),
                        log_path=tmp_path / "daemon.log")
        try:
            daemon.start()
            eventually(lambda: daemon.get("/status").json()["providers"]["hostile"]["sinks"][0]["error"], "error")
            shown = daemon.get("/status").json()["providers"]["hostile"]["sinks"][0]
            assert "token68" in shown["error"] and 'escape = "nginx"' in shown["error"], shown
            assert token not in json.dumps(shown) and not include.exists()
        finally:
            daemon.kill()


def test_nginx_escaping_sends_the_token_as_it_is_and_refuses_what_nginx_cannot_escape(
    tmp_path: Path, fakes: FakeProviders, nginx: Callable[[Path, str, Path], str]
) -> None:
    include, pid_file = tmp_path / "tokend-auth.conf", tmp_path / "nginx.pid"
    with HostileTokens(INJECTION) as upstream:
        daemon = Daemon(write_config(tmp_path, fakes, extra=_hostile_provider(upstream, include, escape="nginx")),
                        log_path=tmp_path / "daemon.log")
        try:
            daemon.start()
            eventually(include.exists, "the include file")
            url = nginx(include, upstream.host, pid_file)
            answer = httpx.get(url, timeout=10)
            # nginx read the token as one quoted string: it sent it, and answered nothing of its own.
            assert answer.text == "ok" and upstream.seen[-1] == f"Bearer {INJECTION}"
        finally:
            daemon.kill()
    # nginx has no escape for `$`: such a token is refused even with escape = "nginx".
    with HostileTokens("tok$remote_addr") as upstream:
        include.unlink()
        daemon = Daemon(write_config(tmp_path, fakes, extra=_hostile_provider(upstream, include, escape="nginx")),
                        log_path=tmp_path / "daemon.log")
        try:
            daemon.start()
            eventually(lambda: daemon.get("/status").json()["providers"]["hostile"]["sinks"][0]["error"], "error")
            assert "$" in daemon.get("/status").json()["providers"]["hostile"]["sinks"][0]["error"]
            assert not include.exists()
        finally:
            daemon.kill()


def test_each_escaping_renders_a_value_its_format_reads_back() -> None:
    import shlex

    value = 'a"b\\c$d\'e f\n'
    credential = Credential(value, "Bearer", None, {"Authorization": f"Bearer {value}"})
    assert json.loads('"' + templated.render("{token}", credential, "json").decode() + '"') == value
    assert shlex.split(templated.render("T={token}", credential, "shell").decode()) == [f"T={value}"]
    assert templated.render("{token}", credential, "none") == value.encode()
    with pytest.raises(ValueError, match="token68"):
        templated.render("{token}", credential, None)
    with pytest.raises(ValueError, match="control character"):
        templated.render("{token}", Credential("a\nb", "Bearer", None, {}), "nginx")
    plain = Credential("abc-._~+/9==", "Bearer", None, {"Authorization": "Bearer abc-._~+/9=="})
    assert templated.render("{header:Authorization}|{token_type}", plain, None) == b"Bearer abc-._~+/9==|Bearer"


def test_check_says_how_each_template_sink_writes_its_values(tmp_path: Path, fakes: FakeProviders,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from tokend.cli.main import main

    extra = (sink("fts", tmp_path / "a", format="template", template="{token}")
             + sink("fts", tmp_path / "b", format="template", template="{token}", escape="shell"))
    assert main(["--config", str(write_config(tmp_path, fakes, extra=extra)), "check"]) == 0
    shown = capsys.readouterr().out
    assert "values RFC 6750 token68 only" in shown and "values escaped for shell" in shown
    bad = sink("fts", tmp_path / "c", format="raw", escape="shell")
    assert main(["--config", str(write_config(tmp_path, fakes, extra=bad)), "check"]) == 3
