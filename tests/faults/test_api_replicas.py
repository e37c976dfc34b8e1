"""Two API replicas (`sepulki serve`), two `sepulki worker`s and one `sepulki ingest`, sharing
PostgreSQL, Redis and Mosquitto as deployed: a dashboard on either API sees every event the
ingest stored; a command issued through one API reaches the robot over MQTT once although four
dispatchers run; the sweeper's ack timeout fires once although four sweepers run. Then one API
replica is killed under a steady stream: its dashboard resumes on the other replica with
`after`, with no gap and no duplicate."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from app.core.channels import channels
from app.workers.commands import DISPATCH_POLL_S
from tests.faults.harness import (
    CLEAR_HISTORY,
    MESSAGES,
    Outcome,
    Robots,
    follow,
    running_ingest,
    running_roles,
    sign_in,
    stored,
    until_stored,
)
from tests.seed_ids import ALPHA, DEV_FLEET
from tests.servers import MosquittoServer, RedisServer
from tests.support import ADMIN, DEV, eventually
from tests.test_commands import robot_on
from tests.wsclient import connected

BELLOWS = """
subscription($fleetId: ID!, $after: String) {
  bellowsStream(fleetId: $fleetId, after: $after) { metrics { name value robotId } }
}
"""
SEND = """
mutation($robotId: ID!) { sendRobotCommand(robotId: $robotId, type: "BEEP") { id state } }
"""
UPDATES = """
subscription($robotId: ID, $after: String) { commandUpdates(robotId: $robotId, after: $after) { id state } }
"""


async def logged_ids(conn: asyncpg.Connection, channel: str, after: int) -> list[int]:
    rows = await conn.fetch(
        "SELECT id FROM event_log WHERE channels @> ARRAY[$1]::text[] AND id > $2 ORDER BY id", channel, after
    )
    return [int(row["id"]) for row in rows]


async def last_event_id(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT coalesce(max(id), 0) FROM event_log"))


async def stop_following(*tasks: asyncio.Task[None]) -> None:
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def shared_variables(redis: RedisServer, mqtt_url: str) -> dict[str, str]:
    # The ingest runs on its own; a short ack timeout lets the sweeper's job fire within the test.
    return {
        "redis_url": redis.url,
        "mqtt_url": mqtt_url,
        "ingest_in_api": "false",
        "command_ack_timeout_s": "1",
    }


async def test_two_apis_and_two_workers_deliver_every_event_to_both_and_each_command_and_job_once(
    database_url: str, redis_server: RedisServer, mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    total = 400
    conn = await asyncpg.connect(database_url)
    await conn.execute(CLEAR_HISTORY)
    robots = Robots(mosquitto.url)
    channel = channels.bellows(DEV_FLEET)
    followers: list[asyncio.Task[None]] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            first, second, *_workers = await stack.enter_async_context(
                running_roles(
                    database_url,
                    tmp_path,
                    ["serve", "serve", "worker", "worker"],
                    **shared_variables(redis_server, mosquitto.url),
                )
            )
            await stack.enter_async_context(
                running_ingest(database_url, mosquitto.url, tmp_path, redis_url=redis_server.url)
            )
            dev = await sign_in(first.url, *DEV)

            # A dashboard on each API, both from the same cursor.
            start = await last_event_id(conn)
            seen: dict[int, list[int]] = {first.port: [], second.port: []}
            for api in (first, second):
                socket = await stack.enter_async_context(connected(api.ws_url, dev))
                subscription = await stack.enter_async_context(
                    socket.subscribe(BELLOWS, {"fleetId": DEV_FLEET, "after": str(start)})
                )
                followers.append(asyncio.create_task(follow(subscription, seen[api.port])))
            await robots.connect()
            await robots.publish(total)
            await until_stored(conn, total, within=60)
            assert await stored(conn) == (total, 0)
            logged = await logged_ids(conn, channel, start)
            assert logged, "the ingest logged no bellows event"

            async def both_caught_up() -> bool:
                return all(len(ids) >= len(logged) for ids in seen.values())

            await eventually(both_caught_up, within=30, what="both dashboards' events")
            await asyncio.sleep(0.3)  # a second copy would arrive now
            await stop_following(*followers)
            followers.clear()
            # Ingested once, delivered to the subscribers of both replicas, each event once.
            assert seen[first.port] == logged, "the first API's dashboard"
            assert seen[second.port] == logged, "the second API's dashboard"

            # A command through the first API, its updates followed on the second.
            admin = await sign_in(first.url, *ADMIN)
            start = await last_event_id(conn)
            updates: list[int] = []
            states: list[Any] = []
            socket = await stack.enter_async_context(connected(second.ws_url, admin))
            subscription = await stack.enter_async_context(
                socket.subscribe(UPDATES, {"robotId": ALPHA, "after": str(start)})
            )
            followers.append(asyncio.create_task(follow(subscription, updates, states)))
            async with robot_on(mosquitto.url, ALPHA) as robot, httpx.AsyncClient(timeout=15) as http:
                response = await http.post(
                    f"{first.url}/graphql",
                    json={"query": SEND, "variables": {"robotId": ALPHA}},
                    headers=admin,
                )
                command_id = response.json()["data"]["sendRobotCommand"]["id"]
                topic, body = await robot.next(timeout=15)
                assert (topic, body["commandId"]) == (f"robots/{ALPHA}/commands", command_id)

                async def timed_out() -> bool:
                    state = await conn.fetchval("SELECT state FROM robot_commands WHERE id = $1", command_id)
                    return bool(state == "TIMED_OUT")

                # The robot never acknowledges: the sweeper's ack timeout (1 s) fires.
                await eventually(timed_out, within=20, what="the command timed out by the sweeper")
                # Every dispatcher polls within DISPATCH_POLL_S: a second delivery would be here now.
                await asyncio.sleep(DISPATCH_POLL_S + 0.5)
                again = [robot.received.get_nowait() for _ in range(robot.received.qsize())]
                assert [b for _, b in again if b.get("commandId") == command_id] == [], "delivered twice"
            transitions = [
                row["state"]
                for row in await conn.fetch(
                    "SELECT payload->>'state' AS state FROM event_log WHERE payload->>'id' = $1 ORDER BY id",
                    command_id,
                )
            ]
            # Four dispatchers and four sweepers, yet each transition happened once.
            assert Counter(transitions) == Counter(set(transitions)), transitions
            assert {"SENT", "TIMED_OUT"} <= set(transitions), transitions

            async def updates_arrived() -> bool:
                return {"SENT", "TIMED_OUT"} <= {s["commandUpdates"]["state"] for s in states}

            await eventually(updates_arrived, within=10, what="the command's updates on the second API")
            await asyncio.sleep(0.3)
            assert len(updates) == len(set(updates)), updates
            assert Counter(s["commandUpdates"]["state"] for s in states) == Counter(set(transitions))
    finally:
        await stop_following(*followers)
        await robots.disconnect()
        await conn.close()


async def test_a_killed_api_replica_s_dashboard_resumes_on_the_other_with_no_gap_and_no_duplicate(
    database_url: str, redis_server: RedisServer, mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(database_url)
    await conn.execute(CLEAR_HISTORY)
    robots = Robots(mosquitto.url)
    channel = channels.bellows(DEV_FLEET)
    seen: list[int] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            doomed, survivor = await stack.enter_async_context(
                running_roles(
                    database_url,
                    tmp_path,
                    ["serve", "serve"],
                    **shared_variables(redis_server, mosquitto.url),
                )
            )
            await stack.enter_async_context(
                running_ingest(database_url, mosquitto.url, tmp_path, redis_url=redis_server.url)
            )
            dev = await sign_in(doomed.url, *DEV)
            start = await last_event_id(conn)
            await robots.connect()
            async with (
                connected(doomed.ws_url, dev) as socket,
                socket.subscribe(BELLOWS, {"fleetId": DEV_FLEET, "after": str(start)}) as subscription,
            ):
                follower = asyncio.create_task(follow(subscription, seen))
                await robots.publish(MESSAGES // 2)
                await until_stored(conn, robots.sent, within=60)

                async def some_seen() -> bool:
                    return bool(seen)

                await eventually(some_seen, within=15, what="events before the kill")
                # Robots keep sending while the replica dies under its dashboard.
                stream = asyncio.create_task(robots.publish(MESSAGES // 4))
                doomed.kill()
                killed = time.monotonic()
                await asyncio.wait_for(follower, 15)  # the socket's end reached the dashboard
                await stream
            await until_stored(conn, robots.sent, within=60)
            missed = await logged_ids(conn, channel, max(seen))
            # The dashboard reconnects to the other replica from the last event it saw.
            async with (
                connected(survivor.ws_url, dev) as socket,
                socket.subscribe(BELLOWS, {"fleetId": DEV_FLEET, "after": str(max(seen))}) as subscription,
            ):
                follower = asyncio.create_task(follow(subscription, seen))
                resumed_from = len(seen)

                async def current_again() -> bool:
                    return len(seen) >= resumed_from + len(missed)

                await eventually(current_again, within=30, what="the events missed while reconnecting")
                # Recovered: from the kill to the dashboard current again on the other replica.
                recovered = time.monotonic() - killed
                await robots.publish(MESSAGES - robots.sent)
                await until_stored(conn, robots.sent, within=60)
                logged = await logged_ids(conn, channel, start)

                async def caught_up() -> bool:
                    return len(seen) >= len(logged)

                await eventually(caught_up, within=30, what="the replay and live events")
                await asyncio.sleep(0.3)  # nothing more (a duplicate) arrives
                await stop_following(follower)
            count, duplicated = await stored(conn)
        assert seen == logged, "every logged event once, in order: no gap, no duplicate"
        outcome = Outcome(
            f"API replica SIGKILL, bellowsStream subscriber resumed on the other ({len(logged)} events)",
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
