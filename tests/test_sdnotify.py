"""The sd_notify client against a real datagram socket standing in for systemd's."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokend.sdnotify import Notifier


@pytest.fixture(autouse=True)
def _no_systemd_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run under systemd (a CI runner's unit) must not see, nor ping, the real notify socket."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound AF_UNIX datagram socket that $NOTIFY_SOCKET points at, as systemd's is."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        receiver.settimeout(5)  # a datagram is queued before sendto returns; this only bounds a failure
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield receiver


def received(receiver: socket.socket) -> str:
    return receiver.recv(4096).decode()


def nothing_queued(receiver: socket.socket) -> bool:
    timeout = receiver.gettimeout()
    receiver.setblocking(False)
    try:
        receiver.recv(4096)
    except BlockingIOError:
        return True
    finally:
        receiver.settimeout(timeout)
    return False


def test_ready_sends_ready_and_status(systemd: socket.socket) -> None:
    Notifier.from_environment().ready("serving 3 provider(s) on http://127.0.0.1:8765")
    assert received(systemd) == "READY=1\nSTATUS=serving 3 provider(s) on http://127.0.0.1:8765"


def test_ready_without_status(systemd: socket.socket) -> None:
    Notifier.from_environment().ready()
    assert received(systemd) == "READY=1"


def test_stopping_status_and_watchdog_each_send_one_datagram(systemd: socket.socket) -> None:
    notifier = Notifier.from_environment()
    notifier.status("felloh ok, fts retrying")
    notifier.watchdog()
    notifier.stopping()
    assert [received(systemd) for _ in range(3)] == ["STATUS=felloh ok, fts retrying", "WATCHDOG=1", "STOPPING=1"]
    assert nothing_queued(systemd)


def test_a_newline_in_a_status_cannot_add_a_field(systemd: socket.socket) -> None:
    Notifier.from_environment().status("all good\nREADY=1")
    assert received(systemd) == "STATUS=all good READY=1"


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"tokend-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        receiver.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notifier = Notifier.from_environment()
        assert notifier.enabled
        notifier.ready("up")
        assert received(receiver) == "READY=1\nSTATUS=up"


@pytest.mark.parametrize("value", [None, ""])
def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is not None:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")

    def no_socket(*args: object) -> None:
        raise AssertionError("a socket was opened with no $NOTIFY_SOCKET")

    monkeypatch.setattr("tokend.sdnotify.socket.socket", no_socket)
    notifier = Notifier.from_environment()
    assert not notifier.enabled
    notifier.ready("up")
    notifier.status("x")
    notifier.watchdog()
    notifier.stopping()
    assert notifier.watchdog_interval() is None  # a watchdog with nowhere to ping is no watchdog


def test_an_unsupported_transport_turns_notifications_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert not Notifier.from_environment().enabled


def test_a_send_failure_is_logged_at_debug_and_never_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    with caplog.at_level(logging.DEBUG, logger="tokend"):
        Notifier.from_environment().ready("up")
    [record] = caplog.records
    assert record.levelno == logging.DEBUG
    assert "READY=1" in record.getMessage()
    assert "up" not in record.getMessage().split("READY=1", 1)[1]  # only the first line is logged


def test_a_closed_receiver_is_a_send_failure_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "notify"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.close()  # the file stays, nobody reads it: ECONNREFUSED
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    with caplog.at_level(logging.DEBUG, logger="tokend"):
        Notifier.from_environment().watchdog()
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]


# --- the watchdog's interval ------------------------------------------------------------------------------


def test_watchdog_interval_is_watchdog_usec_in_seconds(systemd: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert Notifier.from_environment().watchdog_interval() == 30.0


def test_no_watchdog_usec_means_no_watchdog(systemd: socket.socket) -> None:
    assert Notifier.from_environment().watchdog_interval() is None


def test_watchdog_for_this_process(systemd: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "500000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier.from_environment().watchdog_interval() == 0.5


def test_watchdog_meant_for_another_process(systemd: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert Notifier.from_environment().watchdog_interval() is None


@pytest.mark.parametrize("usec", ["", "0", "-5", "thirty", "3e7", "1.5", "²"])
def test_a_nonsense_watchdog_usec_is_ignored(
    systemd: socket.socket, monkeypatch: pytest.MonkeyPatch, usec: str
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    assert Notifier.from_environment().watchdog_interval() is None


@pytest.mark.parametrize("pid", ["0", "-1", "me"])
def test_a_nonsense_watchdog_pid_is_as_if_unset(
    systemd: socket.socket, monkeypatch: pytest.MonkeyPatch, pid: str
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", pid)
    assert Notifier.from_environment().watchdog_interval() == 30.0


def test_from_environment_takes_a_mapping(systemd: socket.socket) -> None:
    address = os.environ["NOTIFY_SOCKET"]
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"})
    assert notifier.watchdog_interval() == 2.0
    notifier.watchdog()
    assert received(systemd) == "WATCHDOG=1"
