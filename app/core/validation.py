"""Argument checks shared by every domain: ids, paging, ranges."""

from __future__ import annotations

import math
import uuid

from app.core.errors import Invalid

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


def parse_id(value: object, field: str = "id") -> str:
    """A canonical UUID string, or `BAD_USER_INPUT` naming the argument."""
    try:
        return str(uuid.UUID(str(value)))
    except (ValueError, TypeError, AttributeError):
        raise Invalid(f"{field} must be a valid ID (UUID), got {value!r}", field=field) from None


def parse_ids(values: list[object] | None, field: str) -> list[str]:
    return [parse_id(v, field) for v in values or []]


def page(limit: int | None, offset: int | None) -> tuple[int, int]:
    """Lists default to 50 items and never return more than 500."""
    if limit is not None and limit < 0:
        raise Invalid("limit must not be negative", field="limit")
    if offset is not None and offset < 0:
        raise Invalid("offset must not be negative", field="offset")
    chosen = DEFAULT_LIMIT if limit is None else min(limit, MAX_LIMIT)
    return chosen, offset or 0


def finite(value: float | None, field: str, *, low: float | None = None, high: float | None = None) -> None:
    """Rejects NaN/inf and values outside [low, high]."""
    if value is None:
        return
    if not math.isfinite(value):
        raise Invalid(f"{field} must be a finite number", field=field)
    if (low is not None and value < low) or (high is not None and value > high):
        raise Invalid(f"{field} must be between {low} and {high}, got {value}", field=field)


def storable_text(value: str | None, field: str) -> str | None:
    """PostgreSQL text cannot hold NUL characters: refused as the client's error, not a crash."""
    if value is not None and "\x00" in value:
        raise Invalid(f"{field} must not contain NUL (\\u0000) characters", field=field)
    return value


def required_text(value: str | None, field: str, *, max_length: int = 200) -> str:
    text = (value or "").strip()
    if not text:
        raise Invalid(f"{field} is required", field=field)
    if len(text) > max_length:
        raise Invalid(f"{field} must be at most {max_length} characters", field=field)
    storable_text(text, field)
    return text
