"""Templates for declarative providers: `"Bearer {token}"`, `"{api_key}"`.

Only `{name}` substitution (and `{{` / `}}` for literal braces): no attribute access, no format specs,
so a template in a config file can never reach anything but the values it is given. A name may be
qualified, `{header:Authorization}`, where a family of values is keyed by names of another syntax.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

_FIELD = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*(?::[A-Za-z0-9_.-]+)?)\}|[{}]")


def names(template: str) -> set[str]:
    """The names a template uses; ValueError for a stray brace."""
    found = set()
    for match in _FIELD.finditer(template):
        text = match.group(0)
        if text in ("{{", "}}"):
            continue
        if match.group(1) is None:
            raise ValueError(f"template {template!r} has a stray {text!r} (write {text * 2} for a literal brace)")
        found.add(match.group(1))
    return found


def check(template: str, known: Iterable[str]) -> str:
    """Validate at config time that a template only names known values."""
    unknown = names(template) - set(known)
    if unknown:
        allowed = ", ".join(f"{{{name}}}" for name in sorted(known)) or "none"
        raise ValueError(f"template {template!r} names {', '.join(sorted(unknown))}; known: {allowed}")
    return template


def render(template: str, values: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        text = match.group(0)
        if text in ("{{", "}}"):
            return text[0]
        return values[match.group(1)]

    return _FIELD.sub(replace, template)
