"""Typed domain errors: what went wrong, in terms a client can act on (`code`, `field`)."""

from __future__ import annotations

import math
from collections.abc import Awaitable
from typing import Any, ClassVar


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


# The one payload policy (docs/architecture.md): a mutation whose payload has `errors` reports
# there what the caller can fix by changing the input (BAD_USER_INPUT, NOT_FOUND, CONFLICT) or by
# retrying later (SERVICE_UNAVAILABLE, a mail not sent). Who-may-do-this failures and throttling
# stay GraphQL errors with `extensions.code`, since clients handle them in one place for every
# operation (sign in again, show "forbidden", back off).
GRAPHQL_ONLY = (Unauthenticated, Forbidden, RateLimited)


async def payload(key: str, work: Awaitable[Any]) -> dict[str, Any]:
    """`{key: result, errors: None}`, or `{key: None, errors: [error]}` for a user error."""
    try:
        return {key: await work, "errors": None}
    except GRAPHQL_ONLY:
        raise
    except DomainError as exc:
        return {key: None, "errors": [exc.as_payload_error()]}
