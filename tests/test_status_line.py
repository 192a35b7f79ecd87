"""The STATUS= line that follows the providers' states, against a real datagram socket standing in for
systemd's (the live run under systemd is in test_deploy_systemd.py)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_sdnotify import nothing_queued, received
from tokend.sdnotify import Notifier, StatusLine, describe

WHERE = "http://127.0.0.1:8765"


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(tmp_path / "notify"))
        receiver.settimeout(5)
        yield receiver


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_describe_lists_each_provider_and_summarises_many() -> None:
    assert describe(WHERE, {"felloh": "ok", "fts": "failed"}) == (
        f"serving 2 provider(s) on {WHERE}: felloh ok, fts failed")
    assert describe(WHERE, {}) == f"serving 0 provider(s) on {WHERE}"
    many = {f"p{i:02}": "ok" for i in range(20)} | {"p03": "failed", "p07": "expired"}
    assert describe(WHERE, many) == f"serving 20 provider(s) on {WHERE}: 1 expired, 1 failed, 18 ok (not ok: p03, p07)"


def test_a_change_is_sent_once_and_no_more_often_than_the_interval(systemd: socket.socket) -> None:
    states = {"felloh": "ok", "fts": "failed"}
    clock = Clock()
    line = StatusLine(Notifier(systemd.getsockname()), lambda: describe(WHERE, states), min_interval=5, clock=clock)
    assert line.current() == f"serving 2 provider(s) on {WHERE}: felloh ok, fts failed"  # sent with READY=1
    line.refresh()
    assert nothing_queued(systemd)  # unchanged

    states["fts"] = "ok"
    clock.now += 1
    line.refresh()
    assert nothing_queued(systemd)  # changed, but within 5 s of the last line
    clock.now += 4
    line.refresh()
    assert received(systemd) == f"STATUS=serving 2 provider(s) on {WHERE}: felloh ok, fts ok"
    clock.now += 10
    line.refresh()
    assert nothing_queued(systemd)

    del states["fts"]  # a reload removed it
    line.refresh()
    assert received(systemd) == f"STATUS=serving 1 provider(s) on {WHERE}: felloh ok"


def test_outside_systemd_nothing_is_sent() -> None:
    line = StatusLine(Notifier(None), lambda: "serving", min_interval=0)
    line.refresh()  # no socket, no error
