"""Operators find robots, see where they stand and which way they face, and update them."""

from __future__ import annotations

import asyncio
import math

import pytest

from app.core.channels import channels
from tests.seed_ids import ALPHA, BETA, DEV_FLEET, MISSING_ROBOT, WAREHOUSE_BOT_01, WAREHOUSE_BOT_02
from tests.support import ADMIN, Api, request_work

DEV_LAB = {"latitude": 37.7849, "longitude": -122.4094, "altitude": 15.0}

ROBOT = """
query($id: ID!) {
  robot(id: $id) {
    id name status sepulkaId fleetId batteryLevel healthScore streamUrl isMobile lastSeen
    floorPositionX floorPositionY floorPositionTheta floorRotationDegrees
    currentIngot { id version }
    factoryFloor { id name }
    pose {
      position { latitude longitude altitude }
      orientation quaternion { x y z w } jointPositions timestamp
    }
  }
}
"""
ROBOTS = """
query($fleetId: ID, $status: RobotStatus, $limit: Int, $offset: Int) {
  robots(fleetId: $fleetId, status: $status, limit: $limit, offset: $offset) {
    id name isMobile currentIngot { id } factoryFloor { id } pose { orientation }
  }
}
"""
SET_STATUS = (
    "mutation($id: ID!, $s: RobotStatus!) { updateRobotStatus(robotId: $id, status: $s) { id status } }"
)
SET_LOCATION = """
mutation($id: ID!, $c: CoordinatesInput!) {
  updateRobotLocation(robotId: $id, coordinates: $c) {
    id pose { position { latitude longitude altitude } orientation timestamp }
  }
}
"""
SET_MOBILITY = (
    "mutation($id: ID!, $m: Boolean!) { updateRobotMobility(robotId: $id, isMobile: $m) { id isMobile } }"
)


def _metres_per_degree_of_longitude(latitude: float) -> float:
    return 111000 * math.cos(math.radians(latitude))


async def test_robot_pose_is_placed_around_its_fleets_locus_with_a_heading(api: Api) -> None:
    robot = (await api.data(ROBOT, {"id": ALPHA}))["robot"]
    pose = robot["pose"]
    assert pose["position"]["latitude"] == pytest.approx(DEV_LAB["latitude"] + 8.0 / 111000, abs=1e-9)
    expected_lng = DEV_LAB["longitude"] + 12.5 / _metres_per_degree_of_longitude(DEV_LAB["latitude"])
    assert abs(pose["position"]["longitude"] - expected_lng) < 1e-9
    assert pose["position"]["altitude"] == 15.0
    assert abs(pose["orientation"] - 45.0) < 0.1
    assert pose["quaternion"] == {"x": 0.0, "y": 0.0, "z": 0.3827, "w": 0.9239}
    assert pose["jointPositions"] == {"j1": 0.1, "j2": -0.4}
    assert pose["timestamp"].startswith("2026-11-01T00:00:00")


async def test_headings_cover_the_whole_circle(api: Api) -> None:
    robots = {r["id"]: r for r in (await api.data(ROBOTS))["robots"]}
    assert robots[BETA]["pose"]["orientation"] == 0.0
    assert abs(robots[WAREHOUSE_BOT_01]["pose"]["orientation"] - 90.0) < 0.1
    assert abs(robots[WAREHOUSE_BOT_02]["pose"]["orientation"] - 180.0) < 0.1


async def test_robot_shows_its_ingot_floor_and_floor_position(api: Api) -> None:
    robot = (await api.data(ROBOT, {"id": ALPHA}))["robot"]
    assert robot["currentIngot"] == {"id": "60000000-0000-4000-8000-000000000001", "version": "1.0.0"}
    assert robot["factoryFloor"] == {"id": "b0000000-0000-4000-8000-000000000001", "name": "Dev Lab Floor"}
    assert (robot["floorPositionX"], robot["floorPositionY"], robot["floorPositionTheta"]) == (
        12.5,
        8.0,
        0.785,
    )
    assert (robot["sepulkaId"], robot["fleetId"]) == ("50000000-0000-4000-8000-000000000001", DEV_FLEET)
    assert robot["streamUrl"] is None and robot["batteryLevel"] == 87.5


async def test_mobility_follows_the_pattern_unless_set_by_hand(api: Api) -> None:
    robots = {r["name"]: r["isMobile"] for r in (await api.data(ROBOTS))["robots"]}
    assert robots == {
        "DevBot-Alpha": False,
        "DevBot-Beta": False,
        "WarehouseBot-Demo-01": True,
        "WarehouseBot-Demo-02": True,
    }
    updated = (await api.data(SET_MOBILITY, {"id": BETA, "m": True}))["updateRobotMobility"]
    assert updated == {"id": BETA, "isMobile": True}
    assert await api.resources.db.fetchval("SELECT is_mobile FROM robots WHERE id = $1", BETA) is True
    again = (await api.data(ROBOT, {"id": BETA}))["robot"]["isMobile"]
    assert again is True


async def test_robots_filter_by_fleet_and_status_in_name_order(api: Api) -> None:
    dev = (await api.data(ROBOTS, {"fleetId": DEV_FLEET}))["robots"]
    assert [r["name"] for r in dev] == ["DevBot-Alpha", "DevBot-Beta"]
    working = (await api.data(ROBOTS, {"status": "WORKING"}))["robots"]
    assert [r["id"] for r in working] == [ALPHA, WAREHOUSE_BOT_02]
    paged = (await api.data(ROBOTS, {"limit": 1, "offset": 1}))["robots"]
    assert [r["id"] for r in paged] == [BETA]
    assert await api.error_codes(ROBOTS, {"fleetId": "dev"}) == ["BAD_USER_INPUT"]
    assert await api.error_codes(ROBOTS, {"limit": -1}) == ["BAD_USER_INPUT"]


async def test_unknown_robot_is_null_and_malformed_id_is_bad_input(api: Api) -> None:
    assert (await api.data(ROBOT, {"id": MISSING_ROBOT}))["robot"] is None
    assert await api.error_codes(ROBOT, {"id": "devbot"}) == ["BAD_USER_INPUT"]


async def test_robot_fields_run_each_query_once_however_many_robots(api: Api) -> None:
    await api.token(*ADMIN)
    with api.count_statements() as one:
        assert len((await api.data(ROBOTS, {"limit": 1}))["robots"]) == 1
    with api.count_statements() as every:
        assert len((await api.data(ROBOTS))["robots"]) == 4
    one, every = request_work(one), request_work(every)
    assert len(every) == len(set(every))
    assert set(one) == set(every)


async def test_status_change_is_stored_audited_and_published(api: Api) -> None:
    async with api.resources.events.subscribe(channels.robot_status(BETA)) as updates:
        changed = (await api.data(SET_STATUS, {"id": BETA, "s": "CHARGING"}))["updateRobotStatus"]
        event = await asyncio.wait_for(anext(updates), timeout=5)
    assert changed == {"id": BETA, "status": "CHARGING"}
    assert event["id"] == BETA and event["status"] == "CHARGING"
    db = api.resources.db
    assert await db.fetchval("SELECT status::text FROM robots WHERE id = $1", BETA) == "CHARGING"
    audit = await db.fetchrow("SELECT action, changes FROM audit_logs WHERE resource_id = $1", BETA)
    assert audit["action"] == "updateRobotStatus"
    assert audit["changes"] == {"status": {"from": "IDLE", "to": "CHARGING"}}


async def test_status_change_of_unknown_robot_is_not_found_and_plain_smiths_are_refused(api: Api) -> None:
    assert await api.error_codes(SET_STATUS, {"id": MISSING_ROBOT, "s": "IDLE"}) == ["NOT_FOUND"]
    smith = await api.create_smith("x@sepulki.com", "SMITH")
    assert await api.error_codes(SET_STATUS, {"id": BETA, "s": "OFFLINE"}, as_=smith) == ["FORBIDDEN"]
    assert await api.resources.db.fetchval("SELECT status::text FROM robots WHERE id = $1", BETA) == "IDLE"


async def test_location_round_trips_through_local_metres_and_keeps_the_heading(api: Api) -> None:
    target = {"latitude": 37.7851, "longitude": -122.4091, "altitude": 17.5}
    moved = (await api.data(SET_LOCATION, {"id": ALPHA, "c": target}))["updateRobotLocation"]
    position = moved["pose"]["position"]
    assert abs(position["latitude"] - target["latitude"]) < 1e-9
    assert abs(position["longitude"] - target["longitude"]) < 1e-9
    assert abs(position["altitude"] - 17.5) < 1e-9
    assert abs(moved["pose"]["orientation"] - 45.0) < 0.1
    stored = await api.resources.db.fetchval("SELECT last_pose FROM robots WHERE id = $1", ALPHA)
    assert abs(stored["position"]["y"] - 0.0002 * 111000) < 1e-6
    assert abs(stored["position"]["x"] - 0.0003 * _metres_per_degree_of_longitude(37.7849)) < 1e-6
    assert abs(stored["position"]["z"] - 2.5) < 1e-9
    assert stored["orientation"] == {"x": 0, "y": 0, "z": 0.3827, "w": 0.9239}
    assert stored["jointPositions"] == {"j1": 0.1, "j2": -0.4}
    assert not stored["timestamp"].startswith("2026-11-01T00:00:00")
    audit = await api.resources.db.fetchval(
        "SELECT action FROM audit_logs WHERE resource_id = $1 AND action = 'updateRobotLocation'", ALPHA
    )
    assert audit == "updateRobotLocation"


async def test_out_of_range_robot_coordinates_are_rejected(api: Api) -> None:
    before = await api.resources.db.fetchval("SELECT last_pose FROM robots WHERE id = $1", ALPHA)
    body = await api.execute(SET_LOCATION, {"id": ALPHA, "c": {"latitude": 95.0, "longitude": 0}})
    assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": "coordinates.latitude"}
    wide = {"id": ALPHA, "c": {"latitude": 0, "longitude": 180.5}}
    assert await api.error_codes(SET_LOCATION, wide) == ["BAD_USER_INPUT"]
    unknown = {"id": MISSING_ROBOT, "c": {"latitude": 0, "longitude": 0}}
    assert await api.error_codes(SET_LOCATION, unknown) == ["NOT_FOUND"]
    assert await api.resources.db.fetchval("SELECT last_pose FROM robots WHERE id = $1", ALPHA) == before


async def test_robot_without_a_pose_has_none_until_it_is_placed(api: Api) -> None:
    await api.resources.db.execute("UPDATE robots SET last_pose = NULL WHERE id = $1", BETA)
    assert (await api.data(ROBOT, {"id": BETA}))["robot"]["pose"] is None
    target = {"latitude": 37.785, "longitude": -122.4094}
    moved = (await api.data(SET_LOCATION, {"id": BETA, "c": target}))["updateRobotLocation"]
    assert moved["pose"]["orientation"] == 0.0
    assert abs(moved["pose"]["position"]["latitude"] - 37.785) < 1e-9
    assert moved["pose"]["position"]["altitude"] == 15.0
