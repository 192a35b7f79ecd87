"""JSON Pointers (RFC 6901): where a declarative provider finds the token and its expiry in an answer."""

from __future__ import annotations

from typing import Any

_MISSING = object()


def check_pointer(pointer: str) -> str:
    """Validate a pointer's syntax (config time): empty, or `/`-separated reference tokens."""
    if pointer and not pointer.startswith("/"):
        raise ValueError(f'JSON pointer "{pointer}" must start with "/" (e.g. "/data/token")')
    for part in pointer.split("/")[1:]:
        if "~" in part.replace("~0", "").replace("~1", ""):
            raise ValueError(f'JSON pointer "{pointer}" has a "~" not followed by 0 or 1')
    return pointer


def resolve(document: Any, pointer: str) -> Any:
    """The value at `pointer`, or KeyError naming the pointer when there is none."""
    value = document
    for part in pointer.split("/")[1:]:
        key = part.replace("~1", "/").replace("~0", "~")
        value = _step(value, key)
        if value is _MISSING:
            raise KeyError(pointer)
    return value


def _step(value: Any, key: str) -> Any:
    if isinstance(value, dict):
        return value.get(key, _MISSING)
    if isinstance(value, list) and key.isdigit() and (key == "0" or not key.startswith("0")):
        index = int(key)
        return value[index] if index < len(value) else _MISSING
    return _MISSING
