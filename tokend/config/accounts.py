"""User and group names as the config gives them (a name, or a number), turned into ids."""

from __future__ import annotations

import grp
import pwd

__all__ = ["client_group", "client_uid", "group_id", "user_id"]


def user_id(user: str) -> int:
    """The uid of `user` (a name or a number); LookupError naming it when there is no such user."""
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise LookupError(f"no user is named {user!r}") from None


def group_id(group: str) -> int:
    """The gid of `group` (a name or a number); LookupError naming it when there is no such group."""
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise LookupError(f"no group is named {group!r}") from None


def client_uid(user: str) -> int:
    """A client's unix_user as a uid; ValueError naming it when this machine has no such user."""
    try:
        return user_id(user)
    except LookupError:
        raise ValueError(f"unix_user {user!r} is not a user on this machine") from None


def client_group(group: str) -> tuple[int, frozenset[str]]:
    """A client's unix_group as (group id, the names of its members); ValueError when there is no such group.
    A number that names no group is still that group: its members are then known only by their gid."""
    try:
        entry = grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)
    except KeyError:
        if group.isdigit():
            return int(group), frozenset()
        raise ValueError(f"unix_group {group!r} is not a group on this machine") from None
    return entry.gr_gid, frozenset(entry.gr_mem)
