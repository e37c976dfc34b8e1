"""The single place where errors become GraphQL responses: `extensions.code` for a DomainError,
BAD_USER_INPUT for a bad document, "Internal server error" for everything else (logged)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import asyncpg
from graphql import GraphQLError

from app.core.errors import DomainError, RateLimited

log = logging.getLogger("sepulki.errors")


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
