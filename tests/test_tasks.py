"""An operator lists tasks, dispatches one to the best robot of a fleet, and cancels it."""

from __future__ import annotations

import asyncio

from app.core.channels import channels
from tests.seed_ids import AISLE_TASK, ALPHA, BETA, DEV_FLEET, PICK_TASK, TEST_UNITS_FLEET
from tests.support import DEMO, Api, request_work

DISPATCH = """
mutation($fleetId: ID!, $input: TaskInput!) {
  dispatchTask(fleetId: $fleetId, input: $input) {
    task { id name status priority scheduledAt createdBy { email } assignedRobots { id }
           runs { robotId status } }
    assignments { taskId robotId confidence estimatedDuration assignedAt }
    errors { code message field }
  }
}
"""
CANCEL = "mutation($id: ID!) { cancelTask(taskId: $id) { id status runs { status completedAt } } }"
TASKS = """
query($filter: TaskFilter, $limit: Int) {
  tasks(filter: $filter, limit: $limit) { id name status assignedRobots { id name } }
}
"""
TASK = """
query($id: ID!) {
  task(id: $id) {
    id type createdAt createdBy { email }
    runs { id status logs metrics { duration energyConsumed accuracy errors warnings performance } }
  }
}
"""


async def test_dispatch_assigns_the_idle_robot_first_and_creates_a_run(api: Api) -> None:
    body = await api.data(
        DISPATCH, {"fleetId": DEV_FLEET, "input": {"name": " Sort bolts ", "type": "PICK_AND_PLACE"}}
    )
    payload = body["dispatchTask"]
    assert payload["errors"] is None
    task = payload["task"]
    assert task["name"] == "Sort bolts"
    assert task["status"] == "ASSIGNED"
    assert task["priority"] == "NORMAL"
    assert task["scheduledAt"] is not None
    assert task["createdBy"]["email"] == "admin@sepulki.com"
    assert task["assignedRobots"] == [{"id": BETA}]
    assert task["runs"] == [{"robotId": BETA, "status": "PENDING"}]
    [assignment] = payload["assignments"]
    assert assignment["robotId"] == BETA and assignment["taskId"] == task["id"]
    assert assignment["confidence"] == 1.0 and assignment["estimatedDuration"] is None

    db = api.resources.db
    assert await db.fetchval("SELECT status::text FROM robots WHERE id = $1", BETA) == "WORKING"
    row = await db.fetchrow("SELECT status::text AS status, fleet_id FROM tasks WHERE id = $1", task["id"])
    assert (row["status"], row["fleet_id"]) == ("ASSIGNED", DEV_FLEET)
    assert await db.fetchval("SELECT count(*) FROM runs WHERE task_id = $1", task["id"]) == 1
    audit = await db.fetchval("SELECT count(*) FROM audit_logs WHERE action = 'dispatchTask'")
    assert audit == 1


async def test_dispatch_to_a_fleet_without_robots_queues_the_task_pending(api: Api) -> None:
    body = await api.data(
        DISPATCH, {"fleetId": TEST_UNITS_FLEET, "input": {"name": "Test", "type": "CUSTOM"}}
    )
    payload = body["dispatchTask"]
    assert payload["errors"] is None
    assert payload["assignments"] == []
    assert payload["task"]["status"] == "PENDING" and payload["task"]["runs"] == []
    row = await api.resources.db.fetchrow(
        "SELECT status::text AS status, fleet_id FROM tasks WHERE id = $1", payload["task"]["id"]
    )
    assert (row["status"], row["fleet_id"]) == ("PENDING", TEST_UNITS_FLEET)


async def test_dispatch_reports_unknown_fleet_missing_name_and_bad_id_in_the_payload(api: Api) -> None:
    unknown = "40000000-0000-4000-8000-000000000099"
    cases = [
        (unknown, "Job", "NOT_FOUND", None),
        (DEV_FLEET, "   ", "BAD_USER_INPUT", "name"),
        ("fleet-1", "Job", "BAD_USER_INPUT", "fleetId"),
    ]
    for fleet_id, name, code, field in cases:
        body = await api.data(DISPATCH, {"fleetId": fleet_id, "input": {"name": name, "type": "CUSTOM"}})
        [error] = body["dispatchTask"]["errors"]
        assert (error["code"], error["field"]) == (code, field)
    assert await api.resources.db.fetchval("SELECT count(*) FROM tasks") == 4


async def test_smith_may_dispatch_but_not_cancel(api: Api) -> None:
    body = await api.data(
        DISPATCH, {"fleetId": DEV_FLEET, "input": {"name": "Job", "type": "CUSTOM"}}, as_=DEMO
    )
    assert body["dispatchTask"]["task"]["status"] == "ASSIGNED"
    smith = await api.create_smith("x@sepulki.com", "SMITH")
    assert await api.error_codes(CANCEL, {"id": PICK_TASK}, as_=smith) == ["FORBIDDEN"]


async def test_cancel_releases_the_robot_cancels_runs_and_clears_the_active_task(api: Api) -> None:
    body = await api.data(CANCEL, {"id": PICK_TASK})
    task = body["cancelTask"]
    assert task["status"] == "CANCELLED"
    assert [r["status"] for r in task["runs"]] == ["CANCELLED"]
    assert task["runs"][0]["completedAt"] is not None

    db = api.resources.db
    assert await db.fetchval("SELECT status::text FROM robots WHERE id = $1", ALPHA) == "IDLE"
    assert await db.fetchval("SELECT status::text FROM tasks WHERE id = $1", PICK_TASK) == "CANCELLED"
    assert await db.fetchval("SELECT active_task_id FROM fleets WHERE id = $1", DEV_FLEET) is None
    assert await db.fetchval("SELECT count(*) FROM audit_logs WHERE action = 'cancelTask'") == 1


async def test_dispatched_task_can_be_cancelled_and_frees_its_robot(api: Api) -> None:
    body = await api.data(DISPATCH, {"fleetId": DEV_FLEET, "input": {"name": "Job", "type": "CUSTOM"}})
    task_id = body["dispatchTask"]["task"]["id"]
    cancelled = (await api.data(CANCEL, {"id": task_id}))["cancelTask"]
    assert cancelled["runs"][0]["status"] == "CANCELLED"
    assert await api.resources.db.fetchval("SELECT status::text FROM robots WHERE id = $1", BETA) == "IDLE"


async def test_robot_with_another_open_task_keeps_working_after_a_cancel(api: Api) -> None:
    db = api.resources.db
    await db.execute(
        "INSERT INTO task_robots (task_id, robot_id) VALUES ('80000000-0000-4000-8000-000000000002', $1)",
        ALPHA,
    )
    await api.data(CANCEL, {"id": PICK_TASK})
    assert await db.fetchval("SELECT status::text FROM robots WHERE id = $1", ALPHA) == "WORKING"


async def test_cancelling_a_completed_task_is_a_conflict_and_unknown_is_not_found(api: Api) -> None:
    body = await api.execute(CANCEL, {"id": AISLE_TASK})
    assert body["errors"][0]["extensions"]["code"] == "CONFLICT"
    assert body["errors"][0]["message"] == "Task is already COMPLETED"
    status = await api.resources.db.fetchval("SELECT status::text FROM tasks WHERE id = $1", AISLE_TASK)
    assert status == "COMPLETED"
    unknown = "80000000-0000-4000-8000-000000000099"
    assert await api.error_codes(CANCEL, {"id": unknown}) == ["NOT_FOUND"]
    assert await api.error_codes(CANCEL, {"id": "nope"}) == ["BAD_USER_INPUT"]


async def test_tasks_filter_by_assigned_robot_and_status(api: Api) -> None:
    mine = await api.data(TASKS, {"filter": {"assignedRobotId": ALPHA}})
    assert [t["id"] for t in mine["tasks"]] == [PICK_TASK]
    assert mine["tasks"][0]["assignedRobots"] == [{"id": ALPHA, "name": "DevBot-Alpha"}]
    pending = await api.data(TASKS, {"filter": {"status": "PENDING"}})
    assert [t["name"] for t in pending["tasks"]] == ["Assemble gearbox"]
    everything = await api.data(TASKS, {"limit": 2})
    assert len(everything["tasks"]) == 2
    assert await api.error_codes(TASKS, {"filter": {"assignedRobotId": "r2d2"}}) == ["BAD_USER_INPUT"]
    assert await api.error_codes(TASKS, {"limit": -1}) == ["BAD_USER_INPUT"]


async def test_task_shows_run_metrics_from_the_stored_json(api: Api) -> None:
    body = await api.data(TASK, {"id": AISLE_TASK})
    task = body["task"]
    assert task["type"] == "INSPECTION"
    assert task["createdBy"]["email"] == "demo@sepulki.com"
    [run] = task["runs"]
    assert run["metrics"] == {
        "duration": 3540,
        "energyConsumed": 125.5,
        "accuracy": 0.98,
        "errors": 0,
        "warnings": 2,
        "performance": {"itemsInspected": 240},
    }
    assert run["logs"] == ["Inspection started", "Aisle 3 complete"]
    missing = await api.data(TASK, {"id": "80000000-0000-4000-8000-000000000099"})
    assert missing["task"] is None


async def test_run_metrics_counts_default_to_zero(api: Api) -> None:
    await api.resources.db.execute(
        "UPDATE runs SET metrics = '{\"accuracy\": 0.5}' WHERE id = '90000000-0000-4000-8000-000000000001'"
    )
    body = await api.data(TASK, {"id": AISLE_TASK})
    metrics = body["task"]["runs"][0]["metrics"]
    assert (metrics["duration"], metrics["errors"], metrics["warnings"]) == (0, 0, 0)
    assert metrics["energyConsumed"] is None


async def test_runs_filter_by_robot_and_task(api: Api) -> None:
    query = "query($r: ID, $t: ID) { runs(robotId: $r, taskId: $t) { id taskId robotId status } }"
    by_robot = await api.data(query, {"r": ALPHA})
    assert [r["taskId"] for r in by_robot["runs"]] == [PICK_TASK]
    by_task = await api.data(query, {"t": AISLE_TASK})
    assert [r["status"] for r in by_task["runs"]] == ["COMPLETED"]
    assert len((await api.data(query))["runs"]) == 2
    assert await api.error_codes(query, {"t": "x"}) == ["BAD_USER_INPUT"]


async def test_task_list_loads_relations_without_n_plus_one(api: Api) -> None:
    query = "{ tasks { id assignedRobots { id } runs { id } createdBy { id } } }"
    await api.data(query)  # signs in first, so the count below sees only the query
    with api.count_statements() as statements:
        body = await api.data(query)
    assert len(body["tasks"]) == 4
    ours = request_work(statements)
    # the list, and one batched query per relation
    assert len(ours) == 4, ours


async def test_dispatch_announces_the_task_and_the_robot_after_commit(api: Api) -> None:
    events = api.resources.events
    async with (
        events.subscribe(channels.tasks(DEV_FLEET)) as tasks,
        events.subscribe(channels.robot_status(BETA)) as robots,
    ):
        body = await api.data(DISPATCH, {"fleetId": DEV_FLEET, "input": {"name": "Job", "type": "CUSTOM"}})
        queued = await asyncio.wait_for(anext(tasks), 5)
        task = await asyncio.wait_for(anext(tasks), 5)
        robot = await asyncio.wait_for(anext(robots), 5)
    # Every transition is streamed: created PENDING in the queue, then ASSIGNED.
    assert queued["id"] == body["dispatchTask"]["task"]["id"] and queued["status"] == "PENDING"
    assert task["id"] == body["dispatchTask"]["task"]["id"] and task["status"] == "ASSIGNED"
    assert robot["id"] == BETA and robot["status"] == "WORKING"
