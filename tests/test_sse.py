"""Dashboards without websockets follow a fleet over Server-Sent Events, and resume after a drop.

The app runs under uvicorn (httpx's ASGITransport buffers whole responses, so it cannot stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest

from app.core.channels import channels
from app.infra.eventlog import record
from app.ingest.pipeline import Pipeline
from app.settings import Settings
from app.web import sse
from tests.live import Live, serving
from tests.seed_ids import ALPHA, DEV_FLEET, MISSING_FLEET, WAREHOUSE_FLEET
from tests.support import DEMO, DEV
from tests.test_apikeys import create_key
from tests.test_http_ingest import telemetry

WAIT_S = 5.0


@dataclass
class Message:
    """One SSE message: its fields, or the comment lines that came instead."""

    id: str | None = None
    event: str | None = None
    data: str | None = None
    comments: list[str] = field(default_factory=list)
    retry: str | None = None

    def json(self) -> Any:
        assert self.data is not None
        return json.loads(self.data)


class Stream:
    """Reads an open text/event-stream response message by message, each read bounded in time."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self, within: float = WAIT_S) -> Message:
        message = Message()
        async with asyncio.timeout(within):
            async for line in self._lines:
                if line == "":
                    return message
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "":
                    message.comments.append(value)
                else:
                    setattr(message, name, value)
        raise AssertionError("stream ended")

    async def next_event(self, within: float = WAIT_S) -> Message:
        """The next message that is an event, skipping comments (connected, heartbeats)."""
        deadline = time.monotonic() + within
        while True:
            message = await self.next(max(0.01, deadline - time.monotonic()))
            if message.event is not None:
                return message


@contextlib.asynccontextmanager
async def open_stream(
    live: Live,
    fleet_id: str = DEV_FLEET,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> AsyncIterator[Stream]:
    async with live.api.client.stream(
        "GET", f"/events/fleet/{fleet_id}", headers=headers or {}, params=params or {}, timeout=WAIT_S
    ) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = Stream(response)
        opening = await stream.next()
        assert opening.retry == str(sse.RETRY_MS) and opening.comments == ["connected"]
        yield stream


def bellows(fleet_id: str, value: float) -> dict[str, Any]:
    """An ingest batch's event, as app.ingest writes it (snake_case, like every payload)."""
    metric = {
        "name": "CPU_USAGE",
        "value": value,
        "unit": "%",
        "timestamp": "2026-11-23T10:00:00+00:00",
        "robot_id": ALPHA,
        "battery_level": 80.0,
        "health_score": 95.0,
        "pose": {"position": {"x": 1.0, "y": 2.0, "z": 0.0}, "jointPositions": [0.1]},
    }
    return {"fleet_id": fleet_id, "metrics": [metric], "events": [], "real_time": True}


async def latest_event_id(live: Live) -> int:
    value: int = await live.api.resources.db.fetchval("SELECT coalesce(max(id), 0) FROM event_log")
    return value


async def nobody_listens(live: Live, channel: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while live.api.resources.events.subscribers(channel) > 0:
        assert time.monotonic() < deadline, f"{channel} still has subscribers"
        await asyncio.sleep(0.01)


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[Live]:
    async with serving(settings) as running:
        yield running


async def test_dashboard_receives_its_fleets_events_with_their_ids(live: Live) -> None:
    headers = await live.bearer(DEMO)  # a smith granted VIEW_BELLOWS
    # Resuming from "now" makes the test independent of when the live subscription is confirmed:
    # an event committed before it arrives by replay, after it live, once either way.
    params = {"lastEventId": str(await latest_event_id(live))}
    async with open_stream(live, headers=headers, params=params) as stream:
        await live.listening(channels.bellows(DEV_FLEET))
        await live.publish([channels.bellows(WAREHOUSE_FLEET)], bellows(WAREHOUSE_FLEET, 1.0))
        first_id = await live.publish([channels.bellows(DEV_FLEET)], bellows(DEV_FLEET, 35.2))
        first = await stream.next_event()
        second_id = await live.publish([channels.bellows(DEV_FLEET)], bellows(DEV_FLEET, 36.4))
        second = await stream.next_event()

    assert (first.id, first.event) == (str(first_id), "bellows")
    assert first.json() == {
        "fleetId": DEV_FLEET,
        "metrics": [
            {
                "name": "CPU_USAGE",
                "value": 35.2,
                "unit": "%",
                "timestamp": "2026-11-23T10:00:00+00:00",
                "robotId": ALPHA,
                "batteryLevel": 80.0,
                "healthScore": 95.0,
                "pose": {"position": {"x": 1.0, "y": 2.0, "z": 0.0}, "jointPositions": [0.1]},
            }
        ],
        "events": [],
        "realTime": True,
    }
    assert second.id == str(second_id) and second.json()["metrics"][0]["value"] == 36.4
    await nobody_listens(live, channels.bellows(DEV_FLEET))


async def test_reconnecting_with_last_event_id_replays_the_missed_events_exactly_once(live: Live) -> None:
    headers = await live.bearer(DEV)
    channel = channels.bellows(DEV_FLEET)
    async with open_stream(
        live, headers=headers, params={"lastEventId": str(await latest_event_id(live))}
    ) as stream:
        await live.listening(channel)
        seen_id = await live.publish([channel], bellows(DEV_FLEET, 1.0))
        assert (await stream.next_event()).id == str(seen_id)
    await nobody_listens(live, channel)

    missed = [await live.publish([channel], bellows(DEV_FLEET, value)) for value in (2.0, 3.0)]
    async with open_stream(live, headers=headers | {"last-event-id": str(seen_id)}) as stream:
        replayed = [await stream.next_event(), await stream.next_event()]
        await live.listening(channel)
        live_ids = [await live.publish([channel], bellows(DEV_FLEET, value)) for value in (4.0, 5.0)]
        after = [await stream.next_event(), await stream.next_event()]

    assert [m.id for m in replayed] == [str(i) for i in missed]
    assert [m.json()["metrics"][0]["value"] for m in replayed] == [2.0, 3.0]
    # Live events follow at once: had a replayed event come twice, it would stand here instead.
    assert [m.id for m in after] == [str(i) for i in live_ids]
    assert [m.json()["metrics"][0]["value"] for m in after] == [4.0, 5.0]


async def test_event_source_without_headers_signs_in_and_resumes_with_query_parameters(live: Live) -> None:
    token = await live.api.token(*DEV)
    channel = channels.bellows(DEV_FLEET)
    before = await live.publish([channel], bellows(DEV_FLEET, 7.0))
    missed = await live.publish([channel], bellows(DEV_FLEET, 8.0))
    params = {"access_token": token, "lastEventId": str(before)}
    async with open_stream(live, params=params) as stream:
        message = await stream.next_event()
    assert message.id == str(missed) and message.json()["metrics"][0]["value"] == 8.0


async def test_silence_is_filled_with_heartbeats_and_a_closed_client_is_let_go(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sse, "HEARTBEAT_S", 0.1)
    channel = channels.bellows(DEV_FLEET)
    async with open_stream(live, headers=await live.bearer(DEV)) as stream:
        await live.listening(channel)
        beat = await stream.next(within=2)
        assert beat.comments == ["heartbeat"] and beat.event is None
    await nobody_listens(live, channel)


async def test_the_stream_ends_when_the_token_expires(live: Live) -> None:
    resources = live.api.resources
    token = await live.api.token(*DEV)
    claims = resources.tokens.verify(token)
    now = int(time.time())
    short = jwt.encode(
        {"sub": str(claims.smith_id), "sid": claims.session_id, "iat": now, "exp": now + 2},
        resources.settings.jwt_secret,
        algorithm=resources.settings.jwt_algorithm,
    )
    async with open_stream(live, headers={"authorization": f"Bearer {short}"}) as stream:
        ending = await stream.next_event(within=5)
        assert ending.event == "expired"
        with pytest.raises(AssertionError, match="stream ended"):
            await stream.next(within=2)


async def test_refusals_are_plain_http_errors_before_any_stream(live: Live) -> None:
    client = live.api.client
    smith = await live.api.create_smith("sparks@sepulki.com", "SMITH")
    smith_token = await live.api.token(*smith)
    dev = await live.bearer(DEV)

    async def status(path: str, headers: dict[str, str] | None = None, **params: str) -> tuple[int, str]:
        response = await client.get(path, headers=headers or {}, params=params, timeout=WAIT_S)
        return response.status_code, response.json()["error"]

    assert (await status(f"/events/fleet/{DEV_FLEET}"))[0] == 401
    assert (await status(f"/events/fleet/{DEV_FLEET}", {"authorization": "Bearer forged.jwt.here"}))[0] == 401
    assert (await status(f"/events/fleet/{DEV_FLEET}", access_token="forged"))[0] == 401
    code, error = await status(f"/events/fleet/{DEV_FLEET}", {"authorization": f"Bearer {smith_token}"})
    assert code == 403 and "VIEW_BELLOWS" in error
    assert (await status(f"/events/fleet/{MISSING_FLEET}", dev))[0] == 404
    assert (await status("/events/fleet/devbots", dev))[0] == 400
    assert (await status(f"/events/fleet/{DEV_FLEET}", dev | {"last-event-id": "yesterday"}))[0] == 400
    assert (await status(f"/events/fleet/{DEV_FLEET}", dev, lastEventId="-1"))[0] == 400
    assert live.api.resources.events.subscribers(channels.bellows(DEV_FLEET)) == 0


async def test_robot_posts_telemetry_over_http_and_the_dashboard_sees_it_over_sse(live: Live) -> None:
    resources = live.api.resources
    started: Pipeline | None = None
    if live.api.components.pipeline is None:
        started = Pipeline(resources.db, resources.events, resources.settings)
        await started.start()
        live.api.components.pipeline = started
    try:
        key = (await create_key(live.api))["key"]
        params = {"lastEventId": str(await latest_event_id(live))}
        async with open_stream(live, headers=await live.bearer(DEV), params=params) as stream:
            await live.listening(channels.bellows(DEV_FLEET))
            posted = await live.api.client.post(
                f"/telemetry/{ALPHA}", json=telemetry(2001, batteryLevel=64.0), headers={"x-api-key": key}
            )
            assert posted.status_code == 200, posted.text
            message = await stream.next_event()
    finally:
        if started is not None:
            live.api.components.pipeline = None
            await started.stop()

    event_id = await resources.db.fetchval(
        "SELECT max(id) FROM event_log WHERE $1 = ANY(channels)", channels.bellows(DEV_FLEET)
    )
    assert message.id == str(event_id)
    body = message.json()
    assert body["fleetId"] == DEV_FLEET
    assert {m["robotId"] for m in body["metrics"]} == {ALPHA}
    assert {m["name"]: m["value"] for m in body["metrics"]} == {"CPU_USAGE": 35.2, "MOTOR_TEMPERATURE": 48.1}


async def test_a_dashboard_that_falls_behind_is_told_where_to_resume_and_loses_nothing(
    settings: Settings,
) -> None:
    channel = channels.bellows(DEV_FLEET)
    async with serving(settings.replace(ws_queue_size=2)) as live:
        headers = await live.bearer(DEV)
        start = await latest_event_id(live)
        async with open_stream(live, headers=headers, params={"lastEventId": str(start)}) as stream:
            await live.listening(channel)
            # Ten events reach the bus at once: more than the subscriber's queue of two holds.
            async with live.api.resources.db.acquire() as conn, conn.transaction():
                burst = [await record(conn, [channel], bellows(DEV_FLEET, float(i))) for i in range(10)]
            await live.api.resources.events.publish_recorded(burst)
            received: list[Message] = []
            while (message := await stream.next_event()).event == "bellows":
                received.append(message)
            assert message.event == "overflow"
            resume = message.json()["lastEventId"]
            with pytest.raises(AssertionError, match="stream ended"):
                await stream.next(within=2)
        async with open_stream(live, headers=headers | {"last-event-id": resume}) as stream:
            rest = [await stream.next_event() for _ in range(len(burst) - len(received))]
    assert [m.id for m in received + rest] == [str(event.id) for event in burst]
    assert [m.json()["metrics"][0]["value"] for m in received + rest] == [float(i) for i in range(10)]
