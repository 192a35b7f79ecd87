"""What a daemon's fleet sharing shows on /status and /metrics: the Redis it shares through, as this daemon
found it, and each provider's counters."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from tokend.credential import iso_utc

log = logging.getLogger("tokend")


@dataclass
class Tally:
    """One provider's fleet counters, for /status and /metrics."""

    adoptions: int = 0
    leases_won: int = 0
    leases_lost: int = 0
    logins_alone: int = 0
    unreadable_records: int = 0
    failures_shared: int = 0  # calls answered with the fleet's recent failed login instead of another try
    last: str = "-"  # what the last login call did, in words


@dataclass
class Health:
    """The fleet's Redis as this daemon found it, and its providers' tallies."""

    where: str  # the Redis, as shown (no password)
    namespace: str
    key_id: str  # the writing key's id
    calls: Callable[[], int]  # round trips to Redis so far
    tallies: dict[str, Tally] = field(default_factory=dict)
    down_since: float | None = None  # wall clock: when Redis stopped answering, while it does not
    last_error: str | None = None
    redis_errors: int = 0
    foreign: dict[str, int] = field(default_factory=dict)  # key ids other daemons of the namespace write with

    def note_key_ids(self, seen: dict[str, int], ours: set[str], most: int, within: float) -> None:
        """Note the key ids other daemons of the namespace write with (`seen`: id -> when last), at most `most`
        (a Redis writer could fill the hash with made-up ids); say so once for one that wrote `within` seconds:
        their tokens can never be shared with this daemon (a wrong or missing encryption_key)."""
        now = time.time()
        for kid, at in seen.items():
            if kid in ours or (kid not in self.foreign and len(self.foreign) >= most):
                continue
            if now - at < within and kid not in self.foreign:
                log.warning("fleet_foreign_key namespace=%s key_id=%s ours=%s hint=%s", self.namespace, kid,
                            self.key_id, "tokens are not shared with that daemon: give every daemon the same "
                            "encryption_key")
            self.foreign[kid] = at

    def status(self) -> dict[str, Any]:
        return {
            "redis": self.where,
            "namespace": self.namespace,
            "state": "ok" if self.down_since is None else "unavailable",
            "unavailable_since": iso_utc(self.down_since),
            "last_error": self.last_error,
            "redis_errors": self.redis_errors,
            "redis_calls": self.calls(),
            "key_id": self.key_id,
            "other_key_ids": sorted(self.foreign),
            "providers": {name: dataclasses.asdict(tally) for name, tally in self.tallies.items()},
        }


class FleetCollector(Collector):
    def __init__(self, health: Health) -> None:
        self._health = health

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        health = self._health
        adoptions = CounterMetricFamily("tokend_fleet_adoptions", "Tokens adopted from the fleet instead of a login.",
                                        labels=["provider"])
        leases = CounterMetricFamily("tokend_fleet_leases", "Login leases sought, by outcome (won, lost).",
                                     labels=["provider", "outcome"])
        alone = CounterMetricFamily("tokend_fleet_logins_alone", "Logins made without the fleet (Redis failing).",
                                    labels=["provider"])
        unreadable = CounterMetricFamily("tokend_fleet_unreadable_records",
                                         "Fleet records refused: wrong key or tampered.", labels=["provider"])
        for name, tally in health.tallies.items():
            adoptions.add_metric([name], tally.adoptions)
            leases.add_metric([name, "won"], tally.leases_won)
            leases.add_metric([name, "lost"], tally.leases_lost)
            alone.add_metric([name], tally.logins_alone)
            unreadable.add_metric([name], tally.unreadable_records)
        errors = CounterMetricFamily("tokend_fleet_redis_errors", "Redis calls that failed or timed out.")
        errors.add_metric([], health.redis_errors)
        calls = CounterMetricFamily("tokend_fleet_redis_calls", "Round trips to Redis (a pipeline or script is one).")
        calls.add_metric([], health.calls())
        up = GaugeMetricFamily("tokend_fleet_redis_up", "1 while the fleet's Redis answers.")
        up.add_metric([], 0.0 if health.down_since is not None else 1.0)
        yield from (adoptions, leases, alone, unreadable, errors, calls, up)
