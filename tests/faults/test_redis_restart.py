"""Redis (the event bus between the ingest and the API) restarted under a steady robot stream
with two dashboards on the API's bellowsStream: the ingest keeps storing (events go to event_log
in the batch's transaction, the bus is told after the commit), the API is ready again without a
restart, the dashboard that stayed connected gets every logged event once, and the one that went
offline with the fault and subscribed again with `after` has no gap and no duplicate."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import asyncpg
import httpx

from app.core.channels import channels
from tests.faults.harness import (
    CLEAR_HISTORY,
    MESSAGES,
    Outcome,
    Robots,
    dashboard,
    running_ingest,
    running_roles,
    sign_in,
    stored,
    until_stored,
)
from tests.seed_ids import DEV_FLEET
from tests.servers import MosquittoServer, RedisServer
from tests.support import DEV, eventually


async def test_a_redis_restart_loses_no_message_and_a_resuming_dashboard_sees_no_gap_and_no_duplicate(
    database_url: str, redis_server: RedisServer, mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(database_url)
    await conn.execute(CLEAR_HISTORY)
    robots = Robots(mosquitto.url)
    channel = channels.bellows(DEV_FLEET)
    seen: list[int] = []  # a dashboard connected throughout
    subscribed: list[float] = []
    resumed: list[int] = []  # a dashboard that goes offline with the fault, back after it
    resumed_subscribed: list[float] = []
    followers: list[asyncio.Task[None]] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            (api,) = await stack.enter_async_context(
                running_roles(
                    database_url,
                    tmp_path,
                    ["serve"],
                    redis_url=redis_server.url,
                    mqtt_url=mosquitto.url,
                    ingest_in_api="false",
                )
            )
            await stack.enter_async_context(
                running_ingest(database_url, mosquitto.url, tmp_path, redis_url=redis_server.url)
            )
            dev = await sign_in(api.url, *DEV)
            start = int(await conn.fetchval("SELECT coalesce(max(id), 0) FROM event_log"))
            followers.append(
                asyncio.create_task(dashboard(api.ws_url, dev, DEV_FLEET, start, seen, subscribed))
            )
            offline = asyncio.create_task(
                dashboard(api.ws_url, dev, DEV_FLEET, start, resumed, resumed_subscribed)
            )
            followers.append(offline)
            await robots.connect()
            await robots.publish(MESSAGES // 2)
            await until_stored(conn, robots.sent, within=60)

            async def some_seen() -> bool:
                return bool(seen) and bool(resumed)

            await eventually(some_seen, within=15, what="events before the restart")
            offline.cancel()  # its socket closes with the fault
            stream = asyncio.create_task(robots.publish(MESSAGES // 4))
            await asyncio.to_thread(redis_server.stop)
            stopped = time.monotonic()
            await asyncio.sleep(0.5)  # down while the stream goes on
            await asyncio.to_thread(redis_server.start)
            await stream

            async def ready() -> bool:
                async with httpx.AsyncClient(timeout=2) as http:
                    response = await http.get(f"{api.url}/health/ready")
                return response.status_code == 200

            await eventually(ready, within=30, what="the API ready again without a restart")
            recovered = time.monotonic() - stopped
            # Back: it subscribes again with `after` = the last event it saw.
            followers.append(
                asyncio.create_task(dashboard(api.ws_url, dev, DEV_FLEET, start, resumed, resumed_subscribed))
            )
            await robots.publish(MESSAGES - robots.sent)
            await until_stored(conn, robots.sent, within=60)
            logged = [
                int(row["id"])
                for row in await conn.fetch(
                    "SELECT id FROM event_log WHERE channels @> ARRAY[$1]::text[] AND id > $2 ORDER BY id",
                    channel,
                    start,
                )
            ]

            async def caught_up() -> bool:
                return len(seen) >= len(logged) and len(resumed) >= len(logged)

            await eventually(caught_up, within=30, what=f"all {len(logged)} logged events (saw {seen})")
            await asyncio.sleep(0.3)  # nothing more (a duplicate) arrives
            count, duplicated = await stored(conn)
        assert seen == logged, "the connected dashboard: every logged event once, in order"
        assert resumed == logged, "the resumed dashboard: no gap, no duplicate"
        assert len(resumed_subscribed) == 2, "it subscribed twice: before the fault and with `after`"
        outcome = Outcome(
            f"Redis restart, bellowsStream subscriber resuming with after ({len(logged)} events, "
            f"the connected dashboard subscribed {len(subscribed)} time(s))",
            robots.sent,
            count,
            duplicated,
            recovered,
        )
        outcome.report()
        assert outcome.stored == outcome.sent == MESSAGES and outcome.duplicated == 0
    finally:
        for follower in followers:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
        await robots.disconnect()
        await conn.close()
