"""Operators browse fleets and their sites, stop a fleet in an emergency and move its site."""

from __future__ import annotations

import asyncio
from typing import Any

from app.core.channels import channels
from tests.seed_ids import (
    ALPHA,
    ASSEMBLY_FLEET,
    BETA,
    DEV_FLEET,
    DEV_LAB,
    FACTORY_A,
    GEARBOX_TASK,
    MISSING_FLEET,
    PATROL_TASK,
    PICK_RUN,
    PICK_TASK,
    WAREHOUSE_FLEET,
)
from tests.support import ADMIN, Api, request_work

DEVBOTS = [ALPHA, BETA]

FLEETS = """
query($filter: FleetFilter, $limit: Int) {
  fleets(filter: $filter, limit: $limit) {
    id name status createdAt
    locus { id name coordinates { latitude longitude altitude }
            constraints { id } safetyZones { id name type boundaries restrictions } }
    robots { id name }
    activeTask { id status }
    constraints { id name severity }
    telemetry { fleetId realTime }
  }
}
"""
FLEET = "query($id: ID!) { fleet(id: $id) { id name status } }"
STOP = (
    "mutation($id: ID!) { emergencyStop(fleetId: $id) { id status activeTask { id } robots { id status } } }"
)
MOVE = """
mutation($id: ID!, $c: CoordinatesInput!) {
  updateFleetLocation(fleetId: $id, coordinates: $c) {
    id locus { id coordinates { latitude longitude altitude } }
  }
}
"""


async def _drain(messages: Any, count: int) -> list[dict[str, Any]]:
    return [await asyncio.wait_for(anext(messages), timeout=5) for _ in range(count)]


async def test_operator_sees_each_fleet_with_its_site_robots_and_constraints(api: Api) -> None:
    fleets = {f["id"]: f for f in (await api.data(FLEETS))["fleets"]}
    assert [f["name"] for f in fleets.values()] == sorted(f["name"] for f in fleets.values())
    assembly, dev = fleets[ASSEMBLY_FLEET], fleets[DEV_FLEET]
    assert [e["id"] for e in assembly["constraints"]] == [
        "a0000000-0000-4000-8000-000000000001",
        "a0000000-0000-4000-8000-000000000003",
    ]
    assert assembly["locus"]["constraints"] == [{"id": "a0000000-0000-4000-8000-000000000001"}]
    assert assembly["locus"]["safetyZones"][0]["restrictions"] == ["NO_ENTRY"]
    assert dev["locus"]["coordinates"] == {"latitude": 37.7849, "longitude": -122.4094, "altitude": 15.0}
    assert [r["name"] for r in dev["robots"]] == ["DevBot-Alpha", "DevBot-Beta"]
    assert dev["activeTask"] == {"id": PICK_TASK, "status": "IN_PROGRESS"}
    assert dev["telemetry"] == {"fleetId": DEV_FLEET, "realTime": False}
    assert fleets[WAREHOUSE_FLEET]["activeTask"] is None


async def test_fleets_filter_by_status_and_locus(api: Api) -> None:
    active = await api.data(FLEETS, {"filter": {"status": "ACTIVE"}})
    assert [f["id"] for f in active["fleets"]] == [DEV_FLEET]
    at_factory = await api.data(FLEETS, {"filter": {"locusId": FACTORY_A}})
    assert [f["id"] for f in at_factory["fleets"]] == [ASSEMBLY_FLEET]
    assert (await api.data(FLEETS, {"limit": 2}))["fleets"].__len__() == 2
    codes = await api.error_codes(FLEETS, {"filter": {"locusId": "nope"}})
    assert codes == ["BAD_USER_INPUT"]


async def test_nested_fleet_fields_run_each_query_once_however_many_fleets(api: Api) -> None:
    await api.token(*ADMIN)
    with api.count_statements() as one:
        assert len((await api.data(FLEETS, {"limit": 1}))["fleets"]) == 1
    with api.count_statements() as every:
        assert len((await api.data(FLEETS))["fleets"]) == 4
    one, every = request_work(one), request_work(every)
    assert len(every) == len(set(every)) <= 6
    assert set(one) <= set(every)


async def test_every_fleets_last_hour_of_telemetry_is_read_in_one_query(api: Api) -> None:
    query = "{ fleets { id telemetry { fleetId realTime metrics { name value robotId } } } }"
    await api.token(*ADMIN)
    with api.count_statements() as statements:
        fleets = {f["id"]: f["telemetry"] for f in (await api.data(query))["fleets"]}
    dev = fleets[DEV_FLEET]
    assert dev["fleetId"] == DEV_FLEET and dev["realTime"] is False
    assert {m["robotId"] for m in dev["metrics"]} == set(DEVBOTS)
    assert {m["name"] for m in dev["metrics"]} >= {"BATTERY_SOC", "CPU_USAGE"}
    assert fleets[ASSEMBLY_FLEET]["metrics"] == []
    assert len([s for s in statements if "FROM telemetry t" in s]) == 1


async def test_a_single_fleet_is_found_by_id_and_unknown_ids_are_null(api: Api) -> None:
    assert (await api.data(FLEET, {"id": DEV_FLEET}))["fleet"]["name"] == "Dev Fleet Alpha"
    assert (await api.data(FLEET, {"id": MISSING_FLEET}))["fleet"] is None
    assert await api.error_codes(FLEET, {"id": "fleet-2"}) == ["BAD_USER_INPUT"]


async def test_loci_are_listed_and_found_by_id(api: Api) -> None:
    loci = (await api.data("{ loci { id name } }"))["loci"]
    assert [locus["name"] for locus in loci] == [
        "Demo Warehouse",
        "Development Lab",
        "Factory Floor A",
        "Factory Simulation",
    ]
    locus = await api.data(
        "query($id: ID!) { locus(id: $id) { name coordinates { latitude } } }", {"id": DEV_LAB}
    )
    assert locus["locus"] == {"name": "Development Lab", "coordinates": {"latitude": 37.7849}}


async def test_emergency_stop_parks_the_robots_and_cancels_the_fleets_open_work(api: Api) -> None:
    db = api.resources.db
    events = api.resources.events
    async with (
        events.subscribe(channels.ROBOT_STATUS_ALL) as robot_events,
        events.subscribe(channels.tasks(DEV_FLEET)) as task_events,
    ):
        stopped = (await api.data(STOP, {"id": DEV_FLEET}))["emergencyStop"]
        robot_messages = await _drain(robot_events, 2)
        task_messages = await _drain(task_events, 2)

    assert stopped["status"] == "MAINTENANCE"
    assert stopped["activeTask"] is None
    assert {r["status"] for r in stopped["robots"]} == {"MAINTENANCE"}
    robots = await db.fetch("SELECT status::text FROM robots WHERE id = ANY($1::uuid[])", DEVBOTS)
    assert [r["status"] for r in robots] == ["MAINTENANCE", "MAINTENANCE"]
    fleet = await db.fetchrow("SELECT status::text, active_task_id FROM fleets WHERE id = $1", DEV_FLEET)
    assert (fleet["status"], fleet["active_task_id"]) == ("MAINTENANCE", None)
    tasks = dict(await db.fetch("SELECT id, status::text FROM tasks ORDER BY id"))
    assert tasks[PICK_TASK] == tasks[GEARBOX_TASK] == "CANCELLED"
    assert tasks[PATROL_TASK] == "ASSIGNED"  # another fleet's work goes on
    run = await db.fetchrow("SELECT status::text, completed_at FROM runs WHERE id = $1", PICK_RUN)
    assert run["status"] == "CANCELLED" and run["completed_at"] is not None
    audit = await db.fetchrow("SELECT action, changes FROM audit_logs WHERE resource_id = $1", DEV_FLEET)
    assert audit["action"] == "emergencyStop" and audit["changes"]["runs"] == [PICK_RUN]

    assert {m["id"] for m in robot_messages} == set(DEVBOTS)
    assert {m["status"] for m in robot_messages} == {"MAINTENANCE"}
    assert {m["id"]: m["status"] for m in task_messages} == {
        PICK_TASK: "CANCELLED",
        GEARBOX_TASK: "CANCELLED",
    }


async def test_emergency_stop_of_an_unknown_fleet_is_not_found(api: Api) -> None:
    assert await api.error_codes(STOP, {"id": MISSING_FLEET}) == ["NOT_FOUND"]
    assert await api.error_codes(STOP, {"id": "dev-fleet"}) == ["BAD_USER_INPUT"]


async def test_a_plain_smith_may_not_stop_a_fleet(api: Api) -> None:
    smith = await api.create_smith("x@sepulki.com", "SMITH")
    assert await api.error_codes(STOP, {"id": DEV_FLEET}, as_=smith) == ["FORBIDDEN"]
    status = await api.resources.db.fetchval("SELECT status::text FROM fleets WHERE id = $1", DEV_FLEET)
    assert status == "ACTIVE"


async def test_moving_a_fleet_rewrites_its_locus_and_its_robots_follow(api: Api) -> None:
    coordinates = {"latitude": 48.8566, "longitude": 2.3522, "altitude": 35.0}
    moved = (await api.data(MOVE, {"id": DEV_FLEET, "c": coordinates}))["updateFleetLocation"]
    assert moved["locus"] == {"id": DEV_LAB, "coordinates": coordinates}
    stored = await api.resources.db.fetchval("SELECT coordinates FROM loci WHERE id = $1", DEV_LAB)
    assert stored == coordinates
    pose = await api.data(
        'query { robot(id: "70000000-0000-4000-8000-000000000002") { pose { position { latitude } } } }'
    )
    assert abs(pose["robot"]["pose"]["position"]["latitude"] - (48.8566 + 4 / 111000)) < 1e-9
    audit = await api.resources.db.fetchrow(
        "SELECT changes FROM audit_logs WHERE action = 'updateFleetLocation' AND resource_id = $1", DEV_FLEET
    )
    assert audit["changes"]["to"] == coordinates


async def test_out_of_range_fleet_coordinates_are_rejected(api: Api) -> None:
    bad_lat = {"id": DEV_FLEET, "c": {"latitude": 91, "longitude": 0}}
    bad_lng = {"id": DEV_FLEET, "c": {"latitude": 0, "longitude": -181}}
    body = await api.execute(MOVE, bad_lat)
    assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": "coordinates.latitude"}
    assert await api.error_codes(MOVE, bad_lng) == ["BAD_USER_INPUT"]
    unknown = {"id": MISSING_FLEET, "c": {"latitude": 1, "longitude": 1}}
    assert await api.error_codes(MOVE, unknown) == ["NOT_FOUND"]
    stored = await api.resources.db.fetchval("SELECT coordinates FROM loci WHERE id = $1", DEV_LAB)
    assert stored["latitude"] == 37.7849


async def test_a_plain_smith_may_not_move_a_fleet(api: Api) -> None:
    smith = await api.create_smith("x@sepulki.com", "SMITH")
    variables = {"id": DEV_FLEET, "c": {"latitude": 1, "longitude": 1}}
    assert await api.error_codes(MOVE, variables, as_=smith) == ["FORBIDDEN"]
    stored = await api.resources.db.fetchval("SELECT coordinates FROM loci WHERE id = $1", DEV_LAB)
    assert stored == {"latitude": 37.7849, "longitude": -122.4094, "altitude": 15}
