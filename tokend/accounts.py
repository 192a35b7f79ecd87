"""User and group names as the config gives them (a name, or a number), turned into ids."""

from __future__ import annotations

import grp
import pwd

__all__ = ["group_id", "user_id"]


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
