"""Which robots the simulator plays: rows of the `robots` table, so the ingest accepts their ids.

Existing robots come first (oldest first: the seeded demo robots in development). When more are
asked for than exist, the missing ones are registered as new rows named `Sim-001`, `Sim-002`, ...
in the chosen fleet, on the design (sepulka) and build (ingot) its robots already use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.infra.db import Pool

ROBOTS = """
SELECT id, name, fleet_id, status::text AS status, battery_level, last_pose
FROM robots
WHERE deleted_at IS NULL AND ($1::uuid IS NULL OR fleet_id = $1::uuid)
  AND ($3::float8 IS NULL OR status = 'OFFLINE' OR last_seen IS NULL
       OR last_seen < now() - $3::float8 * interval '1 second')
-- Robots registered together share created_at: Sim-001 before Sim-002.
ORDER BY created_at, name, id
LIMIT $2
"""
ROBOTS_BY_ID = """
SELECT id, name, fleet_id, status::text AS status, battery_level, last_pose
FROM robots
WHERE deleted_at IS NULL AND id = ANY($1::uuid[])
"""
FIRST_FLEET = "SELECT id FROM fleets WHERE deleted_at IS NULL ORDER BY created_at, id LIMIT 1"
FLEET_BUILD = """
SELECT sepulka_id, current_ingot_id FROM robots
WHERE fleet_id = $1 AND deleted_at IS NULL
ORDER BY created_at, id
LIMIT 1
"""
ANY_BUILD = "SELECT sepulka_id, id AS current_ingot_id FROM ingots ORDER BY created_at, id LIMIT 1"
SIM_COUNT = "SELECT count(*) FROM robots WHERE name LIKE 'Sim-%'"
REGISTER = """
INSERT INTO robots (name, sepulka_id, fleet_id, current_ingot_id, status, is_mobile)
SELECT name, $2, $3, $4, 'IDLE', true FROM unnest($1::text[]) AS name
RETURNING id, name, fleet_id, status::text AS status, battery_level, last_pose
"""


class NoRobots(RuntimeError):
    """The database cannot provide the robots asked for."""


@dataclass(frozen=True, slots=True)
class SimRobot:
    id: str
    name: str
    fleet_id: str
    status: str | None
    battery: float | None
    last_pose: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: Any) -> SimRobot:
        return cls(
            id=str(row["id"]),
            name=row["name"],
            fleet_id=str(row["fleet_id"]),
            status=row["status"],
            battery=row["battery_level"],
            last_pose=row["last_pose"] if isinstance(row["last_pose"], dict) else None,
        )


async def by_ids(pool: Pool, ids: list[str]) -> list[SimRobot]:
    """The named robots, in the given order; an unknown id is an error (the ingest would reject it)."""
    found = {str(row["id"]): SimRobot.from_row(row) for row in await pool.fetch(ROBOTS_BY_ID, ids)}
    missing = [robot_id for robot_id in ids if robot_id not in found]
    if missing:
        raise NoRobots(f"unknown robot ids: {', '.join(missing)}")
    return [found[robot_id] for robot_id in ids]


async def pick(
    pool: Pool,
    count: int,
    fleet_id: str | None = None,
    *,
    register: bool = True,
    skip_live_s: float | None = None,
) -> list[SimRobot]:
    """`count` robots (of `fleet_id` when given), registering `Sim-NNN` rows for the shortfall.

    With `skip_live_s`, robots seen within that many seconds (and not OFFLINE) are left alone:
    something else drives them (a real robot, `sepulki dev`'s simulator), and two clients with the
    same MQTT client id would keep taking the connection from each other."""
    rows = await pool.fetch(ROBOTS, fleet_id, count, skip_live_s)
    robots = [SimRobot.from_row(row) for row in rows]
    missing = count - len(robots)
    if missing <= 0:
        return robots
    if not register:
        raise NoRobots(f"{count} robots asked for, {len(robots)} found")
    fleet = fleet_id or (robots[0].fleet_id if robots else await pool.fetchval(FIRST_FLEET))
    if fleet is None:
        raise NoRobots("no fleet to register simulated robots in: load the seed (`sepulki seed`)")
    async with pool.acquire() as conn, conn.transaction():
        build = await conn.fetchrow(FLEET_BUILD, fleet) or await conn.fetchrow(ANY_BUILD)
        if build is None:
            raise NoRobots("no ingot (robot build) to register simulated robots with: load the seed")
        first = int(await conn.fetchval(SIM_COUNT)) + 1
        names = [f"Sim-{number:03d}" for number in range(first, first + missing)]
        rows = await conn.fetch(REGISTER, names, build["sepulka_id"], fleet, build["current_ingot_id"])
    return robots + [SimRobot.from_row(row) for row in rows]
