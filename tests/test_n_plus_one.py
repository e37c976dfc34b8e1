"""A dashboard asking for every fleet with its robots costs the same number of SQL statements
for 2 fleets as for 50: every list field goes through a per-request DataLoader."""

from __future__ import annotations

from tests.seed_ids import DEVBOT_INGOT, DEVBOT_SEPULKA
from tests.support import Api

FLEETS = """
query($locus: ID!) {
  fleets(filter: {locusId: $locus}, limit: 500) {
    id name status
    locus { name coordinates { latitude } constraints { id } }
    constraints { id name }
    activeTask { id }
    robots {
      id status isMobile
      currentIngot { id version }
      factoryFloor { id }
      pose { position { latitude longitude } orientation }
    }
  }
}
"""

TASKS = """
{
  tasks(filter: {type: CUSTOM}, limit: 500) {
    id status
    createdBy { id email }
    assignedRobots { id name currentIngot { id } }
    runs { id status metrics { duration } }
  }
}
"""


async def _fleets_with_robots(api: Api, fleets: int) -> str:
    db = api.resources.db
    locus = await db.fetchval(
        "INSERT INTO loci (name, coordinates) VALUES ('N+1 site', "
        '\'{"latitude": 10, "longitude": 20}\') RETURNING id'
    )
    await db.execute(
        """
        WITH f AS (
          INSERT INTO fleets (name, locus_id, constraint_ids)
          SELECT 'Fleet ' || i, $1, '{a0000000-0000-4000-8000-000000000001}'
          FROM generate_series(1, $2::int) AS i RETURNING id
        )
        INSERT INTO robots (name, sepulka_id, fleet_id, current_ingot_id, last_pose)
        SELECT 'Robot ' || j, $3, f.id, $4,
               '{"position": {"x": 1, "y": 2, "z": 0}, "orientation": {"x": 0, "y": 0, "z": 0, "w": 1},
                 "timestamp": "2026-11-01T00:00:00Z"}'
        FROM f CROSS JOIN generate_series(1, 2) AS j
        """,
        locus,
        fleets,
        DEVBOT_SEPULKA,
        DEVBOT_INGOT,
    )
    return str(locus)


async def _tasks_with_robots(api: Api, tasks: int) -> None:
    await api.resources.db.execute(
        """
        WITH t AS (
          INSERT INTO tasks (name, type, status, created_by)
          SELECT 'Task ' || i, 'CUSTOM', 'ASSIGNED', '00000000-0000-4000-8000-000000000001'
          FROM generate_series(1, $1::int) AS i RETURNING id
        ), a AS (
          INSERT INTO task_robots (task_id, robot_id)
          SELECT t.id, r.id FROM t CROSS JOIN (VALUES ('70000000-0000-4000-8000-000000000001'::uuid),
                                                      ('70000000-0000-4000-8000-000000000002'::uuid)) AS r(id)
        )
        INSERT INTO runs (task_id, robot_id, status, metrics)
        SELECT t.id, '70000000-0000-4000-8000-000000000001', 'PENDING', '{"duration": 5}' FROM t
        """,
        tasks,
    )


# asyncpg's own statements when a pool connection is opened or released (type introspection,
# JIT settings, reset) are not part of the request's work and vary with pool state.
_CONNECTION_UPKEEP = ("pg_catalog", "pg_type", "typeinfo_tree", "jit", "pg_advisory_unlock_all")


def _ours(statements: list[str]) -> list[str]:
    return [s for s in statements if not any(marker in s for marker in _CONNECTION_UPKEEP)]


async def _count(api: Api, query: str, variables: dict | None = None) -> tuple[int, dict]:
    await api.data(query, variables)  # warm: token, pool connections
    with api.count_statements() as statements:
        data = await api.data(query, variables)
    return len(_ours(statements)), data


async def test_fleet_dashboard_statement_count_does_not_grow_with_fleets(api: Api) -> None:
    small = await _fleets_with_robots(api, 2)
    large = await _fleets_with_robots(api, 50)
    few, few_data = await _count(api, FLEETS, {"locus": small})
    many, many_data = await _count(api, FLEETS, {"locus": large})
    assert len(few_data["fleets"]) == 2 and len(many_data["fleets"]) == 50
    assert sum(len(f["robots"]) for f in many_data["fleets"]) == 100
    assert all(r["currentIngot"]["id"] == DEVBOT_INGOT for f in many_data["fleets"] for r in f["robots"])
    assert few == many, f"{few} statements for 2 fleets, {many} for 50"


async def test_task_board_statement_count_does_not_grow_with_tasks(api: Api) -> None:
    await _tasks_with_robots(api, 2)
    few, few_data = await _count(api, TASKS)
    await _tasks_with_robots(api, 48)
    many, many_data = await _count(api, TASKS)
    assert len(few_data["tasks"]) == 2 and len(many_data["tasks"]) == 50
    assert all(len(t["assignedRobots"]) == 2 and len(t["runs"]) == 1 for t in many_data["tasks"])
    assert few == many, f"{few} statements for 2 tasks, {many} for 50"
