"""A dashboard following a fleet's bellowsStream through a Mosquitto restart: it loses its
socket with the fault, reconnects with `after` = the last event id it saw, and ends with every
event of the fleet's channel that PostgreSQL's event_log holds, each once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from app.core.channels import channels
from app.settings import Settings
from tests.faults.harness import (
    CLEAR_HISTORY,
    MESSAGES,
    Outcome,
    PersistentMosquitto,
    Robots,
    running_ingest,
    stored,
    until_stored,
)
from tests.live import serving
from tests.seed_ids import DEV_FLEET
from tests.servers import RedisServer
from tests.support import eventually
from tests.wsclient import Subscription, connected

BELLOWS = """
subscription($fleetId: ID!, $after: String) {
  bellowsStream(fleetId: $fleetId, after: $after) { metrics { name value robotId } }
}
"""


@pytest.fixture(scope="module")
def broker() -> Iterator[PersistentMosquitto]:
    server = PersistentMosquitto()
    server.start()
    try:
        yield server
    finally:
        server.close()


async def _follow(subscription: Subscription, seen: list[int]) -> None:
    """Notes every event id the subscription delivers, until cancelled."""
    while True:
        message: Any = await subscription._queue.get()
        assert not isinstance(message, BaseException), message
        assert message["type"] == "next", message
        seen.append(int(message["payload"]["extensions"]["eventId"]))


async def test_a_subscriber_resuming_with_after_sees_no_gap_and_no_duplicate_across_a_broker_restart(
    settings: Settings,
    database_url: str,
    redis_server: RedisServer,
    broker: PersistentMosquitto,
    tmp_path: Path,
) -> None:
    conn = await asyncpg.connect(database_url)
    await conn.execute(CLEAR_HISTORY)
    robots = Robots(broker.url)
    seen: list[int] = []
    channel = channels.bellows(DEV_FLEET)
    try:
        async with (
            serving(settings.replace(broadcast_url=redis_server.url)) as live,
            running_ingest(
                database_url, broker.url, tmp_path, mqtt_subscription="exclusive", redis_url=redis_server.url
            ) as ingest,
        ):
            init = await live.bearer()
            async with (
                connected(live.ws_url, init) as socket,
                socket.subscribe(BELLOWS, {"fleetId": DEV_FLEET}) as s,
            ):
                await live.listening(channel)
                follower = asyncio.create_task(_follow(s, seen))
                await robots.connect()
                await robots.publish(MESSAGES // 2)
                await until_stored(conn, robots.sent, within=60)
                await asyncio.sleep(0.5)  # the last batches' events reach the socket
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
            # The dashboard is offline through the fault; robots reconnect at once.
            await robots.disconnect()
            restarted = time.monotonic()
            await asyncio.to_thread(broker.restart)
            await robots.connect()
            await robots.publish(MESSAGES // 4)
            await ingest.wait_ready(within=60)
            recovered = time.monotonic() - restarted
            await robots.publish(MESSAGES - robots.sent)
            await until_stored(conn, robots.sent, within=60)
            logged = [
                int(row["id"])
                for row in await conn.fetch(
                    "SELECT id FROM event_log WHERE channels @> ARRAY[$1]::text[] ORDER BY id", channel
                )
            ]
            assert seen, "the dashboard saw nothing before the fault"
            after = str(max(seen))
            async with (
                connected(live.ws_url, init) as socket,
                socket.subscribe(BELLOWS, {"fleetId": DEV_FLEET, "after": after}) as s,
            ):
                follower = asyncio.create_task(_follow(s, seen))

                async def caught_up() -> bool:
                    return len(seen) >= len(logged)

                await eventually(caught_up, within=30, what="the replay and live events")
                await asyncio.sleep(0.3)  # nothing more (a duplicate) arrives
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
            count, duplicated = await stored(conn)
        assert sorted(seen) == logged, "every logged event once: no gap, no duplicate"
        assert len(set(seen)) == len(seen)
        outcome = Outcome(
            f"mosquitto restart with a bellowsStream subscriber resuming with after ({len(logged)} events)",
            robots.sent,
            count,
            duplicated,
            recovered,
        )
        outcome.report()
        assert outcome.stored == outcome.sent == MESSAGES and outcome.duplicated == 0
    finally:
        await robots.disconnect()
        await conn.close()
