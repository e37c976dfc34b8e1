"""An admin registers a robot that speaks HTTP: it gets its key once, posts telemetry with it, goes
silent and is marked OFFLINE by the inactivity timeout, and comes back when heard again; the status
history tells each step and why. Real PostgreSQL; the API's own liveness component."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from app.core.channels import channels
from app.settings import Settings
from app.workers.liveness import Liveness
from tests.seed_ids import ASSEMBLY_FLEET, ASSEMBLY_SEPULKA, BETA, DEVBOT_INGOT, DEVBOT_SEPULKA, MISSING_ROBOT
from tests.support import DEV, Api, eventually
from tests.test_http_ingest import post

REGISTER = """
mutation($input: RobotRegistrationInput!) {
  registerRobot(input: $input) {
    robot { id name status fleetId sepulkaId serialNumber firmwareVersion currentIngot { id } }
    apiKey { id prefix robotId }
    key
    errors { code message field }
  }
}
"""
NETWORK = """
query($id: ID!) {
  networkStatus(robotId: $id) { robotId transport mqttConnected since lastSeen online offlineAfterSeconds }
}
"""
HISTORY = """
query($id: ID!, $first: Int, $after: String, $status: RobotStatus) {
  robotStatusHistory(robotId: $id, first: $first, after: $after, status: $status) {
    edges { cursor node { from to cause detail actor { email } changedAt } }
    pageInfo { hasNextPage hasPreviousPage endCursor }
  }
}
"""
ROBOT = "query($id: ID!) { robot(id: $id) { id status lastSeen statusHistory(limit: 10) { from to cause } } }"


def registration(**changes: Any) -> dict[str, Any]:
    # A fleet without queued tasks: the task queue would put an IDLE newcomer to work.
    return {"name": "Rover-7", "fleetId": ASSEMBLY_FLEET, "sepulkaId": DEVBOT_SEPULKA, **changes}


def sample(seq: int) -> dict[str, Any]:
    data = {
        "seq": seq,
        "ts": datetime.now(UTC).isoformat(),
        "batteryLevel": 77.0,
        "metrics": {"CPU_USAGE": 30},
    }
    return {"eventType": "telemetry", "data": data}


@pytest.fixture
async def timed(settings: Settings) -> AsyncIterator[Api]:
    """The API with a one-second inactivity timeout, looked at every 0.1 s."""
    async with Api.running(settings.replace(robot_offline_after_s=1, robot_liveness_interval_s=0.1)) as api:
        yield api


async def register(api: Api, **changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = (await api.data(REGISTER, {"input": registration(**changes)}))["registerRobot"]
    return payload


async def causes(api: Api, robot_id: str) -> list[tuple[str | None, str, str]]:
    data = await api.data(HISTORY, {"id": robot_id})
    return [
        (e["node"]["from"], e["node"]["to"], e["node"]["cause"]) for e in data["robotStatusHistory"]["edges"]
    ]


async def test_an_http_robot_goes_silent_is_marked_offline_and_returns_when_heard_again(timed: Api) -> None:
    # Given a registered robot: its key is in the payload, and only there.
    registered = await register(timed, serialNumber="SN-0007", firmwareVersion="1.0.3", keyName="rover key")
    assert registered["errors"] is None
    robot, key = registered["robot"], registered["key"]
    assert robot["status"] == "OFFLINE" and robot["currentIngot"]["id"] == DEVBOT_INGOT
    assert robot["serialNumber"] == "SN-0007" and robot["firmwareVersion"] == "1.0.3"
    assert key.startswith(registered["apiKey"]["prefix"] + "_")
    listed = await timed.data(
        "query($id: ID!) { robotApiKeys(robotId: $id) { prefix name } }", {"id": robot["id"]}
    )
    assert listed["robotApiKeys"] == [{"prefix": registered["apiKey"]["prefix"], "name": "rover key"}]

    # When it reports over HTTP with that key, then falls silent.
    status = {"eventType": "status", "data": {"status": "IDLE", "ts": datetime.now(UTC).isoformat()}}
    response = await post(timed, f"/telemetry/{robot['id']}/batch", {"items": [status, sample(1)]}, key=key)
    assert response.status_code == 200 and response.json()["stored"] == 2, response.text
    network = (await timed.data(NETWORK, {"id": robot["id"]}))["networkStatus"]
    assert network["transport"] == "HTTP" and network["mqttConnected"] is False and network["since"] is None
    assert network["lastSeen"] and network["offlineAfterSeconds"] == 1

    # Then the timeout marks it OFFLINE, an event of its robotStatus stream.
    await eventually(lambda: _status_is(timed, robot["id"], "OFFLINE"), within=30, what="the robot OFFLINE")
    streamed = await timed.resources.db.fetch(
        "SELECT payload->>'status' AS status FROM event_log WHERE $1 = ANY(channels) ORDER BY id",
        channels.robot_status(robot["id"]),
    )
    assert [e["status"] for e in streamed][-2:] == ["IDLE", "OFFLINE"]
    assert (await timed.data(NETWORK, {"id": robot["id"]}))["networkStatus"]["online"] is False
    history = (await timed.data(HISTORY, {"id": robot["id"]}))["robotStatusHistory"]["edges"]
    assert history[0]["node"]["cause"] == "INACTIVITY_TIMEOUT"
    assert history[0]["node"]["detail"] == "nothing heard for 1 s"

    # When it is heard again it gets back the status the timeout took (and, silent again after
    # that one message, it is soon marked OFFLINE once more).
    await post(timed, f"/telemetry/{robot['id']}", sample(2), key=key)

    async def revived() -> list[tuple[str | None, str, str]] | None:
        history = list(reversed(await causes(timed, robot["id"])))
        return history if ("OFFLINE", "IDLE", "HEARD_AGAIN") in history else None

    history = await eventually(revived, within=30, what="the robot back to IDLE")
    assert history[:4] == [
        (None, "OFFLINE", "REGISTERED"),
        ("OFFLINE", "IDLE", "REPORTED"),
        ("IDLE", "OFFLINE", "INACTIVITY_TIMEOUT"),
        ("OFFLINE", "IDLE", "HEARD_AGAIN"),
    ]
    # The same, through the robot's own field (a DataLoader), newest first.
    row = (await timed.data(ROBOT, {"id": robot["id"]}))["robot"]
    assert [c["cause"] for c in reversed(row["statusHistory"])][:4] == [
        "REGISTERED",
        "REPORTED",
        "INACTIVITY_TIMEOUT",
        "HEARD_AGAIN",
    ]


async def _status_is(api: Api, robot_id: str, status: str) -> bool:
    return bool(
        await api.resources.db.fetchval(
            "SELECT status::text = $2 FROM robots WHERE id = $1", robot_id, status
        )
    )


async def test_several_processes_looking_for_silent_robots_mark_each_once(settings: Settings) -> None:
    # The seeded robots were last heard from weeks ago; four processes look at once (the API's
    # own component waits an hour before its first look).
    quiet = settings.replace(robot_offline_after_s=60, robot_liveness_interval_s=3600)
    async with Api.running(quiet) as api:
        await _four_at_once(api)


async def _four_at_once(api: Api) -> None:
    resources = api.resources
    await resources.db.execute("UPDATE robots SET last_seen = now() - interval '1 hour'")
    checker = [Liveness(resources) for _ in range(4)]
    try:
        await asyncio.gather(*(c.tick() for c in checker))
    finally:
        await asyncio.gather(*(c.close() for c in checker))
    assert sum(c.marked_offline for c in checker) == 4
    marked = await resources.db.fetchval(
        "SELECT count(*) FROM robot_status_changes WHERE cause = 'INACTIVITY_TIMEOUT'"
    )
    assert marked == 4
    assert await resources.db.fetchval("SELECT count(*) FROM robots WHERE status <> 'OFFLINE'") == 0


async def test_subscribers_of_robot_status_see_a_silent_robot_go_offline(settings: Settings) -> None:
    async with Api.running(settings.replace(robot_offline_after_s=60, robot_liveness_interval_s=3600)) as api:
        checker = Liveness(api.resources)
        try:
            async with api.resources.events.subscribe(channels.robot_status(BETA)) as updates:
                await checker.tick()
                change = await asyncio.wait_for(anext(updates), timeout=5)
        finally:
            await checker.close()
    assert change["id"] == BETA and change["status"] == "OFFLINE"


async def test_an_operators_status_change_is_in_the_history_with_who_did_it(api: Api) -> None:
    robot = (await register(api))["robot"]
    await api.data(
        "mutation($id: ID!) { updateRobotStatus(robotId: $id, status: CHARGING) { id } }", {"id": robot["id"]}
    )
    first = (await api.data(HISTORY, {"id": robot["id"], "first": 1}))["robotStatusHistory"]
    (edge,) = first["edges"]
    assert edge["node"]["cause"] == "OPERATOR" and edge["node"]["actor"] == {"email": "admin@sepulki.com"}
    assert edge["node"]["detail"] == "updateRobotStatus" and first["pageInfo"]["hasNextPage"] is True
    rest = (await api.data(HISTORY, {"id": robot["id"], "after": first["pageInfo"]["endCursor"]}))[
        "robotStatusHistory"
    ]
    assert [e["node"]["cause"] for e in rest["edges"]] == ["REGISTERED"]
    assert rest["pageInfo"] == {
        "hasNextPage": False,
        "hasPreviousPage": True,
        "endCursor": rest["edges"][0]["cursor"],
    }
    only = await api.data(HISTORY, {"id": robot["id"], "status": "CHARGING"})
    assert [e["node"]["to"] for e in only["robotStatusHistory"]["edges"]] == ["CHARGING"]


async def test_bad_registrations_get_typed_errors_and_store_nothing(api: Api) -> None:
    db = api.resources.db
    before = (
        await db.fetchval("SELECT count(*) FROM robots"),
        await db.fetchval("SELECT count(*) FROM api_keys"),
    )
    assert (await register(api, serialNumber="SN-1"))["errors"] is None
    before = (before[0] + 1, before[1] + 1)
    cases = [
        ({"name": "  "}, "BAD_USER_INPUT", "input.name"),
        ({"fleetId": MISSING_ROBOT}, "NOT_FOUND", "input.fleetId"),
        ({"sepulkaId": MISSING_ROBOT}, "NOT_FOUND", "input.sepulkaId"),
        ({"sepulkaId": ASSEMBLY_SEPULKA}, "CONFLICT", "input.sepulkaId"),  # nothing built yet
        ({"serialNumber": "SN-1"}, "CONFLICT", "input.serialNumber"),
        ({"firmwareVersion": "1.0 beta"}, "BAD_USER_INPUT", "input.firmwareVersion"),
        ({"streamUrl": "ftp://cam"}, "BAD_USER_INPUT", "input.streamUrl"),
        ({"keyName": "k" * 101}, "BAD_USER_INPUT", "input.keyName"),
    ]
    for changes, code, field in cases:
        payload = await register(api, **changes)
        assert payload["robot"] is None and payload["key"] is None, changes
        assert [(e["code"], e["field"]) for e in payload["errors"]] == [(code, field)], changes
    assert await api.error_codes(REGISTER, {"input": registration(fleetId="nope")}) == ["BAD_USER_INPUT"]
    after = (
        await db.fetchval("SELECT count(*) FROM robots"),
        await db.fetchval("SELECT count(*) FROM api_keys"),
    )
    assert after == before
    unknown = await api.data(NETWORK, {"id": MISSING_ROBOT})
    assert unknown["networkStatus"] is None
    assert await api.error_codes(HISTORY, {"id": MISSING_ROBOT, "after": "bogus"}) == ["BAD_USER_INPUT"]
    assert await api.error_codes(HISTORY, {"id": MISSING_ROBOT, "first": 0}) == ["BAD_USER_INPUT"]


async def test_only_admins_register_robots(api: Api) -> None:
    assert await api.error_codes(REGISTER, {"input": registration()}, as_=DEV) == ["FORBIDDEN"]
