"""What `tokend check` says of the fleet: one bounded look at Redis, and whether this config's key is the one
the fleet writes with.

A daemon with another key (or a config that differs in how it logs in) still runs, alone: nothing fails, the
fleet just saves nothing. That is the mistake worth catching before a deploy, so it is an error here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from tokend.credential import iso_utc
from tokend.fleet.config import FleetConfig
from tokend.fleet.envelope import FleetKey, RecordError, open_record
from tokend.fleet.logins import KEY_SEEN_WITHIN
from tokend.fleet.store import Store, StoreError
from tokend.providers import ProviderConfig

__all__ = ["FleetReport", "probe"]


@dataclass
class FleetReport:
    lines: list[str] = field(default_factory=list)  # what was found, to show as is
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def probe(config: FleetConfig, providers: Mapping[str, ProviderConfig]) -> FleetReport:
    """Ping Redis, read the namespace's key ids and each shared provider's record; never writes."""
    report = FleetReport()
    keys = [FleetKey.of(key, config.namespace) for key in config.key_bytes()]
    by_id = {key.id: key for key in keys}
    shared = {name: provider for name, provider in providers.items() if provider.fleet and provider.url is not None}
    shares = {name: keys[0].share_key(provider) for name, provider in shared.items()}
    store = Store(config)
    try:
        started = time.monotonic()
        await store.ping()
        report.lines.append(f"Redis at {store.where} answered in {(time.monotonic() - started) * 1000:.0f} ms")
        report.lines.append(f"reached: {await store.reached()}")
        report.lines.append(f"as user {config.user}" if config.user else "as Redis's default user")
        report.lines.append(store.deployment.tls_described())
        seen = await store.key_ids()
        records = await store.read(list(shares.values())) if shares else []
    except StoreError as exc:
        if exc.certificate:
            report.errors.append(
                f"fleet: the Redis server's TLS certificate cannot be verified ({exc}): set ca_bundle to the CA "
                "that signed it, and tls_server_name to the name it holds if that is not the host connected to")
        else:
            report.warnings.append(f"fleet: Redis did not answer ({exc}); the daemon would log in alone until it does")
        return report
    finally:
        await store.close()
    _key_ids(report, config.namespace, keys[0].id, by_id, seen)
    for (name, share), record in zip(shares.items(), records, strict=True):
        if record is None:
            report.lines.append(f"{name}: no token of the fleet's for it yet (or it logs in with other settings)")
            continue
        secrets = {where: secret.get() for where, secret in shared[name].secrets().items()}
        try:
            open_record(record, by_id, share, secrets)
        except RecordError as exc:
            report.errors.append(f"fleet: provider {name}: the fleet's token for it cannot be opened: {exc}")
        else:
            report.lines.append(f"{name}: the fleet's current token opens with this key")
    return report


def _key_ids(report: FleetReport, namespace: str, ours: str, by_id: Mapping[str, FleetKey],
             seen: Mapping[str, int]) -> None:
    now = time.time()
    foreign = sorted(kid for kid, at in seen.items() if kid not in by_id and now - at < KEY_SEEN_WITHIN)
    if ours in seen:
        report.lines.append(f"key id {ours}: the fleet writes with it (last at {iso_utc(seen[ours])})")
    elif not seen:
        report.lines.append(f"no daemon of namespace {namespace} has written a token yet")
    if foreign:
        report.errors.append(
            f"fleet: daemons of namespace {namespace} write with key id(s) {', '.join(foreign)}, which this config's "
            f"keys are not (it writes with {ours}): tokens would not be shared with them; give every daemon the "
            "same encryption_key")
