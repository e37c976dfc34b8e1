"""The shape of a graphql-transport-ws message (the protocol text of the graphql-ws project,
PROTOCOL.md): what a client frame must be before AuthenticatingWSHandler acts on it, and the
close codes the server uses. A frame that is not a JSON object of a known type with the fields
that type needs is an invalid message, closed with 4400 at once, as the protocol demands."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

# The close codes of the protocol (graphql-ws's CloseCode); 4403, 4408 and 4429 are also
# sent from app/web/websocket.py and app/web/ws_limits.py with the reasons they name there.
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_SUBSCRIBER_EXISTS = 4409
CLOSE_TOO_MANY_INITS = 4429
CLOSE_INTERNAL = 4500

INVALID = "Invalid message"
UNAUTHORIZED = "Unauthorized"
TOO_MANY_INITS = "Too many initialisation requests"
INTERNAL = "Internal server error"

_TYPES = frozenset({"connection_init", "ping", "pong", "subscribe", "complete"})


class Invalid:
    """Why a frame is not a valid client message (the close reason, sent with 4400)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def decode(frame: Mapping[str, Any]) -> dict[str, Any] | Invalid:
    """The message of an ASGI `websocket.receive` event, or why it is invalid."""
    text = frame.get("text")
    if text is None:
        # Messages are stringified JSON: a binary frame is not one.
        return Invalid("Binary frames are not graphql-transport-ws messages")
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        return Invalid("Invalid JSON")
    if not isinstance(message, dict):
        return Invalid(INVALID)
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in _TYPES:
        return Invalid(f"Invalid message type {kind!r}" if isinstance(kind, str) else INVALID)
    payload = message.get("payload")
    if kind in ("connection_init", "ping", "pong"):
        if payload is not None and not isinstance(payload, dict):
            return Invalid(f'"{kind}" message payload must be an object')
        return message
    op_id = message.get("id")
    if not isinstance(op_id, str) or not op_id:
        return Invalid(f'"{kind}" message requires a non-empty string "id"')
    if kind == "subscribe":
        reason = _subscribe_payload_problem(payload)
        if reason is not None:
            return Invalid(reason)
    return message


def _subscribe_payload_problem(payload: Any) -> str | None:
    if not isinstance(payload, dict):
        return '"subscribe" message requires an object "payload"'
    if not isinstance(payload.get("query"), str):
        return '"subscribe" message payload requires a string "query"'
    variables = payload.get("variables")
    if variables is not None and not isinstance(variables, dict):
        return '"subscribe" message payload "variables" must be an object or null'
    name = payload.get("operationName")
    if name is not None and not isinstance(name, str):
        return '"subscribe" message payload "operationName" must be a string or null'
    extensions = payload.get("extensions")
    if extensions is not None and not isinstance(extensions, dict):
        return '"subscribe" message payload "extensions" must be an object or null'
    return None
