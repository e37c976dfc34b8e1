"""One client cannot hold the API: websocket messages, sockets and subscriptions are capped per
socket, IP and smith, sockets that never initialise or sit idle anonymously are closed, and HTTP
connections must send their headers in time.

Most stories run the app under uvicorn in this process with the HTTP options `sepulki serve`
uses (app.web.http_server); the flood and the header timeouts run against a real `sepulki serve`
process, so that the client's own work does not share the server's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.core.channels import channels
from app.settings import Settings
from app.web.websocket import AuthenticatingWSHandler
from tests.live import serving
from tests.processes import sepulki_serve
from tests.seed_ids import ALPHA, BETA, DEV_FLEET
from tests.support import ADMIN, DEV
from tests.wsclient import PROTOCOL, SubscriptionError, connected

ROBOT_STATUS = "subscription($robotId: ID) { robotStatus(robotId: $robotId) { id status } }"
TASKS = "subscription($fleetId: ID) { taskUpdates(fleetId: $fleetId) { id } }"


@contextlib.asynccontextmanager
async def raw_socket(url: str) -> AsyncIterator[ClientConnection]:
    """A graphql-transport-ws socket that has sent nothing yet."""
    async with connect(url, subprotocols=[PROTOCOL], open_timeout=5) as ws:  # type: ignore[list-item]
        yield ws


async def send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(json.dumps(message))


async def closed_with(ws: ClientConnection, within: float = 5) -> tuple[int, str]:
    """The close code and reason the server sends, reading (and dropping) messages until then."""
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(within):
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None, "closed without a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def acknowledged(ws: ClientConnection, init: dict[str, Any] | None = None) -> None:
    await send(ws, {"type": "connection_init", **({"payload": init} if init is not None else {})})
    assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "connection_ack"


async def answers_ping(ws: ClientConnection) -> bool:
    await send(ws, {"type": "ping"})
    return bool(json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "pong")


# --- messages per socket ------------------------------------------------------------------------


async def test_a_socket_sending_past_its_burst_is_closed_with_4429_after_the_allowed_ones_are_answered(
    settings: Settings,
) -> None:
    async with serving(settings.replace(ws_message_burst=6, ws_message_rate=0.01)) as live:
        async with raw_socket(live.ws_url) as ws:
            await acknowledged(ws)
            # connection_init was the first of six; five pings are answered.
            for _ in range(5):
                assert await answers_ping(ws)
            await send(ws, {"type": "ping"})
            assert await closed_with(ws) == (4429, "Too many messages")
        # Other sockets have buckets of their own.
        async with connected(live.ws_url) as connection, connection.subscribe("{ __typename }") as hello:
            assert await hello.next() == {"__typename": "Query"}


async def test_the_bucket_refills_so_a_client_within_the_rate_keeps_its_socket(settings: Settings) -> None:
    async with serving(settings.replace(ws_message_burst=3, ws_message_rate=10)) as live:
        async with raw_socket(live.ws_url) as ws:
            await acknowledged(ws)
            for _ in range(8):
                assert await answers_ping(ws)
                await asyncio.sleep(0.15)


async def test_a_message_that_is_not_a_json_object_closes_the_socket_with_4400(settings: Settings) -> None:
    async with serving(settings) as live, raw_socket(live.ws_url) as ws:
        await acknowledged(ws)
        await ws.send("[1, 2]")
        assert await closed_with(ws) == (4400, "Invalid message")


# --- sockets per IP and per smith ---------------------------------------------------------------


async def test_the_socket_past_the_ip_cap_is_closed_with_4429_until_one_of_that_ip_leaves(
    settings: Settings,
) -> None:
    async with serving(settings.replace(ws_max_sockets_per_ip=3)) as live:
        async with contextlib.AsyncExitStack() as stack:
            held = [await stack.enter_async_context(raw_socket(live.ws_url)) for _ in range(3)]
            for ws in held:
                assert await answers_ping(ws)
            async with raw_socket(live.ws_url) as fourth:
                assert await closed_with(fourth) == (4429, "Too many connections")
            await held[0].close()
            # The slot frees once the server has seen the socket go.
            deadline = time.monotonic() + 5
            while True:
                async with raw_socket(live.ws_url) as again:
                    try:
                        await acknowledged(again)
                        break
                    except ConnectionClosed as closed:
                        assert closed.rcvd is not None and closed.rcvd.code == 4429
                assert time.monotonic() < deadline, "the slot of the closed socket was not freed"
                await asyncio.sleep(0.05)


async def test_a_smith_past_the_socket_cap_is_closed_at_connection_init_and_others_still_connect(
    settings: Settings,
) -> None:
    async with serving(settings.replace(ws_max_sockets_per_smith=2)) as live:
        dev = await live.bearer(DEV)
        async with connected(live.ws_url, dev), connected(live.ws_url, dev):
            with pytest.raises(ConnectionClosed) as closed:
                async with connected(live.ws_url, dev):
                    pass
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4429, "Too many connections")
            # Another smith and anonymous sockets are not counted with DEV.
            async with connected(live.ws_url, await live.bearer(ADMIN)), connected(live.ws_url):
                pass
        # Once DEV's sockets are gone, DEV connects again.
        async with connected(live.ws_url, dev):
            pass


# --- subscriptions per socket and per smith -----------------------------------------------------


async def test_a_subscription_past_the_socket_cap_is_rate_limited_and_the_socket_stays_open(
    settings: Settings,
) -> None:
    async with serving(settings.replace(ws_max_subscriptions_per_socket=2)) as live:
        async with connected(live.ws_url, await live.bearer(DEV)) as connection:
            async with (
                connection.subscribe(ROBOT_STATUS, {"robotId": ALPHA}),
                connection.subscribe(TASKS, {"fleetId": DEV_FLEET}),
            ):
                async with connection.subscribe(ROBOT_STATUS, {"robotId": BETA}) as third:
                    errors = await third.errors()
                assert [e["extensions"]["code"] for e in errors] == ["RATE_LIMITED"]
                assert errors[0]["message"] == "A socket may run 2 subscriptions at once"
                assert live.api.resources.events.subscribers(channels.robot_status(BETA)) == 0
                # Queries are not subscriptions: the same socket still answers them.
                async with connection.subscribe("{ __typename }") as hello:
                    assert await hello.next() == {"__typename": "Query"}
            # Both completed: their slots are free again.
            async with connection.subscribe(ROBOT_STATUS, {"robotId": BETA}):
                await live.listening(channels.robot_status(BETA))


async def test_refused_subscriptions_take_no_slot_so_an_anonymous_socket_is_never_rate_limited_for_them(
    settings: Settings,
) -> None:
    async with serving(settings.replace(ws_max_subscriptions_per_socket=1)) as live:
        async with connected(live.ws_url) as connection:
            for _ in range(3):
                async with connection.subscribe(ROBOT_STATUS, {"robotId": ALPHA}) as refused:
                    errors = await refused.errors()
                assert [e["extensions"]["code"] for e in errors] == ["UNAUTHENTICATED"]


async def test_a_smith_past_the_subscription_cap_over_all_its_sockets_is_rate_limited(
    settings: Settings,
) -> None:
    limits = {"ws_max_subscriptions_per_socket": 2, "ws_max_subscriptions_per_smith": 3}
    async with serving(settings.replace(**limits)) as live:
        dev = await live.bearer(DEV)
        async with (
            connected(live.ws_url, dev) as one,
            connected(live.ws_url, dev) as two,
            connected(live.ws_url, await live.bearer(ADMIN)) as admin,
            one.subscribe(ROBOT_STATUS, {"robotId": ALPHA}),
            one.subscribe(TASKS, {"fleetId": DEV_FLEET}),
            two.subscribe(TASKS),
        ):
            async with two.subscribe(ROBOT_STATUS, {"robotId": BETA}) as fourth:
                with pytest.raises(SubscriptionError) as refused:
                    await fourth.next()
            assert refused.value.codes == ["RATE_LIMITED"]
            assert refused.value.errors[0]["message"] == "An account may run 3 subscriptions at once"
            # The admin's count is the admin's own.
            async with admin.subscribe(ROBOT_STATUS, {"robotId": BETA}):
                await live.listening(channels.robot_status(BETA))
            # And the socket that was refused still serves DEV.
            async with two.subscribe("{ __typename }") as hello:
                assert await hello.next() == {"__typename": "Query"}


# --- sockets that never initialise, anonymous sockets that idle ---------------------------------


async def test_a_socket_without_connection_init_is_closed_with_4408_after_the_timeout(
    settings: Settings,
) -> None:
    async with serving(settings.replace(ws_init_timeout_s=1)) as live, raw_socket(live.ws_url) as ws:
        started = time.monotonic()
        # Pings are answered but do not stand in for connection_init.
        assert await answers_ping(ws)
        assert await closed_with(ws) == (4408, "Connection initialisation timeout")
        assert 0.8 < time.monotonic() - started < 4


async def test_the_connection_init_wait_is_ten_seconds_unless_configured(base_settings: Settings) -> None:
    handler = AuthenticatingWSHandler(lambda: None, base_settings)
    assert handler.connection_init_wait_timeout == timedelta(seconds=10)


async def test_an_anonymous_socket_running_nothing_is_closed_as_idle_while_busy_and_signed_in_ones_stay(
    settings: Settings,
) -> None:
    async with serving(settings.replace(ws_anonymous_idle_s=1)) as live:
        dev = await live.bearer(DEV)
        async with (
            raw_socket(live.ws_url) as idle,
            raw_socket(live.ws_url) as busy,
            raw_socket(live.ws_url) as signed_in,
        ):
            await acknowledged(idle)
            await acknowledged(busy)
            await acknowledged(signed_in, dev)
            started = time.monotonic()

            async def idle_closes() -> tuple[tuple[int, str], float]:
                # Pings are not activity: a client could hold a socket for ever with them.
                for _ in range(2):
                    assert await answers_ping(idle)
                    await asyncio.sleep(0.3)
                return await closed_with(idle), time.monotonic() - started

            async def busy_queries() -> None:
                for n in range(8):
                    query = {"query": "{ __typename }"}
                    await send(busy, {"id": str(n), "type": "subscribe", "payload": query})
                    assert json.loads(await asyncio.wait_for(busy.recv(), 5))["type"] == "next"
                    assert json.loads(await asyncio.wait_for(busy.recv(), 5))["type"] == "complete"
                    await asyncio.sleep(0.3)

            closed, after = (await asyncio.gather(idle_closes(), busy_queries()))[0]
            assert closed == (1000, "Idle")
            assert 0.8 < after < 4
            # 2.4 s later, the socket that kept asking and the signed-in one are still open.
            assert await answers_ping(busy)
            assert await answers_ping(signed_in)


# --- against a real `sepulki serve` process -----------------------------------------------------


# The flooding client, in a process of its own: reconnects for `seconds`, each time sending
# `per_socket` subscribe messages as fast as it can; prints what the server answered.
FLOOD = """
import json, sys, time
from websockets.sync.client import connect
from websockets.exceptions import ConnectionClosed

url, seconds, per_socket = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
report = {"sockets": 0, "sent": 0, "answered": 0, "closes": []}
subscribe = json.dumps({"type": "subscribe", "id": "{}", "payload": {"query": "{ __typename }"}})
end = time.monotonic() + seconds
while time.monotonic() < end:
    with connect(url, subprotocols=["graphql-transport-ws"]) as ws:
        report["sockets"] += 1
        ws.send(json.dumps({"type": "connection_init"}))
        assert json.loads(ws.recv(5))["type"] == "connection_ack"
        try:
            for n in range(per_socket):
                ws.send(subscribe.replace("{}", str(n), 1))
                report["sent"] += 1
        except ConnectionClosed:
            pass
        try:
            while True:
                if json.loads(ws.recv(10))["type"] == "next":
                    report["answered"] += 1
        except ConnectionClosed as closed:
            rcvd = closed.rcvd
            report["closes"].append([rcvd.code, rcvd.reason] if rcvd else None)
print(json.dumps(report))
"""


async def _health_latencies(port: int, until: asyncio.Task[Any]) -> list[float]:
    latencies = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        while not until.done():
            started = time.monotonic()
            assert (await client.get("/health")).status_code == 200
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.05)
    return latencies


async def test_health_stays_fast_while_one_client_floods_subscribe_messages(
    database_url: str, tmp_path: Path
) -> None:
    async with sepulki_serve(database_url, tmp_path) as port:
        flood = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            FLOOD,
            f"ws://127.0.0.1:{port}/graphql",
            "4",
            "20000",
            stdout=subprocess.PIPE,
        )
        finished = asyncio.create_task(flood.communicate())
        latencies = await _health_latencies(port, finished)
        out, _ = await finished
    assert flood.returncode == 0
    report = json.loads(out)
    # Every socket of the flood was closed for its rate, after at most its burst (100) of answers
    # plus what the refill (20/s over the run) allowed.
    assert report["sockets"] >= 1
    assert report["closes"] == [[4429, "Too many messages"]] * report["sockets"]
    assert report["answered"] <= report["sockets"] * 100 + 6 * 20
    assert len(latencies) >= 20
    assert max(latencies) < 1.0, f"/health took up to {max(latencies):.2f} s during the flood"


async def _read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sent until it closed (or reset) the connection."""
    received = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            received += chunk
    return received


async def test_connections_that_trickle_or_withhold_their_headers_are_closed_after_the_timeout(
    database_url: str, tmp_path: Path
) -> None:
    timeouts = {"http_header_timeout_s": "1", "http_keep_alive_s": "60"}
    async with sepulki_serve(database_url, tmp_path, **timeouts) as port:

        async def trickling() -> tuple[bytes, float]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            started = time.monotonic()
            closing = asyncio.create_task(_read_until_closed(reader))
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            with contextlib.suppress(ConnectionError):
                while not closing.done() and time.monotonic() - started < 10:
                    writer.write(b"X-Slow: 1\r\n")
                    await asyncio.sleep(0.2)
            received = await asyncio.wait_for(closing, 10)
            writer.close()
            return received, time.monotonic() - started

        async def silent() -> tuple[bytes, float]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            started = time.monotonic()
            received = await asyncio.wait_for(_read_until_closed(reader), 10)
            writer.close()
            return received, time.monotonic() - started

        async def slow_after_keep_alive() -> tuple[bytes, float]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            # Kept alive (60 s): the next request's header trickle must not hold it.
            started = time.monotonic()
            closing = asyncio.create_task(_read_until_closed(reader))
            with contextlib.suppress(ConnectionError):
                writer.write(b"GET /health HTTP/1.1\r\n")
                while not closing.done() and time.monotonic() - started < 10:
                    writer.write(b"X-Slow: 1\r\n")
                    await asyncio.sleep(0.2)
            received = await asyncio.wait_for(closing, 10)
            writer.close()
            return received, time.monotonic() - started

        results = await asyncio.gather(
            *(trickling() for _ in range(20)), *(silent() for _ in range(20)), slow_after_keep_alive()
        )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/health")).status_code == 200
    for received, after in results:
        assert received == b""
        assert 0.8 < after < 4


async def test_headers_past_the_size_limit_answer_431_and_normal_ones_are_served(
    database_url: str, tmp_path: Path
) -> None:
    async with sepulki_serve(database_url, tmp_path, http_max_header_bytes="8192") as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = asyncio.create_task(_read_until_closed(reader))
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        # 40 KB of headers, sent like a client that has them all at once.
        with contextlib.suppress(ConnectionError):
            for _ in range(40):
                writer.write(b"X-Big: " + b"a" * 1000 + b"\r\n")
                await writer.drain()
        received = await asyncio.wait_for(answer, 10)
        writer.close()
        assert received.startswith(b"HTTP/1.1 431 ")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            response = await client.get("/health", headers={"x-fine": "a" * 4000})
            assert response.status_code == 200
