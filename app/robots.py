"""Robots: their queries and loaders, pose conversion around the fleet's locus, and robot updates."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from app import audit, robot_status
from app.context import Context, Viewer
from app.core.channels import channels
from app.core.errors import Invalid, NotFound
from app.fleets import check_coordinates
from app.infra.db import Connection, Pool, fetch_by_ids, group_rows, returned
from app.infra.eventlog import Recorded, record

# The reference's flat-earth conversion: 111 km per degree of latitude.
METRES_PER_DEGREE = 111_000.0
MOBILE_CATEGORIES = {"MOBILE_ROBOT": True, "HUMANOID": True, "QUADRUPED": True, "DRONE": True}
FIXED_CATEGORIES = {"INDUSTRIAL_ARM": False}
IDENTITY_QUATERNION = {"x": 0.0, "y": 0.0, "z": 0.0, "w": 1.0}

LIST_ROBOTS = """
SELECT * FROM robots
WHERE deleted_at IS NULL
  AND ($1::uuid IS NULL OR fleet_id = $1::uuid)
  AND ($2::robot_status IS NULL OR status = $2::robot_status)
ORDER BY name, id
LIMIT $3 OFFSET $4
"""
ROBOTS_BY_ID = "SELECT * FROM robots WHERE id = ANY($1::uuid[]) AND deleted_at IS NULL"
ROBOTS_BY_FLEET = """
SELECT * FROM robots WHERE fleet_id = ANY($1::uuid[]) AND deleted_at IS NULL ORDER BY name, id
"""
ROBOTS_BY_FLOOR = """
SELECT * FROM robots WHERE factory_floor_id = ANY($1::uuid[]) AND deleted_at IS NULL ORDER BY name, id
"""
PATTERN_CATEGORY_BY_SEPULKA = """
SELECT s.id, p.category::text AS category
FROM sepulkas s LEFT JOIN patterns p ON p.id = s.pattern_id
WHERE s.id = ANY($1::uuid[])
"""
LOCK_ROBOT = "SELECT * FROM robots WHERE id = $1 AND deleted_at IS NULL FOR UPDATE"
LOCK_ROBOT_WITH_ORIGIN = """
SELECT r.*, l.coordinates AS locus_coordinates
FROM robots r JOIN fleets f ON f.id = r.fleet_id JOIN loci l ON l.id = f.locus_id
WHERE r.id = $1 AND r.deleted_at IS NULL
FOR UPDATE OF r
"""
SET_STATUS = "UPDATE robots SET status = $2 WHERE id = $1 RETURNING *"
SET_POSE = "UPDATE robots SET last_pose = $2 WHERE id = $1 RETURNING *"
SET_MOBILITY = "UPDATE robots SET is_mobile = $2 WHERE id = $1 RETURNING *"


async def list_robots(
    pool: Pool, fleet_id: str | None, status: str | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    return [dict(r) for r in await pool.fetch(LIST_ROBOTS, fleet_id, status, limit, offset)]


async def robots_by_id(pool: Pool, ids: list[str]) -> list[dict[str, Any] | None]:
    return await fetch_by_ids(pool, ROBOTS_BY_ID, ids)


async def robots_by_fleet_id(pool: Pool, ids: list[str]) -> list[list[dict[str, Any]]]:
    grouped = group_rows(await pool.fetch(ROBOTS_BY_FLEET, ids), "fleet_id")
    return [grouped.get(i, []) for i in ids]


async def robots_by_floor_id(pool: Pool, ids: list[str]) -> list[list[dict[str, Any]]]:
    grouped = group_rows(await pool.fetch(ROBOTS_BY_FLOOR, ids), "factory_floor_id")
    return [grouped.get(i, []) for i in ids]


async def pattern_category_by_sepulka_id(pool: Pool, ids: list[str]) -> list[str | None]:
    rows = {r["id"]: r["category"] for r in await pool.fetch(PATTERN_CATEGORY_BY_SEPULKA, ids)}
    return [rows.get(i) for i in ids]


def mobility_from_category(category: str | None) -> bool | None:
    """Wheels, legs and rotors move; arms do not; a custom design is unknown."""
    if category is None:
        return None
    return MOBILE_CATEGORIES.get(category, FIXED_CATEGORIES.get(category))


def heading_degrees(quaternion: dict[str, Any]) -> float:
    """Yaw about the vertical axis, as a compass-style heading in [0, 360)."""
    x, y, z, w = (float(quaternion.get(k, 0.0)) for k in ("x", "y", "z", "w"))
    yaw = math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))
    return math.degrees(yaw) % 360.0


def _wrap_longitude(value: float) -> float:
    return (value + 180.0) % 360.0 - 180.0


def _metres_per_degree_of_longitude(latitude: float) -> float:
    # Meridians meet at the poles; keep the scale non-zero so a polar locus cannot divide by zero.
    return METRES_PER_DEGREE * max(math.cos(math.radians(latitude)), 1e-9)


def pose_view(last_pose: dict[str, Any], origin: dict[str, Any], seen_at: Any = None) -> dict[str, Any]:
    """A stored pose (local metres and a quaternion) as a RobotPose around `origin`;
    a pose stored without its own time is as old as `seen_at`."""
    position = last_pose.get("position") or {}
    lat0, lng0 = float(origin["latitude"]), float(origin["longitude"])
    x, y, z = (float(position.get(k) or 0.0) for k in ("x", "y", "z"))
    quaternion = {k: float(v) for k, v in (last_pose.get("orientation") or IDENTITY_QUATERNION).items()}
    return {
        "position": {
            "latitude": lat0 + y / METRES_PER_DEGREE,
            "longitude": _wrap_longitude(lng0 + x / _metres_per_degree_of_longitude(lat0)),
            "altitude": float(origin.get("altitude") or 0.0) + z,
        },
        "orientation": heading_degrees(quaternion),
        "quaternion": quaternion,
        "joint_positions": last_pose.get("jointPositions"),
        "timestamp": last_pose.get("timestamp") or seen_at,
    }


def local_position(coordinates: dict[str, Any], origin: dict[str, Any], z: float) -> dict[str, float]:
    """The inverse of `pose_view`: metres east (x), north (y) and up (z) of the locus."""
    lat0, lng0 = float(origin["latitude"]), float(origin["longitude"])
    altitude = coordinates.get("altitude")
    return {
        "x": _wrap_longitude(coordinates["longitude"] - lng0) * _metres_per_degree_of_longitude(lat0),
        "y": (coordinates["latitude"] - lat0) * METRES_PER_DEGREE,
        "z": z if altitude is None else altitude - float(origin.get("altitude") or 0.0),
    }


async def record_changes(conn: Connection, robots: list[dict[str, Any]]) -> list[Recorded]:
    """Robot change events, written in the changing transaction; publish them after its commit
    with `ctx.events.publish_recorded`."""
    return [await record(conn, channels.robot(robot["id"]), robot) for robot in robots]


async def _update(
    ctx: Context, viewer: Viewer, robot_id: str, action: str, sql: str, value: Any, field: str
) -> dict[str, Any]:
    async with ctx.db.acquire() as conn, conn.transaction():
        await robot_status.name_cause(conn, robot_status.OPERATOR, viewer.id, action)
        before = await conn.fetchrow(LOCK_ROBOT, robot_id)
        if before is None:
            raise NotFound.of("Robot", robot_id)
        robot = dict(returned(await conn.fetchrow(sql, robot_id, value)))
        changes = {field: {"from": before[field], "to": robot[field]}}
        await audit.record(conn, ctx, viewer.id, action, "Robot", robot_id, changes)
        events = await record_changes(conn, [robot])
    await ctx.events.publish_recorded(events)
    return robot


async def update_status(ctx: Context, viewer: Viewer, robot_id: str, status: str) -> dict[str, Any]:
    return await _update(ctx, viewer, robot_id, "updateRobotStatus", SET_STATUS, status, "status")


async def update_mobility(ctx: Context, viewer: Viewer, robot_id: str, is_mobile: bool) -> dict[str, Any]:
    return await _update(ctx, viewer, robot_id, "updateRobotMobility", SET_MOBILITY, is_mobile, "is_mobile")


async def update_location(
    ctx: Context, viewer: Viewer, robot_id: str, coordinates: dict[str, Any]
) -> dict[str, Any]:
    """Moves the robot to geographic coordinates, stored as local metres; orientation is kept."""
    coordinates = check_coordinates(coordinates)
    async with ctx.db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(LOCK_ROBOT_WITH_ORIGIN, robot_id)
        if row is None:
            raise NotFound.of("Robot", robot_id)
        origin = row["locus_coordinates"]
        if not origin or origin.get("latitude") is None or origin.get("longitude") is None:
            raise Invalid("The robot's fleet locus has no coordinates to place it around", field="robotId")
        previous: dict[str, Any] = row["last_pose"] or {}
        z = float((previous.get("position") or {}).get("z") or 0.0)
        pose = {
            "position": local_position(coordinates, origin, z),
            "orientation": previous.get("orientation") or IDENTITY_QUATERNION,
            "jointPositions": previous.get("jointPositions"),
            "timestamp": datetime.now(UTC).isoformat(),
        }
        robot = dict(returned(await conn.fetchrow(SET_POSE, robot_id, pose)))
        changes = {"last_pose": {"from": row["last_pose"], "to": pose}, "coordinates": coordinates}
        await audit.record(conn, ctx, viewer.id, "updateRobotLocation", "Robot", robot_id, changes)
        events = await record_changes(conn, [robot])
    await ctx.events.publish_recorded(events)
    return robot
