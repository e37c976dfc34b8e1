"""Live events hold up in production conditions: another process publishing through Redis, a
client coming back with `after`, Redis restarting mid-stream, a client too slow to keep up.

Redis is a real redis-server (the session's `redis_server`); the app runs under uvicorn with
its event bus on that Redis, as `sepulki serve` does with SEPULKI_REDIS_URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from broadcaster import Broadcast
from redis.asyncio import Redis

from app.core.channels import channels
from app.infra.bus import Event, Events, encode
from app.infra.db import Pool
from app.infra.eventlog import Recorded, record
from app.realtime.streams import event_stream
from app.settings import Settings
from tests.live import Live, serving
from tests.seed_ids import ALPHA, DEV_FLEET
from tests.servers import RedisServer
from tests.support import ROOT, Api
from tests.test_subscriptions import (
    BELLOWS,
    ROBOT_STATUS,
    UPDATE_ROBOT_STATUS,
)
from tests.wsclient import Subscription, SubscriptionComplete, connected

BELLOWS_AFTER = BELLOWS.replace("($fleetId: ID!)", "($fleetId: ID!, $after: String)").replace(
    "(fleetId: $fleetId)", "(fleetId: $fleetId, after: $after)"
)
ROBOT_STATUS_AFTER = ROBOT_STATUS.replace("($robotId: ID)", "($robotId: ID, $after: String)").replace(
    "(robotId: $robotId)", "(robotId: $robotId, after: $after)"
)

PUBLISHER = """
import asyncio, sys
from broadcaster import Broadcast
from app.infra.bus import Events

async def main(url, channel):
    async with Broadcast(url) as broadcast:
        await Events(broadcast).publish([channel], 41, {"robot_id": "from another process"})

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.fixture
def redis_settings(settings: Settings, redis_server: RedisServer) -> Settings:
    return settings.replace(broadcast_url=redis_server.url)


@pytest.fixture
async def live(redis_settings: Settings) -> AsyncIterator[Live]:
    async with serving(redis_settings) as running:
        yield running


async def commit(db: Pool, names: list[str], payload: dict[str, Any]) -> Recorded:
    async with db.acquire() as conn, conn.transaction():
        return await record(conn, names, payload)


async def result(subscription: Subscription, timeout: float = 5) -> dict[str, Any]:  # noqa: ASYNC109
    """The whole payload of the operation's next `next` message: data, errors and extensions."""
    message = await asyncio.wait_for(subscription._queue.get(), timeout)
    assert not isinstance(message, BaseException), message
    assert message["type"] == "next", message
    payload: dict[str, Any] = message["payload"]
    return payload


def bellows(n: int, metrics: int = 1) -> dict[str, Any]:
    metric = {
        "name": "BATTERY_SOC",
        "value": float(n),
        "timestamp": "2026-11-01T10:00:00+00:00",
        "robot_id": ALPHA,
    }
    return {"fleet_id": DEV_FLEET, "metrics": [metric] * metrics, "events": [], "real_time": True}


async def test_operator_sees_the_status_set_by_update_robot_status_through_redis(live: Live) -> None:
    init = await live.bearer()
    channel = channels.robot_status(ALPHA)
    async with (
        connected(live.ws_url, init) as socket,
        socket.subscribe(ROBOT_STATUS, {"robotId": ALPHA}) as s,
    ):
        await live.listening(channel)
        changed = await live.api.data(UPDATE_ROBOT_STATUS, {"robotId": ALPHA, "status": "MAINTENANCE"})
        assert changed["updateRobotStatus"]["status"] == "MAINTENANCE"
        update = await result(s)
    robot = update["data"]["robotStatus"]
    assert (robot["id"], robot["name"], robot["status"]) == (ALPHA, "DevBot-Alpha", "MAINTENANCE")
    stored = await live.row("robots", ALPHA)
    assert stored["status"] == "MAINTENANCE"
    logged = await live.api.resources.db.fetchrow(
        "SELECT id, channels, payload FROM event_log WHERE id = $1", int(update["extensions"]["eventId"])
    )
    assert logged["channels"] == [channel, channels.ROBOT_STATUS_ALL]
    assert logged["payload"]["status"] == "MAINTENANCE" and logged["payload"]["id"] == ALPHA


async def test_operators_with_the_same_selection_share_one_execution_of_each_event(live: Live) -> None:
    init = await live.bearer()
    channel = channels.robot_status(ALPHA)
    brief = "subscription($id: ID) { robotStatus(robotId: $id) { id status } }"
    variables = {"robotId": ALPHA}
    async with (
        connected(live.ws_url, init) as one,
        connected(live.ws_url, init) as two,
        connected(live.ws_url, init) as three,
        one.subscribe(ROBOT_STATUS, variables) as first,
        two.subscribe(ROBOT_STATUS, variables) as second,
        three.subscribe(brief, {"id": ALPHA}) as other,
    ):
        deadline = asyncio.get_running_loop().time() + 5
        while live.api.resources.events.subscribers(channel) < 3:
            assert asyncio.get_running_loop().time() < deadline, "the three sockets did not subscribe"
            await asyncio.sleep(0.01)
        await live.api.data(UPDATE_ROBOT_STATUS, {"robotId": ALPHA, "status": "CHARGING"})
        got = [await result(first), await result(second), await result(other)]
    event_id = int(got[0]["extensions"]["eventId"])
    assert got[0] == got[1]
    assert got[2] == {
        "data": {"robotStatus": {"id": ALPHA, "status": "CHARGING"}},
        "extensions": {"eventId": str(event_id)},
    }
    # One execution per distinct selection, whatever the number of sockets.
    assert len(live.api.app.state.subscriptions.results._events[event_id]) == 2


async def test_an_event_published_by_another_process_reaches_a_subscriber_through_redis(
    redis_server: RedisServer,
) -> None:
    # The guard against redis-py 8, with which broadcaster's Redis backend delivers nothing.
    channel = channels.bellows(DEV_FLEET)
    async with Broadcast(redis_server.url) as broadcast:
        events = Events(broadcast)
        try:
            async with events.listen(channel) as subscriber:
                publisher = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", PUBLISHER, redis_server.url, channel, cwd=ROOT
                )
                assert await asyncio.wait_for(publisher.wait(), 30) == 0
                received = await asyncio.wait_for(subscriber.get(), 5)
        finally:
            await events.aclose()
    assert received == Event(41, {"robot_id": "from another process"})


async def test_a_stream_resuming_after_an_event_replays_the_missed_ones_then_continues_live_once_each(
    redis_settings: Settings,
) -> None:
    async with Api.running(redis_settings) as api:
        events, db = api.resources.events, api.resources.db
        names = [channels.bellows(DEV_FLEET)]
        seen = await commit(db, names, bellows(0))  # the client saw this one before it left
        missed = [await commit(db, names, bellows(n)) for n in (1, 2)]  # committed, not yet published
        stream = event_stream(events, db, names[0], after=seen.id)
        async with contextlib.aclosing(stream), asyncio.timeout(5):
            got = [await anext(stream), await anext(stream)]  # from PostgreSQL
            # The writers' publications of the replayed events arrive live too: not delivered twice.
            await events.publish_recorded(missed)
            latest = await commit(db, names, bellows(3))
            await events.publish_recorded([latest])
            got.append(await anext(stream))
    assert [(e.id, e.data["metrics"][0]["value"]) for e in got] == [
        (missed[0].id, 1.0),
        (missed[1].id, 2.0),
        (latest.id, 3.0),
    ]


async def test_operator_reconnecting_with_after_gets_what_happened_meanwhile_then_live_events(
    live: Live,
) -> None:
    init = await live.bearer()
    names = [channels.bellows(DEV_FLEET)]
    async with connected(live.ws_url, init) as socket, socket.subscribe(BELLOWS, {"fleetId": DEV_FLEET}) as s:
        await live.listening(names[0])
        first_id = await live.publish(names, bellows(1))
        first = await result(s)
    assert first["data"]["bellowsStream"]["metrics"][0]["value"] == 1.0
    assert first["extensions"] == {"eventId": str(first_id)}

    # Offline: two batches are committed and published with nobody listening.
    offline = [await live.publish(names, bellows(n)) for n in (2, 3)]

    async with (
        connected(live.ws_url, init) as socket,
        socket.subscribe(BELLOWS_AFTER, {"fleetId": DEV_FLEET, "after": first["extensions"]["eventId"]}) as s,
    ):
        replayed = [await result(s), await result(s)]
        await live.listening(names[0])
        online = await live.publish(names, bellows(4))
        current = await result(s)
        with pytest.raises(TimeoutError):
            await result(s, timeout=0.3)
    got = [(p["extensions"]["eventId"], p["data"]["bellowsStream"]["metrics"][0]["value"]) for p in replayed]
    assert got == [(str(offline[0]), 2.0), (str(offline[1]), 3.0)]
    assert current["extensions"] == {"eventId": str(online)}
    assert current["data"]["bellowsStream"]["metrics"][0]["value"] == 4.0


async def test_malformed_after_cursor_is_bad_user_input(live: Live) -> None:
    init = await live.bearer()
    variables = {"robotId": ALPHA, "after": "yesterday"}
    async with connected(live.ws_url, init) as socket, socket.subscribe(ROBOT_STATUS_AFTER, variables) as s:
        errors = await s.errors()
    assert [e["extensions"]["code"] for e in errors] == ["BAD_USER_INPUT"]
    assert errors[0]["extensions"]["field"] == "after"


async def test_operator_watching_a_robot_sees_every_status_across_a_redis_restart(
    live: Live, redis_server: RedisServer
) -> None:
    init = await live.bearer()
    channel = channels.robot_status(ALPHA)

    async def set_status(status: str) -> None:
        changed = await live.api.data(UPDATE_ROBOT_STATUS, {"robotId": ALPHA, "status": status})
        assert changed["updateRobotStatus"]["status"] == status

    async with (
        connected(live.ws_url, init) as socket,
        socket.subscribe(ROBOT_STATUS, {"robotId": ALPHA}) as s,
    ):
        await live.listening(channel)
        await set_status("CHARGING")
        seen = [await result(s)]
        redis_server.stop()
        try:
            # Committed while Redis is down: stored in event_log, its publication held back.
            await set_status("ERROR")
        finally:
            redis_server.start()
        await set_status("IDLE")
        seen += [await result(s, timeout=15), await result(s, timeout=15)]
        with pytest.raises(TimeoutError):
            await result(s, timeout=0.5)
    assert [p["data"]["robotStatus"]["status"] for p in seen] == ["CHARGING", "ERROR", "IDLE"]
    logged = await live.api.resources.db.fetch(
        "SELECT id, payload->>'status' AS status FROM event_log WHERE $1 = ANY(channels) ORDER BY id", channel
    )
    assert [(str(r["id"]), r["status"]) for r in logged] == [
        (p["extensions"]["eventId"], p["data"]["robotStatus"]["status"]) for p in seen
    ]
    stats = live.api.resources.events.stats
    assert stats["transport_lost"] >= 1 and stats["recovered"] >= 1


async def test_a_stream_subscribed_during_a_redis_outage_catches_up_once_redis_is_back(
    redis_settings: Settings, redis_server: RedisServer
) -> None:
    async with Api.running(redis_settings) as api:
        events, db = api.resources.events, api.resources.db
        names = [channels.bellows(DEV_FLEET)]
        seen = await commit(db, names, bellows(0))
        missed = await commit(db, names, bellows(1))
        redis_server.stop()
        try:
            stream = event_stream(events, db, names[0], after=seen.id)
            async with contextlib.aclosing(stream), asyncio.timeout(20):
                # Subscribing waits for Redis a moment, then replays from PostgreSQL all the same.
                got = [await anext(stream)]
                during = await commit(db, names, bellows(2))
                await events.publish_recorded([during])  # held back: Redis is down
                redis_server.start()
                got.append(await anext(stream))
                latest = await commit(db, names, bellows(3))
                await events.publish_recorded([latest])
                got.append(await anext(stream))
        finally:
            if redis_server.process is None:
                redis_server.start()
    assert [e.id for e in got] == [missed.id, during.id, latest.id]


async def test_a_subscriber_falling_behind_is_stopped_with_its_cursor_and_resumes_without_loss(
    redis_settings: Settings, redis_server: RedisServer
) -> None:
    async with serving(redis_settings.replace(ws_queue_size=5)) as live:
        init = await live.bearer()
        db = live.api.resources.db
        names = [channels.bellows(DEV_FLEET)]
        async with connected(live.ws_url, init) as socket:
            async with socket.subscribe(BELLOWS, {"fleetId": DEV_FLEET}) as s:
                await live.listening(names[0])
                first_id = await live.publish(names, bellows(0))
                assert (await result(s))["extensions"] == {"eventId": str(first_id)}
                # A burst of 50 batches in one Redis round trip: far more than the 5 the socket
                # may have waiting, before the operation can send the first of them.
                burst = [await commit(db, names, bellows(n)) for n in range(1, 51)]
                redis = Redis.from_url(redis_server.url)
                async with redis.pipeline(transaction=False) as pipe:
                    for event in burst:
                        pipe.publish(names[0], encode(event.id, event.payload))
                    await pipe.execute()
                await redis.aclose()
                stopped = await result(s)
                with pytest.raises(SubscriptionComplete):
                    await s.next()
            # The same socket, resuming from the cursor in the error: every batch, none twice.
            after = stopped["errors"][0]["extensions"]["after"]
            async with socket.subscribe(BELLOWS_AFTER, {"fleetId": DEV_FLEET, "after": after}) as resumed:
                replayed = [await result(resumed) for _ in burst]
                with pytest.raises(TimeoutError):
                    await result(resumed, timeout=0.3)
        overflowed = live.api.resources.events.stats["overflowed"]
    [error] = stopped["errors"]
    assert error["extensions"] == {"code": "RATE_LIMITED", "after": str(first_id)}
    assert error["message"] == (
        f'Subscriber fell more than 5 events behind and was stopped; subscribe again with after: "{first_id}"'
    )
    assert "data" not in stopped
    assert [p["extensions"]["eventId"] for p in replayed] == [str(e.id) for e in burst]
    assert overflowed == 1
