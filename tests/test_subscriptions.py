"""Operators watch robots, tasks, breaches and telemetry live over graphql-transport-ws.

The app runs under uvicorn on a loopback port, so sockets, the lifespan and the event bus are
the real ones; events are published the way mutations and ingest publish them (after commit).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from websockets.exceptions import ConnectionClosed

from app.core.channels import channels
from app.settings import Settings
from tests.live import Live, serving
from tests.seed_ids import (
    AISLE_TASK,
    ALPHA,
    BETA,
    DEV_FLEET,
    GEARBOX_TASK,
    PICK_TASK,
    SPEED_EDICT,
    WAREHOUSE_FLEET,
)
from tests.support import DEV
from tests.wsclient import SubscriptionError, connected, subscribe

ROBOT_STATUS = """
subscription RobotStatus($robotId: ID) {
  robotStatus(robotId: $robotId) { id name fleetId status batteryLevel healthScore lastSeen }
}
"""
TASK_UPDATES = "subscription($fleetId: ID) { taskUpdates(fleetId: $fleetId) { id name status priority } }"
BREACHES = """
subscription($severity: EdictSeverity) {
  policyBreaches(severity: $severity) { id edictId robotId fleetId severity message data timestamp }
}
"""
# The selection of the forge-ui frontend.
BELLOWS = """
subscription($fleetId: ID!) {
  bellowsStream(fleetId: $fleetId) {
    fleetId realTime
    metrics { name value timestamp robotId batteryLevel healthScore pose }
    events { timestamp type robotId message }
  }
}
"""
UPDATE_ROBOT_STATUS = """
mutation($robotId: ID!, $status: RobotStatus!) {
  updateRobotStatus(robotId: $robotId, status: $status) { id status }
}
"""


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[Live]:
    """The app with the memory:// event bus of the default settings."""
    async with serving(settings) as running:
        yield running


def breach(severity: str, message: str) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "edict_id": SPEED_EDICT,
        "robot_id": ALPHA,
        "fleet_id": DEV_FLEET,
        "severity": severity,
        "message": message,
        "data": {"metric": "VELOCITY", "value": 2.7},
        "timestamp": "2026-11-01T10:00:00+00:00",
    }


async def test_operator_sees_devbot_alpha_change_status(live: Live) -> None:
    init = await live.bearer()
    async with subscribe(live.ws_url, ROBOT_STATUS, {"robotId": ALPHA}, init=init) as updates:
        await live.listening(channels.robot_status(ALPHA))
        row = await live.row("robots", ALPHA) | {"status": "ERROR", "battery_level": 12.5}
        await live.publish([channels.robot_status(ALPHA), channels.ROBOT_STATUS_ALL], row)
        robot = (await updates.next())["robotStatus"]
    assert robot["id"] == ALPHA
    assert robot["name"] == "DevBot-Alpha"
    assert robot["fleetId"] == DEV_FLEET
    assert robot["status"] == "ERROR"
    assert robot["batteryLevel"] == 12.5
    assert robot["lastSeen"] is not None


async def test_operator_sees_the_status_set_by_update_robot_status(live: Live) -> None:
    init = await live.bearer()
    query = ROBOT_STATUS.replace("lastSeen }", "lastSeen currentIngot { id } }")
    async with subscribe(live.ws_url, query, {"robotId": ALPHA}, init=init) as updates:
        await live.listening(channels.robot_status(ALPHA))
        changed = await live.api.data(UPDATE_ROBOT_STATUS, {"robotId": ALPHA, "status": "MAINTENANCE"})
        assert changed["updateRobotStatus"]["status"] == "MAINTENANCE"
        robot = (await updates.next())["robotStatus"]
    assert robot["id"] == ALPHA
    assert robot["status"] == "MAINTENANCE"
    stored = await live.row("robots", ALPHA)
    assert stored["status"] == "MAINTENANCE"
    assert robot["currentIngot"]["id"] == stored["current_ingot_id"]


async def test_sdk_auth_token_watches_every_robot(live: Live) -> None:
    init = {"authToken": await live.api.token(*DEV)}
    async with subscribe(live.ws_url, ROBOT_STATUS, init=init) as updates:
        await live.listening(channels.ROBOT_STATUS_ALL)
        for robot_id, status in ((ALPHA, "CHARGING"), (BETA, "OFFLINE")):
            row = await live.row("robots", robot_id) | {"status": status}
            await live.publish([channels.robot_status(robot_id), channels.ROBOT_STATUS_ALL], row)
        first = (await updates.next())["robotStatus"]
        second = (await updates.next())["robotStatus"]
    assert (first["id"], first["status"]) == (ALPHA, "CHARGING")
    assert (second["id"], second["status"]) == (BETA, "OFFLINE")


@pytest.mark.parametrize("key", ["authorization", "Authorization"])
async def test_forged_token_is_refused_with_4403(live: Live, key: str) -> None:
    now = int(time.time())
    forged = jwt.encode(
        {"sub": "00000000-0000-4000-8000-000000000001", "sid": "x", "iat": now, "exp": now + 600},
        "another-secret-of-at-least-32-chars!!",
        algorithm="HS256",
    )
    with pytest.raises(ConnectionClosed) as closed:
        async with connected(live.ws_url, {key: f"Bearer {forged}"}):
            pass
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4403, "Forbidden")


async def test_expired_token_is_refused_with_4403(live: Live) -> None:
    now = int(time.time())
    claims = {"sub": "00000000-0000-4000-8000-000000000002", "sid": "x", "iat": now - 100, "exp": now - 10}
    expired = jwt.encode(claims, live.api.resources.settings.jwt_secret, algorithm="HS256")
    with pytest.raises(ConnectionClosed) as closed:
        async with connected(live.ws_url, {"authToken": expired}):
            pass
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403


async def test_token_of_a_revoked_session_is_refused_with_4403(live: Live) -> None:
    token = await live.api.token(*DEV)
    await live.api.resources.db.execute(
        "UPDATE sessions SET revoked_at = now() WHERE smith_id = '00000000-0000-4000-8000-000000000002'"
    )
    with pytest.raises(ConnectionClosed) as closed:
        async with connected(live.ws_url, {"authorization": f"Bearer {token}"}):
            pass
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403


async def test_socket_is_closed_with_4403_when_its_token_expires(live: Live) -> None:
    session_token = await live.api.token(*DEV)
    settings = live.api.resources.settings
    claims = jwt.decode(session_token, settings.jwt_secret, algorithms=[settings.jwt_algorithm])
    # The same session, but a token that expires three seconds from now (slack for a loaded machine).
    short = jwt.encode(
        claims | {"iat": int(time.time()), "exp": int(time.time()) + 3},
        settings.jwt_secret,
        algorithm=settings.jwt_algorithm,
    )
    async with subscribe(live.ws_url, ROBOT_STATUS, {"robotId": ALPHA}, init={"authToken": short}) as updates:
        await live.listening(channels.robot_status(ALPHA))
        with pytest.raises(ConnectionClosed) as closed:
            await updates.next(timeout=10)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4403, "Token expired")
    assert live.api.resources.events.subscribers(channels.robot_status(ALPHA)) == 0


async def test_anonymous_socket_is_accepted_but_robot_status_is_unauthenticated(live: Live) -> None:
    async with connected(live.ws_url) as connection:
        async with connection.subscribe(ROBOT_STATUS, {"robotId": ALPHA}) as updates:
            errors = await updates.errors()
        # Public fields still work on the same socket.
        async with connection.subscribe("query { __typename }") as hello:
            assert await hello.next() == {"__typename": "Query"}
    assert [e["extensions"]["code"] for e in errors] == ["UNAUTHENTICATED"]
    assert live.api.resources.events.subscribers(channels.robot_status(ALPHA)) == 0


async def test_smith_without_manage_fleet_cannot_watch_policy_breaches(live: Live) -> None:
    smith = await live.api.create_smith("floor@sepulki.com", "SMITH")
    init = await live.bearer(smith)
    async with subscribe(live.ws_url, BREACHES, init=init) as breaches:
        errors = await breaches.errors()
    assert [e["extensions"]["code"] for e in errors] == ["FORBIDDEN"]
    assert "MANAGE_FLEET" in errors[0]["message"]


async def test_malformed_robot_id_is_bad_user_input(live: Live) -> None:
    init = await live.bearer()
    async with subscribe(live.ws_url, ROBOT_STATUS, {"robotId": "DevBot-Alpha"}, init=init) as updates:
        with pytest.raises(SubscriptionError) as refused:
            await updates.next()
    assert refused.value.codes == ["BAD_USER_INPUT"]
    assert refused.value.errors[0]["extensions"]["field"] == "robotId"


async def test_task_updates_of_a_fleet_leave_out_other_fleets(live: Live) -> None:
    init = await live.bearer()
    async with subscribe(live.ws_url, TASK_UPDATES, {"fleetId": DEV_FLEET}, init=init) as updates:
        await live.listening(channels.tasks(DEV_FLEET))
        other = await live.row("tasks", AISLE_TASK)
        await live.publish([channels.tasks(WAREHOUSE_FLEET), channels.TASKS_ALL], other)
        mine = await live.row("tasks", GEARBOX_TASK) | {"status": "ASSIGNED"}
        await live.publish([channels.tasks(DEV_FLEET), channels.TASKS_ALL], mine)
        task = (await updates.next())["taskUpdates"]
    assert task == {"id": GEARBOX_TASK, "name": "Assemble gearbox", "status": "ASSIGNED", "priority": "HIGH"}


async def test_task_updates_without_fleet_see_every_fleet(live: Live) -> None:
    init = await live.bearer()
    async with subscribe(live.ws_url, TASK_UPDATES, init=init) as updates:
        await live.listening(channels.TASKS_ALL)
        for task_id in (AISLE_TASK, GEARBOX_TASK):
            row = await live.row("tasks", task_id)
            await live.publish([channels.tasks(row["fleet_id"]), channels.TASKS_ALL], row)
        seen = [(await updates.next())["taskUpdates"]["id"] for _ in range(2)]
    assert seen == [AISLE_TASK, GEARBOX_TASK]


async def test_critical_breach_watchers_do_not_get_warnings(live: Live) -> None:
    init = await live.bearer()
    async with subscribe(live.ws_url, BREACHES, {"severity": "CRITICAL"}, init=init) as breaches:
        await live.listening(channels.BREACHES)
        await live.publish([channels.BREACHES], breach("WARNING", "Battery below 20%"))
        critical = breach("CRITICAL", "Speed 2.7 m/s over the 2 m/s limit")
        await live.publish([channels.BREACHES], critical)
        got = (await breaches.next())["policyBreaches"]
    assert got == {
        "id": critical["id"],
        "edictId": SPEED_EDICT,
        "robotId": ALPHA,
        "fleetId": DEV_FLEET,
        "severity": "CRITICAL",
        "message": "Speed 2.7 m/s over the 2 m/s limit",
        "data": {"metric": "VELOCITY", "value": 2.7},
        "timestamp": "2026-11-01T10:00:00+00:00",
    }


async def test_bellows_stream_delivers_fleet_telemetry_as_the_frontend_selects_it(live: Live) -> None:
    init = await live.bearer()
    pose = {"position": {"x": 12.5, "y": 8.0, "z": 0}, "orientation": {"x": 0, "y": 0, "z": 0.38, "w": 0.92}}
    payload = {
        "fleet_id": DEV_FLEET,
        "metrics": [
            {
                "name": "BATTERY_SOC",
                "value": 81.5,
                "unit": "%",
                "timestamp": "2026-11-01T10:00:00+00:00",
                "robot_id": ALPHA,
                "battery_level": 81.5,
                "health_score": 96.0,
                "pose": pose,
            }
        ],
        "events": [
            {
                "id": str(uuid.uuid4()),
                "robot_id": ALPHA,
                "type": "OBSTACLE",
                "data": {"distance": 0.4},
                "timestamp": "2026-11-01T10:00:01+00:00",
                "message": "Obstacle at 0.4 m",
                "severity": "WARNING",
            }
        ],
        "real_time": True,
    }
    async with subscribe(live.ws_url, BELLOWS, {"fleetId": DEV_FLEET}, init=init) as stream:
        await live.listening(channels.bellows(DEV_FLEET))
        await live.publish([channels.bellows(WAREHOUSE_FLEET)], payload | {"fleet_id": WAREHOUSE_FLEET})
        await live.publish([channels.bellows(DEV_FLEET)], payload)
        bellows = (await stream.next())["bellowsStream"]
    assert bellows["fleetId"] == DEV_FLEET
    assert bellows["realTime"] is True
    assert bellows["metrics"] == [
        {
            "name": "BATTERY_SOC",
            "value": 81.5,
            "timestamp": "2026-11-01T10:00:00+00:00",
            "robotId": ALPHA,
            "batteryLevel": 81.5,
            "healthScore": 96.0,
            "pose": pose,
        }
    ]
    assert bellows["events"] == [
        {
            "timestamp": "2026-11-01T10:00:01+00:00",
            "type": "OBSTACLE",
            "robotId": ALPHA,
            "message": "Obstacle at 0.4 m",
        }
    ]


async def test_leaving_a_subscription_unsubscribes_from_the_bus(live: Live) -> None:
    init = await live.bearer()
    async with connected(live.ws_url, init) as connection:
        async with connection.subscribe(TASK_UPDATES, {"fleetId": DEV_FLEET}):
            await live.listening(channels.tasks(DEV_FLEET))
        deadline = time.monotonic() + 5
        while live.api.resources.events.subscribers(channels.tasks(DEV_FLEET)) > 0:
            assert time.monotonic() < deadline, "the stream kept listening after complete"
            await asyncio.sleep(0.01)


ROBOT_STATUS_CURSOR = """
subscription($robotId: ID, $after: String) {
  robotStatus(robotId: $robotId, after: $after) { eventId id status }
}
"""


async def test_a_client_reading_only_data_resumes_from_the_event_id_in_the_payload(live: Live) -> None:
    """Apollo's useSubscription and gql show `data` alone: `eventId` there is the cursor."""
    init = await live.bearer()
    names = [channels.robot_status(ALPHA), channels.ROBOT_STATUS_ALL]
    row = await live.row("robots", ALPHA)
    async with connected(live.ws_url, init) as a, connected(live.ws_url, init) as b:
        async with (
            a.subscribe(ROBOT_STATUS_CURSOR, {"robotId": ALPHA}) as first,
            b.subscribe(ROBOT_STATUS_CURSOR, {"robotId": ALPHA}) as other,
        ):
            await live.listening(names[0])
            seen_id = await live.publish(names, row | {"status": "CHARGING"})
            seen = (await first.next())["robotStatus"]
            # One execution for both sockets: the same cursor in each.
            assert (await other.next())["robotStatus"]["eventId"] == str(seen_id)
    assert seen["eventId"] == str(seen_id)
    assert seen["status"] == "CHARGING"

    # Offline: two more changes nobody watches.
    missed = [await live.publish(names, row | {"status": status}) for status in ("ERROR", "MAINTENANCE")]

    async with subscribe(
        live.ws_url, ROBOT_STATUS_CURSOR, {"robotId": ALPHA, "after": seen["eventId"]}, init=init
    ) as resumed:
        replayed = [(await resumed.next())["robotStatus"] for _ in missed]
        await live.listening(names[0])
        latest = await live.publish(names, row | {"status": "IDLE"})
        current = (await resumed.next())["robotStatus"]
        with pytest.raises(TimeoutError):
            await resumed.next(timeout=0.3)
    assert [(r["eventId"], r["status"]) for r in replayed] == [
        (str(missed[0]), "ERROR"),
        (str(missed[1]), "MAINTENANCE"),
    ]
    assert (current["eventId"], current["status"]) == (str(latest), "IDLE")


async def test_every_subscription_payload_carries_its_event_id_and_queries_answer_null(live: Live) -> None:
    init = await live.bearer(("admin@sepulki.com", "admin123"))
    async with subscribe(
        live.ws_url,
        "subscription($f: ID) { taskUpdates(fleetId: $f) { eventId id assignedRobots { eventId id } } }",
        {"f": DEV_FLEET},
        init=init,
    ) as updates:
        await live.listening(channels.tasks(DEV_FLEET))
        task = await live.row("tasks", PICK_TASK)
        event_id = await live.publish([channels.tasks(DEV_FLEET), channels.TASKS_ALL], task)
        got = (await updates.next())["taskUpdates"]
    assert got["eventId"] == str(event_id)
    # Only the payload itself is the event's: a Robot nested in it answers null.
    assert got["id"] == PICK_TASK
    assert got["assignedRobots"] and all(robot["eventId"] is None for robot in got["assignedRobots"])
    data = await live.api.data("{ robots(limit: 1) { eventId } tasks(limit: 1) { eventId } }")
    assert data == {"robots": [{"eventId": None}], "tasks": [{"eventId": None}]}
