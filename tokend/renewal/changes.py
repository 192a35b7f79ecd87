"""What a reload does to each provider, worked out by comparing the running settings with the new ones."""

from __future__ import annotations

from dataclasses import dataclass, field

from tokend.providers import ProviderConfig

__all__ = ["Changes"]


@dataclass
class Changes:
    """What a reload did, by provider name.

    Added and changed providers log in at once; a changed one is replaced whole, its old token dropped,
    so that nothing is served from settings that no longer hold. Unchanged ones keep their tokens and
    make no login. Removed ones answer 404 from now on.
    """

    added: list[str]
    removed: list[str]
    changed: list[str]
    unchanged: list[str]
    restart_needed: list[str] = field(default_factory=list)  # "server", "upstream": read only at start

    @classmethod
    def between(cls, old: dict[str, ProviderConfig], new: dict[str, ProviderConfig]) -> Changes:
        return cls(
            added=[name for name in new if name not in old],
            removed=[name for name in old if name not in new],
            changed=[name for name in new if name in old and new[name] != old[name]],
            unchanged=[name for name in new if name in old and new[name] == old[name]],
        )
