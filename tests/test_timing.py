"""When to log in: expiry sanity and renewal/retry timing, as pure functions."""

from __future__ import annotations

import base64
import json
import random

import pytest

from tokend.providers.expiry import SKEWED_LIFETIME, jwt_expiry, resolve_expiry
from tokend.renewal.policy import RETRY_FLOOR, renewal_delay, retry_delay

NOW = 1_800_000_000.0


def jwt(claims: dict[str, object]) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256'})}.{part(claims)}.signature"


def resolve(reported: float | None, token: str = "opaque") -> tuple[float, str | None]:
    return resolve_expiry(reported, token, now=NOW, default_lifetime=3600, max_lifetime=86400)


def test_a_sane_expiry_is_kept() -> None:
    assert resolve(NOW + 1800) == (NOW + 1800, None)


@pytest.mark.parametrize(
    ("reported", "token", "expected", "note"),
    [
        ((NOW + 1800) * 1000, "opaque", NOW + 1800, "milliseconds"),
        (None, jwt({"exp": NOW + 900}), NOW + 900, "JWT exp"),
        (None, "opaque", NOW + 3600, "default_lifetime"),
        (NOW - 30, "opaque", NOW + SKEWED_LIFETIME, "clock skew"),
        (NOW + 10 * 365 * 86400, "opaque", NOW + 86400, "max_lifetime"),
        (1800, "opaque", NOW + 1800, "lifetime in seconds"),
    ],
)
def test_senseless_expiries_are_corrected_with_a_note(reported, token, expected, note) -> None:  # type: ignore[no-untyped-def]
    expires_at, said = resolve(reported, token)
    assert expires_at == pytest.approx(expected)
    assert said is not None and note in said


def test_jwt_expiry_reads_only_well_formed_tokens() -> None:
    assert jwt_expiry(jwt({"exp": 123})) == 123.0
    assert jwt_expiry(jwt({"sub": "x"})) is None
    assert jwt_expiry("a.!!!.c") is None
    assert jwt_expiry("not-a-jwt") is None


def test_renewal_is_near_two_thirds_with_jitter_and_before_expiry() -> None:
    rng = random.Random(1)
    delays = [renewal_delay(3600, rng) for _ in range(1000)]
    assert all(0.56 * 3600 <= d <= 0.77 * 3600 for d in delays)
    assert max(delays) - min(delays) > 0.15 * 3600  # spread, so a fleet does not log in together
    assert all(renewal_delay(4, rng) <= 2 for _ in range(100))  # leaves 2 s for a short token
    assert renewal_delay(0.1, rng) == 0.5  # never a login loop


def test_retries_back_off_exponentially_with_full_jitter() -> None:
    rng = random.Random(2)
    first = [retry_delay(1, rng, retryable=True) for _ in range(500)]
    tenth = [retry_delay(10, rng, retryable=True) for _ in range(500)]
    assert max(first) <= 2 and min(first) >= RETRY_FLOOR
    third = [retry_delay(3, rng, retryable=True) for _ in range(500)]
    assert max(third) <= 8 and sum(third) / len(third) > 3
    assert 120 < sum(tenth) / len(tenth) < 180  # uniform below the 300 s cap
    assert max(retry_delay(30, rng, retryable=True) for _ in range(100)) <= 300


def test_retry_after_is_honoured_but_a_retry_still_comes_before_expiry() -> None:
    rng = random.Random(3)
    assert retry_delay(1, rng, retryable=True, retry_after=40) == 40
    assert retry_delay(1, rng, retryable=True, retry_after=40, time_left=30) == 15


def test_rejected_credentials_are_retried_slowly() -> None:
    rng = random.Random(4)
    assert retry_delay(1, rng, retryable=False) == 60
    assert retry_delay(2, rng, retryable=False) == 120
    assert retry_delay(9, rng, retryable=False) == 300
    # Near expiry a refused login is still not retried sooner than a minute: no burst of refusals.
    assert retry_delay(3, rng, retryable=False, time_left=4) == 60
    assert retry_delay(3, rng, retryable=False, time_left=200) == 100  # half the time left, at least 60 s


def test_the_first_renewal_after_a_start_is_spread_wider() -> None:
    rng = random.Random(5)
    first = [renewal_delay(3600, rng, first=True) for _ in range(2000)]
    later = [renewal_delay(3600, rng) for _ in range(2000)]
    assert min(first) >= 0.35 * 3600 and max(first) <= 0.77 * 3600
    assert max(first) - min(first) > 1.8 * (max(later) - min(later))  # a fleet started together spreads out
    assert all(renewal_delay(4, rng, first=True) <= 2 for _ in range(100))  # the same latest bound


def test_the_backoff_cap_is_the_provider_s_setting(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tokend.config.settings import Settings

    config = tmp_path / "c.toml"
    config.write_text('[providers.s]\nkind = "static"\nkey = "k"\nmax_retry_delay = 20\n')
    cap = Settings.load(config).providers["s"].max_retry_delay
    rng = random.Random(6)
    assert cap == 20 and max(retry_delay(30, rng, retryable=True, cap=cap) for _ in range(200)) <= 20
    assert retry_delay(5, rng, retryable=False, cap=cap) == 20
