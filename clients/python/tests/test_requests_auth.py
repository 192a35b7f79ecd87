"""tokend_client.requests.Auth against the real daemon and an upstream API: the credential, the 401 rule."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from tokend_client_stack import Stack, Upstream

from tokend_client import Client
from tokend_client._auth import with_query
from tokend_client.requests import Auth


@pytest.fixture
def client(stack: Stack) -> Iterator[Client]:
    with Client(stack.daemon.url) as client:
        yield client


def test_requests_carry_the_credential_and_a_401_is_retried_once_with_a_new_token(
    stack: Stack, upstream: Upstream, client: Client
) -> None:
    felloh = stack.fakes.felloh
    with requests.Session() as session:
        session.auth = Auth("felloh", client=client)
        assert session.get(f"{upstream.url}/agent/organisations").status_code == 200
        felloh.revoke()
        logins = felloh.logins
        response = session.post(f"{upstream.url}/bookings", json={"amount": 100})
    assert response.status_code == 200 and response.json()["body"] == '{"amount": 100}'
    assert [r.status_code for r in response.history] == [401]
    assert felloh.logins == logins + 1
    sent = upstream.requests()
    assert [r.body for r in sent[1:]] == [b'{"amount": 100}'] * 2
    assert sent[0].headers["authorization"] == sent[1].headers["authorization"] != sent[2].headers["authorization"]
    assert response.request.headers["Authorization"] == sent[2].headers["authorization"]


def test_fifty_concurrent_401s_cost_one_refresh(stack: Stack, upstream: Upstream, client: Client) -> None:
    felloh = stack.fakes.felloh
    auth = Auth("felloh", client=client)
    assert requests.get(f"{upstream.url}/warm-up", auth=auth, timeout=30).status_code == 200
    felloh.revoke()
    logins = felloh.logins
    barrier = threading.Barrier(50)

    def call(n: int) -> requests.Response:
        barrier.wait(timeout=60)
        return requests.get(f"{upstream.url}/item/{n}", auth=auth, timeout=30)

    with ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(call, range(50)))
    assert [r.status_code for r in responses] == [200] * 50
    assert felloh.logins == logins + 1


def test_a_file_body_is_rewound_for_the_retry_and_a_generator_is_not_retried(
    stack: Stack, upstream: Upstream, client: Client
) -> None:
    felloh = stack.fakes.felloh
    auth = Auth("felloh", client=client)
    requests.get(f"{upstream.url}/warm-up", auth=auth, timeout=30)
    felloh.revoke()
    logins = felloh.logins
    streamed = requests.post(f"{upstream.url}/upload", data=iter([b"chunk one, ", b"chunk two"]), auth=auth, timeout=30)
    assert streamed.status_code == 401 and streamed.history == []
    assert felloh.logins == logins  # no refresh for a request that could not be retried anyway
    upload = io.BytesIO(b"header to skip|the file's content")
    upload.seek(len(b"header to skip|"))  # sent from where it stands, and again from there
    rewound = requests.put(f"{upstream.url}/upload", data=upload, auth=auth, timeout=30)
    assert rewound.status_code == 200 and len(rewound.history) == 1
    assert felloh.logins == logins + 1
    bodies = [r.body for r in upstream.requests()[1:]]
    assert bodies == [b"chunk one, chunk two", b"the file's content", b"the file's content"]


def test_never_more_than_one_retry(stack: Stack, upstream: Upstream, client: Client) -> None:
    upstream.reject_all = True
    response = requests.get(f"{upstream.url}/forbidden-to-this-token", auth=Auth("felloh", client=client), timeout=30)
    assert response.status_code == 401 and len(response.history) == 1
    assert len(upstream.requests()) == 2


def test_a_query_key_is_added_and_replaced_not_repeated(stack: Stack, upstream: Upstream, client: Client) -> None:
    key = sorted(stack.fakes.flotiq.api_keys)[0]
    auth = Auth("flotiq", client=client)
    params = {"limit": "5", "auth_token": "stale"}
    echoed = requests.get(f"{upstream.url}/content", params=params, auth=auth, timeout=30)
    assert echoed.json()["query"] == {"limit": "5", "auth_token": key}
    assert upstream.requests()[0].headers["x-auth-token"] == key
    assert requests.get(f"{stack.fakes.flotiq_url}/api/v1/content/blogposts", auth=auth, timeout=30).status_code == 200


def test_with_query_keeps_the_other_parameters_byte_for_byte() -> None:
    url = "https://api.example.com/v1/x?b=%2F1&auth_token=old&a=1+2&auth_token=older#frag"
    assert with_query(url, {"auth_token": "n w"}) == "https://api.example.com/v1/x?b=%2F1&a=1+2&auth_token=n+w#frag"
    assert with_query("https://h/p", {"k": "v"}) == "https://h/p?k=v"
