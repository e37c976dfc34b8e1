"""JSON-safe payloads: what event_log stores and the bus carries must be the same value."""

from __future__ import annotations

from typing import Any

import orjson


def _default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


# orjson writes datetimes and UUIDs as isoformat()/str() do; the rest goes through _default.
_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS


def jsonable(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload as JSON gives it back: datetimes as ISO text, UUIDs and decimals as text."""
    result: dict[str, Any] = orjson.loads(orjson.dumps(payload, default=_default, option=_JSON_OPTIONS))
    return result


def dumps(value: Any) -> bytes:
    """JSON bytes, converting values the way `jsonable` does."""
    return orjson.dumps(value, default=_default, option=_JSON_OPTIONS)
