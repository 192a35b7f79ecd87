"""A fleet record is adopted only with more left than its kind's renewal margin: an AWS credential 15 minutes
from expiry (which every SDK would refresh at once) is renewed, not adopted; other kinds keep the default.
Without Redis: the fleet's decision on a record, as its login reads one."""

from __future__ import annotations

import base64
import os
import random
import time
from pathlib import Path

import pytest

from tests.test_aws import role_table, write
from tokend.config.settings import Settings
from tokend.credential import AwsKeys, Credential
from tokend.fleet.config import FleetConfig
from tokend.fleet.envelope import seal
from tokend.fleet.logins import FleetLogins
from tokend.fleet.status import Tally
from tokend.renewal.logins import LoginCall, LoginReason
from tokend.renewal.policy import renew_margin


async def _never(call: LoginCall) -> Credential:
    raise AssertionError("no login here")


def adopted(tmp_path: Path, body: str, name: str, left: float, lifetime: float) -> bool:
    config = Settings.load(write(tmp_path, body)).providers[name]
    fleet = FleetLogins(_never, FleetConfig.model_validate({
        "redis_url": "redis://127.0.0.1:1", "encryption_key": base64.b64encode(os.urandom(32)).decode()}),
        rng=random.Random(1))
    now = time.time()
    credential = Credential(token="FwoG-session", token_type="aws", expires_at=now + left, headers={},
                            obtained_at=now + left - lifetime, aws=AwsKeys("ASIAEXAMPLE", "secret"))
    secrets = {where: secret.get() for where, secret in config.secrets().items()}
    share = fleet._share_keys(name, config)[0]
    record = seal(credential, fleet._keys[0], share, secrets)
    call = LoginCall(name, config, LoginReason.RENEWAL)
    return fleet._usable(call, Tally(), share, record) is not None


@pytest.mark.filterwarnings("ignore:.*plain string.*")
@pytest.mark.parametrize(("left", "taken"), [(15 * 60, False), (19 * 60, False), (25 * 60, True)])
def test_an_aws_credential_within_twenty_minutes_of_expiry_is_not_adopted(
    tmp_path: Path, left: float, taken: bool
) -> None:
    body = role_table("https://sts.example.com", "AKIAEXAMPLE", "secret")
    assert adopted(tmp_path, body, "role", left, lifetime=3600) is taken


def test_other_kinds_keep_the_default_margin(tmp_path: Path) -> None:
    # A kind without its own margin: a token with a minute left is still the fleet's to share.
    assert renew_margin(None, 3600) < 60
    body = '[providers.key]\nkind = "http"\nurl = "https://auth.example.com/login"\ntoken_pointer = "/t"\n'
    assert adopted(tmp_path, body, "key", 60, lifetime=3600)
