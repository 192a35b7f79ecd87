"""Who in a fleet may spend a user token's refresh token, and which fleet records hold one already spent.

A user token's refresh token is held by every daemon of the fleet, and a rotating server revokes the user's
whole sign-in at its second use. So:

- Each record names the daemon that rotated it last (its `spender`: a random id each daemon draws at start)
  and carries the keyed digests of the last refresh tokens spent before it, and its generation.
- A daemon never adopts or spends a record of a lower generation than one it holds or has seen, nor one whose
  refresh token it has seen listed as spent: that is an old record put back (a restored backup, a lagging
  replica promoted). When the only refresh token left is such a one, it asks for a sign-in.
- While Redis cannot be reached, only the daemon that rotated the token last spends it; the others serve what
  they hold until it expires, then answer `fleet_unavailable`. When Redis answers again, the spender writes
  what it rotated alone first; a daemon that held off waits for that record (up to SPENDER_GRACE), and past
  it asks for a sign-in rather than spend a refresh token the spender may have spent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tokend.credential import Credential
from tokend.errors import FleetUnavailable, SignInNeeded
from tokend.fleet.envelope import MAX_SPENT, FleetKey, Lineage
from tokend.providers import ProviderConfig

MAX_SEEN_SPENT = 64  # digests remembered per provider from the records seen


@dataclass
class _Line:
    """One provider's line of rotations as this daemon knows it."""

    generation: int = -1  # the highest seen in a record, or held
    spent: set[str] = field(default_factory=set)  # digests of refresh tokens seen listed as spent
    rotated: str | None = None  # the access token of what this daemon rotated last: its refresh token is ours
    unwritten: tuple[Credential, Lineage, ProviderConfig] | None = None  # rotated alone, not yet in Redis
    refused: int | None = None  # the generation held when this daemon held off spending during an outage
    back_at: float | None = None  # monotonic: when Redis answered again after that


class Spenders:
    def __init__(self, spender: str, key: FleetKey, grace: float) -> None:
        self.id = spender
        self._key = key
        self.grace = grace
        self._lines: dict[str, _Line] = {}

    def line(self, share: str) -> _Line:
        return self._lines.setdefault(share, _Line())

    def digest(self, share: str, refresh_token: str) -> str:
        return self._key.spent_digest(share, refresh_token)

    # --- what records say ----------------------------------------------------------------------------------

    def saw(self, share: str, credential: Credential, lineage: Lineage) -> None:
        """A record read and found current: its generation and its spent digests are now known."""
        if credential.refresh_token is None:
            return
        line = self.line(share)
        line.generation = max(line.generation, credential.generation)
        line.spent.update(lineage.spent)
        if len(line.spent) > MAX_SEEN_SPENT:
            line.spent = set(lineage.spent)
        if lineage.spender != self.id and credential.token != line.rotated:
            line.rotated = None  # another daemon rotated it since: no longer ours to spend alone
        if line.refused is not None and credential.generation > line.refused:
            line.refused = line.back_at = None  # the spender's record came: nothing to wait for

    def rolled_back(self, share: str, credential: Credential, lineage: Lineage,
                    current: Credential | None) -> str | None:
        """Why `credential` (read from the fleet) is an old record put back, or None."""
        if credential.refresh_token is None:
            return None
        line = self.line(share)
        held = current.generation if current is not None and current.refresh_token is not None else -1
        newest = max(line.generation, held)
        if credential.generation < newest:
            return f"its generation {credential.generation} is older than generation {newest}, already seen"
        digest = self.digest(share, credential.refresh_token)
        if digest in line.spent or digest in lineage.spent:
            return "its refresh token is listed as spent by a newer record"
        return None

    def after(self, share: str, spent: str | None, base: Lineage) -> Lineage:
        """The lineage of a record this daemon writes after spending `spent` (from the record `base`)."""
        digests = base.spent if spent is None else (*base.spent, self.digest(share, spent))
        return Lineage(self.id, tuple(digests[-MAX_SPENT:]))

    # --- who may spend -------------------------------------------------------------------------------------

    def rotated(self, share: str, credential: Credential, lineage: Lineage | None = None) -> None:
        """This daemon rotated `credential`; with `lineage`, alone (Redis not reached): to write on return."""
        line = self.line(share)
        line.rotated = credential.token
        line.generation = max(line.generation, credential.generation)
        if lineage is not None:
            line.spent.update(lineage.spent)

    def may_spend_own(self, share: str, config: ProviderConfig, current: Credential | None) -> bool:
        """Whether this daemon may spend the refresh token it holds without the fleet's record: it is no user
        token, or this daemon rotated it last (an adopted or configured one is held by the others too)."""
        user_token = (current is not None and current.refresh_token is not None) or \
            "refresh_token" in type(config).model_fields
        return not user_token or (current is not None and self.line(share).rotated == current.token)

    def may_spend_on_empty(self, share: str, config: ProviderConfig, current: Credential | None) -> bool:
        """Whether this daemon may spend the refresh token it holds when the fleet's Redis has no record (it
        restarted empty, or failed over to a node that had none): only if it rotated that token itself and no
        daemon has rotated past it since (may_spend_own), or if it has known nothing of the fleet since it
        started, with a token read back from its state folder. Not one adopted from the fleet (the others hold
        it too), nor one of its own logins that another daemon has rotated past: that refresh token is spent."""
        if current is None or self.may_spend_own(share, config, current):
            return True
        return current.source == "state" and self.line(share).generation < 0

    def refuse(self, name: str, share: str, current: Credential | None, why: str, retry_after: float) -> None:
        """Raise FleetUnavailable unless this daemon may spend alone (see may_spend_own)."""
        line = self.line(share)
        line.refused = -1 if current is None else current.generation
        line.back_at = None
        raise FleetUnavailable(name, f"the fleet's Redis cannot be reached ({why}), and only the daemon that "
                               "rotated this user token last may spend its refresh token meanwhile; the token "
                               "held is served until it expires", retry_after=retry_after)

    def back(self) -> None:
        """Redis answers again: the wait for each spender's record starts now."""
        now = time.monotonic()
        for line in self._lines.values():
            if line.refused is not None and line.back_at is None:
                line.back_at = now

    def wait_for_spender(self, name: str, share: str, config: ProviderConfig, credential: Credential,
                         lineage: Lineage, retry_after: float) -> None:
        """After an outage in which this daemon held off, the fleet's record (`credential`) is still what it
        held then and names another spender: that daemon may have spent it alone. Wait for its record (raise
        FleetUnavailable); past the grace, ask for a sign-in rather than risk a second use."""
        line = self.line(share)
        if line.refused is None or credential.refresh_token is None or credential.generation > line.refused \
                or lineage.spender in (None, self.id):
            return
        back_at = line.back_at if line.back_at is not None else time.monotonic()
        line.back_at = back_at
        if time.monotonic() - back_at < self.grace:
            raise FleetUnavailable(name, "the fleet's Redis answers again; waiting for the daemon that rotated "
                                   "this user token last to write what it spent meanwhile", retry_after=retry_after)
        command = getattr(config, "sign_in", "tokend login {name}").format(name=name)
        raise SignInNeeded(name, f"{name}'s refresh token may already have been spent (the daemon that rotated it "
                           "last wrote nothing after Redis returned), and a second use would make the server "
                           f"revoke the whole sign-in: its user must sign in again: run `{command}`",
                           command=command, reason="refresh_token_spent")

    def lines(self) -> list[tuple[str, _Line]]:
        return list(self._lines.items())
