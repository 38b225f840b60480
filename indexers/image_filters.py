"""Image metadata filters: equality, list membership and dotted keys into nested metadata."""

from __future__ import annotations

from typing import Any

__all__ = ["matches_filters"]


def _lookup(meta: dict[str, Any], key: str) -> tuple[bool, Any]:
    cur: Any = meta
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return False, None
        cur = cur[part]
    return True, cur


def matches_filters(meta: dict[str, Any], filters: dict[str, Any] | None) -> bool:
    """True when ``meta`` satisfies every filter.

    A filter on a list field matches when the wanted value is in the list (or, for a wanted
    list, when all its values are); otherwise values must be equal. A missing field never
    matches. Dotted keys look into nested dicts (``"meta.source"``).
    """
    for key, want in (filters or {}).items():
        found, have = _lookup(meta, key)
        if not found:
            return False
        if isinstance(have, list):
            wanted = want if isinstance(want, list) else [want]
            if not all(w in have for w in wanted):
                return False
        elif have != want:
            return False
    return True
