"""The proxy's figures for /metrics: requests by provider and status class, retries, failures, latency.

Counted in plain dicts on the data path (an int added per request), and turned into Prometheus families
only when /metrics is scraped.
"""

from __future__ import annotations

import bisect
from collections import Counter as Tally
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

__all__ = ["ProxyStats"]

# Upstream latency, to the answer head: from a loopback upstream (~0.1 ms) to one near its read timeout.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ProxyStats(Collector):
    def __init__(self, opened: Callable[[], int] = lambda: 0) -> None:
        """`opened`: how many upstream connections the pool has made (keep-alive shows as few of them)."""
        self._opened = opened
        self.requests: Tally[tuple[str, str]] = Tally()  # (provider, "2xx" ... or "client_gone") -> count
        self.retries: Tally[str] = Tally()
        self.failures: Tally[str] = Tally()
        self._latency: dict[str, list[int]] = {}  # provider -> count per bucket (+Inf last)
        self._latency_sum: dict[str, float] = {}

    def count(self, provider: str, status: int) -> None:
        self.requests[(provider, "client_gone" if status == 499 else f"{status // 100}xx")] += 1

    def retried(self, provider: str) -> None:
        self.retries[provider] += 1

    def failed(self, provider: str) -> None:
        self.failures[provider] += 1
        self.requests[(provider, "upstream_failed")] += 1

    def latency(self, provider: str, seconds: float) -> None:
        counts = self._latency.get(provider)
        if counts is None:
            counts = self._latency[provider] = [0] * (len(BUCKETS) + 1)
        counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self._latency_sum[provider] = self._latency_sum.get(provider, 0.0) + seconds

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily("tokend_proxy_requests", "Proxied requests, by provider and answer class.",
                                       labels=["provider", "status"])
        for (provider, status), count in sorted(self.requests.items()):
            requests.add_metric([provider, status], count)
        retries = CounterMetricFamily("tokend_proxy_retries", "Proxied requests sent again after a 401.",
                                      labels=["provider"])
        failures = CounterMetricFamily("tokend_proxy_upstream_failures",
                                       "Proxied requests whose upstream could not be reached or broke off.",
                                       labels=["provider"])
        for family, tally in ((retries, self.retries), (failures, self.failures)):
            for provider, count in sorted(tally.items()):
                family.add_metric([provider], count)
        latency = HistogramMetricFamily("tokend_proxy_upstream_seconds",
                                        "Time from sending a proxied request to the upstream's answer head.",
                                        labels=["provider"])
        for provider, counts in sorted(self._latency.items()):
            cumulative, total = [], 0
            for bound, count in zip((*map(str, BUCKETS), "+Inf"), counts, strict=True):
                total += count
                cumulative.append((bound, float(total)))
            latency.add_metric([provider], cumulative, self._latency_sum[provider])
        opened = CounterMetricFamily("tokend_proxy_upstream_connections",
                                     "Upstream connections the proxy opened (each kept alive and reused).",
                                     value=self._opened())
        yield from (requests, retries, failures, latency, opened)
