"""The proxy's rules without I/O: paths, headers, settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokend.config.settings import Settings
from tokend.errors import ConfigError
from tokend.outputs.proxy import headers
from tokend.outputs.proxy.paths import BadPath, Origin, bad_path, request_target, with_query


def test_the_target_keeps_the_base_path_and_the_query() -> None:
    origin = Origin.from_url("https://api.example.com/v2")
    assert request_target(origin, b"/invoices/7", b"page=2&sort=-date") == b"/v2/invoices/7?page=2&sort=-date"
    assert request_target(origin, b"", b"") == b"/v2/"
    assert Origin.from_url("https://api.example.com").host_header == b"api.example.com"
    assert Origin.from_url("http://127.0.0.1:8080").host_header == b"127.0.0.1:8080"
    assert Origin.from_url("https://[::1]:8443/x").host_header == b"[::1]:8443"


@pytest.mark.parametrize("path", [
    b"/..", b"/a/../b", b"/%2e%2e/b", b"/%2E./b", b"/.", b"/a/./b", b"/a%2fb", b"/a%2Fb", b"/a%5cb", b"/a\\b",
    b"/u@host", b"/%40host", b"//host/x", b"/http://host/x", b"/a%0d%0ab", b"/a%0Ab", b"/a%00", b"/a%7f",
    b"/a b", b"/a\rb", b"/\xc3\xa9", b"/a/..", b"/../", b"/a/.%2e/b", b"/..;/x", b"/a/.;/b",
])
def test_escaping_paths_are_refused(path: bytes) -> None:
    assert bad_path(path) is not None
    with pytest.raises(BadPath):
        request_target(Origin.from_url("https://api.example.com"), path, b"")


@pytest.mark.parametrize("path", [b"/a/b", b"/a..b/c", b"/.well-known/x", b"/a%20b", b"/v1/items;matrix=1", b"/~user"])
def test_ordinary_paths_pass(path: bytes) -> None:
    assert bad_path(path) is None


def test_the_credentials_query_replaces_the_clients() -> None:
    assert with_query(b"/x?auth_token=mine&a=1", {"auth_token": "k e/y"}) == b"/x?a=1&auth_token=k%20e%2Fy"
    assert with_query(b"/x", {"auth_token": "k"}) == b"/x?auth_token=k"
    assert with_query(b"/x?a=1", {}) == b"/x?a=1"


def test_headers_stripped_each_way() -> None:
    dropped = headers.never_out({"X-API-Key": "k", "Authorization": "Bearer t"})
    client = [(b"host", b"127.0.0.1"), (b"authorization", b"Bearer client"), (b"x-api-key", b"mine"),
              (b"connection", b"x-hop"), (b"x-hop", b"1"), (b"cookie", b"c"), (b"x-kept", b"1"),
              (b"x-tokend-request", b"1"), (b"content-length", b"3"), (b"transfer-encoding", b"chunked")]
    assert headers.outgoing(client, dropped) == [(b"x-kept", b"1")]
    upstream = [(b"set-cookie", b"s"), (b"connection", b"close, x-gone"), (b"x-gone", b"1"), (b"keep-alive", b"t"),
                (b"content-type", b"application/json"), (b"date", b"now")]
    assert headers.incoming(upstream) == [(b"content-type", b"application/json")]


def _load(tmp_path: Path, table: str) -> Settings:
    path = tmp_path / "tokend.toml"
    path.write_text(table)
    return Settings.load(path)


@pytest.mark.parametrize(("table", "problem"), [
    ('kind = "oauth2_client_credentials"\ntoken_url = "https://a.example/t"\nclient_id = "c"\nclient_secret = "s"\n'
     "proxy = true", "proxy = true needs api_url"),
    ('kind = "static"\nkey = "k"\nproxy = true\napi_url = "http://api.example.com"', "must use https://"),
    ('kind = "flotiq"\napi_key = "k"\nproxy = true\nproxy_listen = "0.0.0.0:9101"', "not a loopback address"),
    ('kind = "flotiq"\napi_key = "k"\nproxy = true\nproxy_listen = "9101"', '"127.0.0.1:PORT" or an absolute'),
    ('kind = "flotiq"\napi_key = "k"\nproxy_listen = "127.0.0.1:9101"', "proxy_listen needs proxy = true"),
])
def test_proxy_settings_are_checked(tmp_path: Path, table: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, f"[providers.p]\n{table}\n")
    assert len(caught.value.problems) == 1 and problem in caught.value.problems[0]
    assert caught.value.problems[0].startswith('provider "p"')


def test_proxy_targets_default_per_kind(tmp_path: Path) -> None:
    settings = _load(tmp_path, """
[providers.felloh]
kind = "felloh"
environment = "sandbox"
public_key = "p"
private_key = "k"
proxy = true
[providers.fts]
kind = "fintech_studios"
base_url = "https://fts.example.com"
api_key = "k"
email = "a@example.com"
password = "p"
[providers.flotiq]
kind = "flotiq"
api_key = "k"
[providers.own]
kind = "static"
key = "k"
api_url = "https://api.example.com/v2/"
proxy = true
proxy_listen = "/run/tokend/own.sock"
""")
    targets = {name: config.proxy_target for name, config in settings.providers.items()}
    assert targets == {"felloh": "https://sandbox.felloh.com", "fts": "https://fts.example.com",
                       "flotiq": "https://api.flotiq.com", "own": "https://api.example.com/v2"}
    assert [name for name, config in settings.providers.items() if config.proxy] == ["felloh", "own"]
    assert settings.providers["felloh"].proxy_retry_body_limit == 1 << 20
