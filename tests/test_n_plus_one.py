"""A dashboard asking for every fleet with its robots costs the same number of SQL statements
for 2 fleets as for 50: every list field goes through a per-request DataLoader."""

from __future__ import annotations

from tests.seed_ids import DEVBOT_INGOT, DEVBOT_SEPULKA
from tests.support import Api, request_work

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
        ), ru AS (
          -- Finished runs: a robot has at most one open run (a unique index says so).
          INSERT INTO runs (task_id, robot_id, status, metrics)
          SELECT t.id, '70000000-0000-4000-8000-000000000001', 'COMPLETED', '{"duration": 5}' FROM t
        )
        INSERT INTO task_transitions (task_id, from_status, to_status, actor_type, smith_id, reason)
        SELECT t.id, s.f::task_status, s.t::task_status, 'SMITH',
               '00000000-0000-4000-8000-000000000001', 'test'
        FROM t CROSS JOIN (VALUES (NULL, 'PENDING'), ('PENDING', 'ASSIGNED')) AS s(f, t)
        """,
        tasks,
    )


async def _count(api: Api, query: str, variables: dict | None = None) -> tuple[int, dict]:
    await api.data(query, variables)  # warm: token, pool connections
    with api.count_statements() as statements:
        data = await api.data(query, variables)
    return len(request_work(statements)), data


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


TASK_LOGS = """
{
  tasks(filter: {type: CUSTOM}, limit: 60) {
    id progress { percent }
    transitions(first: 5) { edges { node { from to actor smith { email } } } pageInfo { hasNextPage } }
  }
  scheduledTasks(limit: 60) { id createdBy { email } }
}
"""


async def test_task_transition_logs_and_schedules_cost_the_same_for_2_tasks_as_for_50(api: Api) -> None:
    async def schedules(n: int) -> None:
        await api.resources.db.execute(
            "INSERT INTO scheduled_tasks (fleet_id, name, type, cron, next_run_at, created_by) "
            "SELECT '40000000-0000-4000-8000-000000000004', 'S', 'PATROL', '0 6 * * *', "
            "       now() + interval '1 day', '00000000-0000-4000-8000-000000000001' "
            "FROM generate_series(1, $1::int)",
            n,
        )

    await _tasks_with_robots(api, 2)
    await schedules(2)
    few, few_data = await _count(api, TASK_LOGS)
    await _tasks_with_robots(api, 48)
    await schedules(48)
    many, many_data = await _count(api, TASK_LOGS)
    assert len(many_data["tasks"]) == 50 and len(many_data["scheduledTasks"]) == 50
    assert all(len(t["transitions"]["edges"]) == 2 for t in many_data["tasks"])
    assert all(s["createdBy"]["email"] == "admin@sepulki.com" for s in many_data["scheduledTasks"])
    assert few == many, f"{few} statements for 2 tasks, {many} for 50"


ROBOT_LIFECYCLE = """
query($locus: ID!) {
  fleets(filter: {locusId: $locus}, limit: 500) {
    robots {
      id networkStatus { mqttConnected transport lastSeen }
      statusHistory(limit: 5) { from to cause actor { email } }
      upcomingMaintenance { id kind }
      nextMaintenance { id schedule { intervalDays } }
      maintenanceSchedules { id }
    }
  }
}
"""


async def _maintained(api: Api, locus: str) -> None:
    """A weekly schedule and its open record, and an operator's status change, for every robot."""
    await api.resources.db.execute(
        """
        WITH r AS (
          SELECT r.id FROM robots r JOIN fleets f ON f.id = r.fleet_id WHERE f.locus_id = $1
        ), s AS (
          INSERT INTO maintenance_schedules (robot_id, kind, interval_days) SELECT id, 'CHECK', 7 FROM r
          RETURNING id, robot_id
        ), m AS (
          INSERT INTO maintenance_records (robot_id, schedule_id, kind, due_at)
          SELECT robot_id, id, 'CHECK', now() + interval '1 day' FROM s
        )
        UPDATE robots SET status = 'CHARGING' WHERE id IN (SELECT id FROM r)
        """,
        locus,
    )


async def _count_loads(api: Api, query: str, variables: dict) -> tuple[int, dict]:
    """Like `_count`, but only the request's list and loader statements (`= ANY($1::uuid[])`): the
    background components of the running API (task worker, liveness, evaluators) share the pool
    and would otherwise add their own statements to the count at random."""
    await api.data(query, variables)
    with api.count_statements() as statements:
        data = await api.data(query, variables)
    ours = [s for s in request_work(statements) if "ANY($1::uuid[])" in s or "FROM fleets" in s]
    return len(ours), data


async def test_robot_lifecycle_fields_cost_the_same_for_2_fleets_as_for_50(api: Api) -> None:
    small = await _fleets_with_robots(api, 2)
    large = await _fleets_with_robots(api, 50)
    await _maintained(api, small)
    await _maintained(api, large)
    few, _ = await _count_loads(api, ROBOT_LIFECYCLE, {"locus": small})
    many, many_data = await _count_loads(api, ROBOT_LIFECYCLE, {"locus": large})
    robots = [r for f in many_data["fleets"] for r in f["robots"]]
    assert len(robots) == 100
    assert all([c["cause"] for c in r["statusHistory"]] == ["UPDATED", "REGISTERED"] for r in robots)
    assert all(
        r["nextMaintenance"]["schedule"]["intervalDays"] == 7 and len(r["maintenanceSchedules"]) == 1
        for r in robots
    )
    assert few == many, f"{few} statements for 2 fleets, {many} for 50"
