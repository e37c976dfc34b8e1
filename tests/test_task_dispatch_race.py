"""Several dispatchers working one queue at once never give a robot two tasks: they split the
queue with SKIP LOCKED, and the database refuses a second open run for a robot outright."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from app.infra import db
from app.tasks import queue
from tests.seed_ids import ALPHA, BETA, DEV_FLEET, PICK_TASK
from tests.support import Api

CANCEL = "mutation($id: ID!) { cancelTask(taskId: $id) { id } }"


async def test_four_dispatchers_racing_for_seven_robots_assign_each_robot_once(api: Api) -> None:
    pool = api.resources.db
    settings = api.resources.settings
    await api.data(CANCEL, {"id": PICK_TASK})
    # Given seven free robots (Alpha, Beta and five copies of Beta) and twelve queued tasks,
    for n in range(5):
        await pool.execute(
            "INSERT INTO robots (id, name, sepulka_id, fleet_id, current_ingot_id, status) "
            "SELECT $1, $2, sepulka_id, fleet_id, current_ingot_id, 'IDLE' FROM robots WHERE id = $3",
            str(uuid.uuid4()),
            f"Copy-{n}",
            BETA,
        )
    await pool.execute(
        "INSERT INTO tasks (name, type, fleet_id, created_by, scheduled_at, created_at) "
        "SELECT 'Job ' || n, 'CUSTOM', $1, id, now() - interval '1 minute', "
        "       now() - interval '1 minute' + n * interval '1 millisecond' "
        "FROM smiths, generate_series(1, 12) n "
        "WHERE email = 'admin@sepulki.com'",
        DEV_FLEET,
    )
    # when four dispatchers, each on its own connection, drain the queue at the same time (the
    # app's own task worker may join them),
    conns = [await db.connect(settings.database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(queue.dispatch_pass(c, settings) for c in conns))
    finally:
        for c in conns:
            await c.close()
    for outboxes in results:
        for out in outboxes:
            await out.publish(api.resources.events)

    # then each robot has exactly one open run, and each assigned task one.
    open_runs = await pool.fetch("SELECT task_id, robot_id FROM runs WHERE status IN ('PENDING', 'RUNNING')")
    robots = [r["robot_id"] for r in open_runs]
    assert len(robots) == 7 and len(set(robots)) == 7
    assert ALPHA in robots and BETA in robots
    tasks = [r["task_id"] for r in open_runs]
    assert len(set(tasks)) == 7
    statuses = await pool.fetch(
        "SELECT status::text, count(*) FROM tasks WHERE name LIKE 'Job %' GROUP BY status ORDER BY status"
    )
    assert [tuple(r) for r in statuses] == [("ASSIGNED", 7), ("PENDING", 5)]


async def test_the_database_refuses_a_second_open_run_on_a_robot(api: Api) -> None:
    pool = api.resources.db
    task_id = await pool.fetchval(
        "INSERT INTO tasks (name, type, fleet_id, created_by) SELECT 'X', 'CUSTOM', $1, id FROM smiths "
        "WHERE email = 'admin@sepulki.com' RETURNING id",
        DEV_FLEET,
    )
    with pytest.raises(asyncpg.UniqueViolationError):
        # Alpha runs the seeded PICK task.
        await pool.execute(
            "INSERT INTO runs (task_id, robot_id, status) VALUES ($1, $2, 'PENDING')", task_id, ALPHA
        )
