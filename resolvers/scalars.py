"""JSON, DateTime and Upload scalars."""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

from ariadne import ScalarType, upload_scalar
from graphql import GraphQLError

json_scalar = ScalarType("JSON")
datetime_scalar = ScalarType("DateTime")


@json_scalar.serializer
def serialize_json(value: Any) -> Any:
    return value


@json_scalar.value_parser
def parse_json(value: Any) -> Any:
    """Variables and literals alike (graphql-core parses a literal to a value and calls this).
    A JSON string inside JSON (a common client mistake) is parsed, and rejected when malformed."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in "{[":
            try:
                value = json.loads(stripped)
            except json.JSONDecodeError as exc:
                raise GraphQLError(f"JSON cannot represent value: {exc.msg}") from exc
            except RecursionError:
                # Not chained: the error formatter would find the RecursionError and call it a crash.
                raise GraphQLError("JSON cannot represent value: nested too deeply") from None
    _refuse_non_finite(value)
    return value


def _refuse_non_finite(value: Any) -> None:
    """NaN and ±Infinity are not JSON (Python's json module reads the tokens, and reads a number
    too large for a double, such as 1e400, as infinity); PostgreSQL refuses them in jsonb.
    Walked without recursion: a value as deep as the request parser allows cannot overflow."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                raise GraphQLError(
                    "JSON cannot represent value: numbers must be finite (no NaN or Infinity, "
                    "and within ±1.8e308)"
                )
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)


@datetime_scalar.serializer
def serialize_datetime(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str):
        return value
    raise GraphQLError(f"DateTime cannot represent value: {value!r}")


@datetime_scalar.value_parser
def parse_datetime(value: Any) -> datetime:
    if not isinstance(value, str):
        raise GraphQLError("DateTime must be an ISO 8601 string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise GraphQLError(f"DateTime cannot represent value: {value!r}") from exc
    if parsed.tzinfo is None:
        raise GraphQLError("DateTime needs a time zone offset, e.g. 2026-01-01T00:00:00Z")
    return parsed


bindables = [json_scalar, datetime_scalar, upload_scalar]
