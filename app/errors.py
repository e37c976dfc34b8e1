"""Typed domain errors and the single place where errors become GraphQL responses."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from typing import Any, ClassVar

import asyncpg
from graphql import GraphQLError

log = logging.getLogger("sepulki.errors")


class DomainError(Exception):
    """An error the client caused or may act on; its message is safe to show."""

    code: ClassVar[str] = "BAD_USER_INPUT"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def as_payload_error(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "field": self.field}


class Invalid(DomainError):
    code = "BAD_USER_INPUT"


class NotFound(DomainError):
    code = "NOT_FOUND"

    @classmethod
    def of(cls, kind: str, ident: object) -> NotFound:
        return cls(f"{kind} with id {ident} not found")


class Unauthenticated(DomainError):
    code = "UNAUTHENTICATED"

    def __init__(self, message: str = "Authentication required") -> None:
        super().__init__(message)


class Forbidden(DomainError):
    code = "FORBIDDEN"


class Conflict(DomainError):
    code = "CONFLICT"


class RateLimited(DomainError):
    """Too many attempts; `retry_after` (seconds) says when the next one may succeed."""

    code = "RATE_LIMITED"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))


class Unavailable(DomainError):
    """A service this operation depends on (e.g. the MQTT broker) did not answer; retry later."""

    code = "SERVICE_UNAVAILABLE"


class NotImplementedYet(DomainError):
    code = "NOT_IMPLEMENTED"


# PostgreSQL text and jsonb cannot store NUL (\u0000): a value carrying one is the client's error,
# wherever it reaches the database.
_UNSTORABLE_TEXT = (asyncpg.CharacterNotInRepertoireError, asyncpg.UntranslatableCharacterError)


def error_formatter(error: GraphQLError, debug: bool = False) -> dict[str, Any]:
    """Map every error to `{message, locations, path, extensions.code}`; never leak internals."""
    formatted: dict[str, Any] = dict(error.formatted)
    original = error.original_error
    while isinstance(original, GraphQLError) and original.original_error is not None:
        original = original.original_error
    extensions: dict[str, Any] = dict(formatted.get("extensions") or {})
    if isinstance(original, DomainError):
        extensions["code"] = original.code
        if original.field:
            extensions["field"] = original.field
        if isinstance(original, RateLimited):
            extensions["retryAfter"] = original.retry_after
    elif isinstance(original, _UNSTORABLE_TEXT):
        formatted["message"] = "Text must not contain NUL (\\u0000) characters"
        extensions["code"] = "BAD_USER_INPUT"
    elif original is None or isinstance(original, GraphQLError):
        # Parse, validation and argument-coercion errors: the client sent a bad document.
        extensions.setdefault("code", "BAD_USER_INPUT")
    else:
        log.error("unhandled error in resolver", exc_info=original)
        formatted["message"] = "Internal server error"
        extensions["code"] = "INTERNAL_SERVER_ERROR"
        if debug:
            extensions["exception"] = repr(original)
    formatted["extensions"] = extensions
    return formatted


# graphql-core appends "Did you mean 'x'?" (or "'x', 'y', or 'z'?") to the message.
_SUGGESTION = re.compile(r"\s*Did you mean [^?]*\?")


def make_error_formatter(*, hide_suggestions: bool) -> Callable[[GraphQLError, bool], dict[str, Any]]:
    """`error_formatter`, and in production without schema suggestions. graphql-core's own
    `hide_suggestions` is passed where the API calls it; this also covers the paths it is not
    (subscriptions over websockets)."""
    if not hide_suggestions:
        return error_formatter

    def formatter(error: GraphQLError, debug: bool = False) -> dict[str, Any]:
        formatted = error_formatter(error, debug)
        formatted["message"] = _SUGGESTION.sub("", formatted["message"])
        return formatted

    return formatter
