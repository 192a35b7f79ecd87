"""GET /metrics: the Prometheus text format, with prometheus-client.

Logins are counted and timed as they happen (the manager announces each one). What describes the
present (seconds until each token expires, consecutive failures) is read from the manager when scraped,
so nothing has to be kept in step. Local requests are counted in a plain dict: the token fast path adds
one to an int of its own per request, which costs far less than a labelled Counter's lock and lookup.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from tokend.renewal.events import LoginEvent
from tokend.renewal.manager import Manager

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Logins take tens of milliseconds to seconds; the top buckets catch the ones that run into timeouts.
_LOGIN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The daemon's metrics, in a registry of their own (never prometheus-client's global one)."""

    def __init__(
        self,
        manager: Manager,
        *,
        requests: Tally[tuple[str, int]],
        fast_answers: Callable[[], int] = lambda: 0,
        collectors: Iterable[Collector] = (),
    ) -> None:
        """`requests`: (route, status) -> count of the answers beyond the fast path, kept by the API;
        `fast_answers`: how many GET /token answers the fast path has given (counted there)."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = requests
        self._logins = Counter("tokend_logins", "Upstream logins, by provider and outcome (ok, error, rejected).",
                               ["provider", "outcome"], registry=self.registry)
        self._durations = Histogram("tokend_login_duration_seconds", "How long each upstream login took.",
                                    ["provider"], buckets=_LOGIN_BUCKETS, registry=self.registry)
        self.registry.register(_Present(manager, self.requests, fast_answers))
        manager.announcements.add_listener(self._observe_login)
        for collector in collectors:  # a part's own metrics (fleet mode's adoptions, leases, Redis errors)
            self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def _observe_login(self, event: LoginEvent) -> None:
        if event.credential is not None and event.credential.source == "fleet":
            return  # adopted from another daemon, no login: tokend_fleet_adoptions_total counts those
        self._logins.labels(event.name, event.outcome).inc()
        self._durations.labels(event.name).observe(event.seconds)


class _Present(Collector):
    """What is read at scrape time: token expiry, failures, readiness, and the request tally."""

    def __init__(self, manager: Manager, requests: Tally[tuple[str, int]], fast_answers: Callable[[], int]) -> None:
        self._manager = manager
        self._requests = requests
        self._fast_answers = fast_answers

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        expires = GaugeMetricFamily("tokend_token_expires_in_seconds",
                                    "Seconds until the provider's current token expires (absent: no expiry).",
                                    labels=["provider"])
        failures = GaugeMetricFamily("tokend_refresh_consecutive_failures",
                                     "Failed logins since the provider's last successful one.", labels=["provider"])
        valid = GaugeMetricFamily("tokend_token_valid", "1 while the provider holds a token that may be served.",
                                  labels=["provider"])
        now = time.time()
        for name, status in self._manager.status().items():
            expires_at = self._manager.expires_at(name)
            if expires_at is not None:
                expires.add_metric([name], expires_at - now)
            failures.add_metric([name], status["consecutive_failures"])
            valid.add_metric([name], 1.0 if self._manager.serves(name) else 0.0)
        requests = CounterMetricFamily("tokend_requests", "Local API requests, by route and status.",
                                       labels=["route", "status"])
        tally = self._requests + Tally({("/token/{name}", 200): self._fast_answers()})
        for (route, code), count in sorted(tally.items()):
            requests.add_metric([route, str(code)], count)
        yield from (expires, failures, valid, requests)
