"""Felloh API key management and rotation, through the daemon's admin endpoints and the CLI."""

from __future__ import annotations

import asyncio
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.daemon import HEADERS, tokend_command, write_config
from tests.test_api import serving, settings_for
from tokend.config.settings import Settings
from tokend.testing import FakeFelloh, FakeProviders

ORG = "X9876"


def cli(daemon: Any, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tokend_command("--config", str(daemon.config), "felloh", *args), capture_output=True,
                          text=True, timeout=60, input=stdin)


def test_list_create_and_delete_keys_from_the_cli(daemon_factory, fakes, tmp_path) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory()
    felloh: FakeFelloh = fakes.felloh
    listed = cli(daemon, "keys", "list", "--provider", "felloh", "--organisation", ORG)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "PUBLIC", "KEY", "SECRET", "CREATED", "USER"]
    first = next(iter(felloh.keys.values()))
    assert row.startswith(first.id) and f"…{first.secret_key[-4:]}" in row and row.endswith("in use")

    created = cli(daemon, "keys", "create", "--provider", "felloh", "--organisation", ORG, "--name", "ci")
    assert created.returncode == 0, created.stderr
    new = next(key for key in felloh.keys.values() if key.name == "ci")
    assert f"public key: {new.public_key}" in created.stdout and new.secret_key not in created.stdout
    secret_file = tmp_path / "new-secret"
    shown = cli(daemon, "keys", "create", "--provider", "felloh", "--organisation", ORG, "--name", "ci2",
                "--secret-file", str(secret_file))
    second = next(key for key in felloh.keys.values() if key.name == "ci2")
    assert shown.returncode == 0 and second.secret_key not in shown.stdout
    assert secret_file.read_text() == second.secret_key + "\n"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600

    in_use = cli(daemon, "keys", "delete", "--provider", "felloh", "--organisation", ORG, first.id, "--yes")
    assert in_use.returncode == 1 and "is the key felloh logs in with" in in_use.stderr
    unconfirmed = cli(daemon, "keys", "delete", "--provider", "felloh", new.id, stdin="")
    assert unconfirmed.returncode == 1 and "--yes" in unconfirmed.stderr and new.id in felloh.keys
    deleted = cli(daemon, "keys", "delete", "--provider", "felloh", "--organisation", ORG, new.id, "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert new.id not in felloh.keys and first.id in felloh.keys

    foreign = cli(daemon, "keys", "list", "--provider", "felloh", "--organisation", "OTHER")
    assert foreign.returncode == 1
    assert "list keys answered 403: You do not have access to this organisation (request id " in foreign.stderr
    not_felloh = cli(daemon, "keys", "list", "--provider", "fts", "--organisation", ORG)
    assert not_felloh.returncode == 1 and "key management is for Felloh" in not_felloh.stderr


def test_rotation_end_to_end_serves_tokens_without_a_gap(daemon_factory, fakes, tmp_path) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory()
    felloh: FakeFelloh = fakes.felloh
    old = next(iter(felloh.keys.values()))
    old_pair = (old.public_key, old.secret_key)
    failures: list[str] = []
    stop = threading.Event()

    def sample() -> None:
        with httpx.Client(base_url=daemon.url, headers=HEADERS) as client:
            while not stop.is_set():
                answer = client.get("/token/felloh")
                if answer.status_code != 200 or not felloh.is_valid(answer.json()["token"]):
                    failures.append(answer.text)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        time.sleep(0.2)
        rotated = cli(daemon, "rotate", "--provider", "felloh", "--organisation", ORG)
        time.sleep(0.2)
    finally:
        stop.set()
        sampler.join(timeout=30)
    assert rotated.returncode == 0, rotated.stderr
    assert failures == []
    assert old.id not in felloh.keys and len(felloh.keys) == 1
    new = next(iter(felloh.keys.values()))
    assert f"felloh now logs in with key {new.id}" in rotated.stdout and f"old key {old.id} deleted" in rotated.stdout
    for name, value in (("felloh_public_key", new.public_key), ("felloh_private_key", new.secret_key)):
        path = tmp_path / name
        assert path.read_text() == value + "\n" and stat.S_IMODE(path.stat().st_mode) == 0o600
    # The old pair no longer logs in; the provider does, with the new one, on a forced refresh.
    assert httpx.post(f"{fakes.felloh_url}/token", json=dict(zip(("public_key", "private_key"), old_pair,
                      strict=True)), headers={"Accept": "application/json"}).status_code == 401
    assert daemon.get("/status").json()["providers"]["felloh"]["state"] == "ok"
    assert old_pair[1] not in daemon.log() and new.secret_key not in daemon.log() + rotated.stdout


def rotate(settings: Settings, organisation: str = ORG) -> tuple[int, dict[str, Any], list[int]]:
    """Rotate in-process; returns (status, answer, the status of a GET /token/felloh after it)."""
    async def go() -> tuple[int, dict[str, Any], list[int]]:
        async with serving(settings) as client:
            answer = await client.post("/felloh/felloh/rotate", json={"organisation": organisation})
            after = [(await client.get(f"/token/{name}")).status_code for name in ("felloh",)]
            return answer.status_code, answer.json(), after

    return asyncio.run(go())


def files(tmp_path: Path) -> tuple[str, str]:
    return (tmp_path / "felloh_public_key").read_text(), (tmp_path / "felloh_private_key").read_text()


def test_a_failed_create_changes_nothing(tmp_path, fakes) -> None:  # type: ignore[no-untyped-def]
    settings, before = settings_for(tmp_path, fakes), dict(fakes.felloh.keys)
    fakes.felloh.fail_keys("create", 500)
    status, answer, after = rotate(settings)
    assert status == 502 and answer["error"] == "upstream_error" and answer["request_id"]
    assert "create key answered 500" in answer["message"]
    assert fakes.felloh.keys == before and after == [200]
    assert files(tmp_path) == (fakes.felloh.public_key + "\n", fakes.felloh.private_key + "\n")


def test_a_new_key_that_cannot_log_in_is_discarded_and_the_old_one_kept(tmp_path, fakes) -> None:  # type: ignore[no-untyped-def]
    settings, before = settings_for(tmp_path, fakes), dict(fakes.felloh.keys)

    async def go() -> tuple[int, dict[str, Any], int]:
        async with serving(settings) as client:
            await client.get("/token/felloh")  # the first login is done: the next is the new key's
            fakes.felloh.fail(401, times=1)
            answer = await client.post("/felloh/felloh/rotate", json={"organisation": ORG})
            return answer.status_code, answer.json(), (await client.get("/token/felloh")).status_code

    status, answer, after = asyncio.run(go())
    assert status == 502 and "rotation of felloh stopped, the old key is still in use" in answer["message"]
    assert fakes.felloh.keys.keys() == before.keys() and after == 200
    assert files(tmp_path) == (fakes.felloh.public_key + "\n", fakes.felloh.private_key + "\n")


def test_a_failed_delete_leaves_the_new_key_in_use_and_says_so(tmp_path, fakes) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(tmp_path, fakes)
    old_id = next(iter(fakes.felloh.keys))
    fakes.felloh.fail_keys("delete", 503)
    status, answer, after = rotate(settings)
    assert status == 200 and answer["old_key_deleted"] is False and after == [200]
    assert f"the old key {old_id} could not be deleted: delete key answered 503" in answer["warning"]
    new = fakes.felloh.keys[answer["new_key_id"]]
    assert old_id in fakes.felloh.keys and files(tmp_path) == (new.public_key + "\n", new.secret_key + "\n")


def test_rotation_needs_file_references(tmp_path, fakes) -> None:  # type: ignore[no-untyped-def]
    config = write_config(tmp_path, fakes)
    reference = f'{{ file = "{tmp_path / "felloh_public_key"}" }}'
    config.write_text(config.read_text().replace(reference, f'"{fakes.felloh.public_key}"'))
    status, answer, _ = rotate(Settings.load(config))
    assert status == 400 and "must both be { file = ... } references" in answer["message"]
    assert "plain string" in answer["message"] and fakes.felloh.public_key not in answer["message"]


def test_scheduled_rotation(tmp_path, fakes: FakeProviders) -> None:
    extra = f"""
[providers.rotating]
kind = "felloh"
base_url = "{fakes.felloh_url}"
public_key = {{ file = "{tmp_path / 'rot_public'}" }}
private_key = {{ file = "{tmp_path / 'rot_private'}" }}
organisation = "{ORG}"
rotate_every = "1s"
"""
    (tmp_path / "rot_public").write_text(fakes.felloh.public_key)
    (tmp_path / "rot_private").write_text(fakes.felloh.private_key)
    settings = settings_for(tmp_path, fakes, extra=extra)

    async def go() -> None:
        async with serving(settings) as client:
            deadline = time.monotonic() + 20
            while (tmp_path / "rot_public").read_text().strip() == fakes.felloh.public_key:
                assert time.monotonic() < deadline, "no scheduled rotation happened"
                assert (await client.get("/token/rotating")).status_code == 200
                await asyncio.sleep(0.1)
            assert (await client.get("/token/rotating")).status_code == 200

    asyncio.run(go())
    assert any(key.public_key == (tmp_path / "rot_public").read_text().strip() for key in fakes.felloh.keys.values())
    # The first rotation started from the key the "felloh" provider shares: that key must survive it.
    assert fakes.felloh.public_key in {key.public_key for key in fakes.felloh.keys.values()}


def test_a_created_key_s_secret_is_never_cacheable_and_needs_the_request_checks(tmp_path, fakes) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        async with serving(settings_for(tmp_path, fakes)) as client:
            created = await client.post("/felloh/felloh/keys", json={"organisation": ORG, "name": "x"})
            assert created.status_code == 201 and created.json()["secret_key"]
            assert created.headers["cache-control"] == "no-store"
            refused = await client.post("/felloh/felloh/keys", json={"organisation": ORG, "name": "y"},
                                        headers={"X-Tokend-Request": ""})
            assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
            failed = await client.get("/felloh/felloh/keys", params={"organisation": "OTHER"})
            assert failed.status_code == 502 and failed.headers["cache-control"] == "no-store"

    asyncio.run(go())
    assert [key.name for key in fakes.felloh.keys.values()].count("y") == 0
