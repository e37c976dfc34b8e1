"""Every close code of graphql-transport-ws, as the graphql-ws project's protocol text names them:
a client that breaks the protocol is told why with the code its library understands (4400, 4401,
4403, 4408, 4409, 4429), a fault of the server is 4500 — never a dropped connection or 1011 — and
the server goes on serving everyone else.

The app runs under uvicorn in this process with `sepulki serve`'s HTTP options (tests/live.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.settings import Settings
from tests.live import Live, serving
from tests.seed_ids import ALPHA
from tests.support import DEV
from tests.wsclient import PROTOCOL, connected

ROBOT_STATUS = "subscription($robotId: ID) { robotStatus(robotId: $robotId) { id status } }"


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[Live]:
    async with serving(settings) as served:
        yield served


@contextlib.asynccontextmanager
async def raw_socket(url: str) -> AsyncIterator[ClientConnection]:
    """A graphql-transport-ws socket that has sent nothing yet."""
    async with connect(url, subprotocols=[PROTOCOL], open_timeout=5) as ws:  # type: ignore[list-item]
        yield ws


async def send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(json.dumps(message))


async def acknowledged(ws: ClientConnection, init: dict[str, Any] | None = None) -> None:
    await send(ws, {"type": "connection_init", **({"payload": init} if init is not None else {})})
    assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "connection_ack"


async def closed_with(ws: ClientConnection, within: float = 5) -> tuple[int, str]:
    """The close code and reason the server sends, reading (and dropping) messages until then."""
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(within):
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None, "closed without a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def still_serves(live: Live) -> None:
    async with connected(live.ws_url) as connection, connection.subscribe("{ __typename }") as hello:
        assert await hello.next() == {"__typename": "Query"}


# --- 4400: invalid messages ---------------------------------------------------------------------


async def test_a_frame_that_is_not_json_closes_with_4400_before_and_after_the_handshake(live: Live) -> None:
    async with raw_socket(live.ws_url) as ws:
        await ws.send("{ this is not json")
        assert await closed_with(ws) == (4400, "Invalid JSON")
    async with raw_socket(live.ws_url) as ws:
        await acknowledged(ws)
        await ws.send('{"type": "ping"')
        assert await closed_with(ws) == (4400, "Invalid JSON")
    await still_serves(live)


async def test_a_binary_frame_closes_with_4400(live: Live) -> None:
    async with raw_socket(live.ws_url) as ws:
        await acknowledged(ws)
        await ws.send(b'{"type": "ping"}')
        assert await closed_with(ws) == (4400, "Binary frames are not graphql-transport-ws messages")
    await still_serves(live)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"type": "start", "id": "1"}, "Invalid message type 'start'"),
        ({"id": "1"}, "Invalid message"),
        (
            {"type": "subscribe", "payload": {"query": "{ __typename }"}},
            '"subscribe" message requires a non-empty string "id"',
        ),
        ({"type": "subscribe", "id": "1"}, '"subscribe" message requires an object "payload"'),
        (
            {"type": "subscribe", "id": "1", "payload": {"query": 7}},
            '"subscribe" message payload requires a string "query"',
        ),
        (
            {"type": "subscribe", "id": "1", "payload": {"query": "{ __typename }", "variables": [1]}},
            '"subscribe" message payload "variables" must be an object or null',
        ),
        ({"type": "complete"}, '"complete" message requires a non-empty string "id"'),
        ({"type": "ping", "payload": "hello"}, '"ping" message payload must be an object'),
    ],
)
async def test_a_message_of_an_unknown_type_or_format_closes_with_4400_and_says_why(
    live: Live, message: dict[str, Any], reason: str
) -> None:
    async with raw_socket(live.ws_url) as ws:
        await acknowledged(ws)
        await send(ws, message)
        assert await closed_with(ws) == (4400, reason)


async def test_a_connection_init_whose_payload_is_not_an_object_closes_with_4400(live: Live) -> None:
    async with raw_socket(live.ws_url) as ws:
        await send(ws, {"type": "connection_init", "payload": "token"})
        assert await closed_with(ws) == (4400, '"connection_init" message payload must be an object')


async def test_an_empty_query_is_an_error_for_its_operation_and_the_socket_stays(live: Live) -> None:
    async with raw_socket(live.ws_url) as ws:
        await acknowledged(ws)
        await send(ws, {"type": "subscribe", "id": "1", "payload": {"query": ""}})
        answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert (answer["type"], answer["id"]) == ("error", "1")
        assert answer["payload"][0]["message"] == "The query must be a string."
        await send(ws, {"type": "ping"})
        assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "pong"}


# --- 4401, 4403, 4408, 4409, 4429 ---------------------------------------------------------------


async def test_subscribing_before_the_connection_is_acknowledged_closes_with_4401(live: Live) -> None:
    async with raw_socket(live.ws_url) as ws:
        await send(ws, {"type": "subscribe", "id": "1", "payload": {"query": "{ __typename }"}})
        assert await closed_with(ws) == (4401, "Unauthorized")


async def test_a_connection_init_with_a_token_that_is_not_ours_closes_with_4403(live: Live) -> None:
    async with raw_socket(live.ws_url) as ws:
        await send(ws, {"type": "connection_init", "payload": {"authToken": "not-a-token"}})
        assert await closed_with(ws) == (4403, "Forbidden")


async def test_no_connection_init_within_the_configured_wait_closes_with_4408(settings: Settings) -> None:
    async with serving(settings.replace(ws_init_timeout_s=1)) as live, raw_socket(live.ws_url) as ws:
        started = time.monotonic()
        assert await closed_with(ws) == (4408, "Connection initialisation timeout")
        assert 0.8 < time.monotonic() - started < 4


async def test_a_second_subscriber_with_the_id_of_a_running_one_closes_with_4409(live: Live) -> None:
    token = await live.api.token(*DEV)
    async with raw_socket(live.ws_url) as ws:
        await acknowledged(ws, {"authToken": token})
        subscribe = {
            "type": "subscribe",
            "id": "same",
            "payload": {"query": ROBOT_STATUS, "variables": {"robotId": ALPHA}},
        }
        await send(ws, subscribe)
        # Once the first is listening, the same id again breaks the protocol.
        await live.listening(f"robot-status:{ALPHA}")
        await send(ws, subscribe)
        assert await closed_with(ws) == (4409, "Subscriber for same already exists")


async def test_a_second_connection_init_closes_with_4429(live: Live) -> None:
    async with raw_socket(live.ws_url) as ws:
        await acknowledged(ws)
        await send(ws, {"type": "connection_init"})
        assert await closed_with(ws) == (4429, "Too many initialisation requests")


# --- 4500: the server's own fault ---------------------------------------------------------------


async def test_a_server_fault_while_handling_a_message_closes_with_4500_and_others_are_served(
    live: Live,
) -> None:
    token = await live.api.token(*DEV)
    # The sessions table out of reach: checking the socket's session fails inside the server.
    await live.api.resources.db.execute("ALTER TABLE sessions RENAME TO sessions_elsewhere")
    try:
        async with raw_socket(live.ws_url) as ws:
            await send(ws, {"type": "connection_init", "payload": {"authToken": token}})
            assert await closed_with(ws) == (4500, "Internal server error")
    finally:
        await live.api.resources.db.execute("ALTER TABLE sessions_elsewhere RENAME TO sessions")
    await still_serves(live)
