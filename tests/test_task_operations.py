"""An operator reprioritises, reassigns and clones tasks, reads a task's transition log, a robot's
task history and a fleet's task analytics; an URGENT task preempts a LOW one; bad input and
invalid transitions answer typed errors and change nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.seed_ids import AISLE_TASK, ALPHA, BETA, DEV_FLEET, PICK_TASK, WAREHOUSE_BOT_02
from tests.support import DEMO, Api, eventually

DISPATCH = """
mutation($fleetId: ID!, $input: TaskInput!) {
  dispatchTask(fleetId: $fleetId, input: $input) {
    task { id status priority scheduledAt } assignments { robotId } errors { code field }
  }
}
"""
CANCEL = "mutation($id: ID!) { cancelTask(taskId: $id) { id status } }"
PRIORITY = (
    "mutation($id: ID!, $p: TaskPriority!) { updateTaskPriority(taskId: $id, priority: $p) { id priority } }"
)
REASSIGN = """
mutation($id: ID!, $robot: ID!) {
  reassignTask(taskId: $id, robotId: $robot) { id status assignedRobots { id } runs { robotId status } }
}
"""
CLONE = """
mutation($id: ID!) { cloneTask(taskId: $id) { id name type status priority fleetId createdBy { email } } }
"""
TRANSITIONS = """
query($id: ID!, $first: Int, $after: String) {
  task(id: $id) {
    transitions(first: $first, after: $after) {
      edges { cursor node { from to actor reason } }
      pageInfo { hasNextPage hasPreviousPage endCursor }
    }
  }
}
"""
ANALYTICS = """
query($fleet: ID!, $range: TimeRange!) {
  taskAnalytics(fleetId: $fleet, timeRange: $range) {
    fleetId total byStatus { status count } byType { type count } completionRate
    meanDurationSeconds p50DurationSeconds p95DurationSeconds failureReasons { reason count }
  }
}
"""


async def dispatch(api: Api, name: str, **extra: Any) -> dict[str, Any]:
    body = await api.data(
        DISPATCH, {"fleetId": DEV_FLEET, "input": {"name": name, "type": "CUSTOM", **extra}}
    )
    payload: dict[str, Any] = body["dispatchTask"]
    return payload


async def snapshot(api: Api) -> list[Any]:
    db = api.resources.db
    return [
        [tuple(r) for r in await db.fetch("SELECT id, status, priority FROM tasks ORDER BY id")],
        [tuple(r) for r in await db.fetch("SELECT id, status, robot_id FROM runs ORDER BY id")],
        await db.fetchval("SELECT count(*) FROM task_transitions"),
    ]


async def test_an_urgent_task_preempts_the_newest_low_task_when_no_robot_is_free(api: Api) -> None:
    await api.data(CANCEL, {"id": PICK_TASK})
    low_a = await dispatch(api, "Sweep A", priority="LOW")
    low_b = await dispatch(api, "Sweep B", priority="LOW")
    assert {low_a["assignments"][0]["robotId"], low_b["assignments"][0]["robotId"]} == {ALPHA, BETA}
    # A HIGH task preempts nothing: it waits.
    high = await dispatch(api, "Inspect", priority="HIGH")
    assert high["task"]["status"] == "PENDING" and high["assignments"] == []

    urgent = await dispatch(api, "Fire drill", priority="URGENT")

    assert urgent["task"]["status"] == "ASSIGNED"
    assert urgent["assignments"] == [{"robotId": low_b["assignments"][0]["robotId"]}]
    db = api.resources.db
    assert await db.fetchval("SELECT status::text FROM tasks WHERE id = $1", low_b["task"]["id"]) == "PENDING"
    assert (
        await db.fetchval("SELECT status::text FROM tasks WHERE id = $1", low_a["task"]["id"]) == "ASSIGNED"
    )
    reason = await db.fetchval(
        "SELECT failure_reason FROM runs WHERE task_id = $1 AND status = 'CANCELLED'", low_b["task"]["id"]
    )
    assert reason == f"preempted by URGENT task {urgent['task']['id']}"
    robot = urgent["assignments"][0]["robotId"]
    told = await db.fetch("SELECT type FROM robot_commands WHERE robot_id = $1 ORDER BY issued_at, id", robot)
    assert [r["type"] for r in told][-2:] == ["CANCEL_TASK", "DISPATCH_TASK"]


async def test_a_task_scheduled_in_the_future_waits_in_the_queue(api: Api) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    payload = await dispatch(api, "Night shift", scheduledAt=later)
    assert payload["task"]["status"] == "PENDING" and payload["assignments"] == []
    beta = await api.resources.db.fetchval("SELECT status::text FROM robots WHERE id = $1", BETA)
    assert beta == "IDLE"


async def test_priority_changes_reorder_the_queue_and_are_audited(api: Api) -> None:
    queued = await dispatch(api, "Take BETA")  # BETA now busy, ALPHA runs the seeded task
    assert queued["assignments"] == [{"robotId": BETA}]
    first = await dispatch(api, "First in line")
    second = await dispatch(api, "Second in line")
    changed = (await api.data(PRIORITY, {"id": second["task"]["id"], "p": "HIGH"}))["updateTaskPriority"]
    assert changed["priority"] == "HIGH"
    # BETA frees up: the HIGH task is assigned before the older NORMAL one.
    await api.data(CANCEL, {"id": queued["task"]["id"]})
    db = api.resources.db

    async def assigned() -> Any:
        return await db.fetchval("SELECT task_id FROM runs WHERE robot_id = $1 AND status = 'PENDING'", BETA)

    assert await eventually(assigned, 20, "the HIGH task dispatched") == second["task"]["id"]
    assert await db.fetchval("SELECT status::text FROM tasks WHERE id = $1", first["task"]["id"]) == "PENDING"
    audit = await db.fetchrow("SELECT changes FROM audit_logs WHERE action = 'updateTaskPriority'")
    assert audit["changes"] == {"from": "NORMAL", "to": "HIGH"}


async def test_reassigning_moves_the_task_to_another_robot_and_tells_the_first(api: Api) -> None:
    moved = (await api.data(REASSIGN, {"id": PICK_TASK, "robot": BETA}))["reassignTask"]
    assert moved["status"] == "ASSIGNED"
    assert moved["assignedRobots"] == [{"id": BETA}]
    # Runs by start time, not started last.
    assert [(r["robotId"], r["status"]) for r in moved["runs"]] == [(ALPHA, "CANCELLED"), (BETA, "PENDING")]
    db = api.resources.db
    assert await db.fetchval("SELECT status::text FROM robots WHERE id = $1", ALPHA) == "IDLE"
    told = await db.fetchval("SELECT type FROM robot_commands WHERE robot_id = $1", ALPHA)
    assert told == "CANCEL_TASK"
    page = (await api.data(TRANSITIONS, {"id": PICK_TASK}))["task"]["transitions"]
    [node] = [e["node"] for e in page["edges"]]
    assert (node["from"], node["to"], node["actor"]) == ("IN_PROGRESS", "ASSIGNED", "SMITH")
    assert node["reason"] == f"reassigned to robot {BETA} from robot {ALPHA}"


async def test_reassigning_refuses_busy_foreign_and_unknown_robots_and_ended_tasks(api: Api) -> None:
    before = await snapshot(api)
    busy = await api.execute(REASSIGN, {"id": PICK_TASK, "robot": ALPHA})  # ALPHA runs it already
    assert busy["errors"][0]["extensions"]["code"] == "CONFLICT"
    foreign = await api.execute(REASSIGN, {"id": PICK_TASK, "robot": WAREHOUSE_BOT_02})
    assert (foreign["errors"][0]["extensions"]["code"], foreign["errors"][0]["extensions"].get("field")) == (
        "BAD_USER_INPUT",
        "robotId",
    )
    unknown = "70000000-0000-4000-8000-000000000099"
    assert await api.error_codes(REASSIGN, {"id": PICK_TASK, "robot": unknown}) == ["NOT_FOUND"]
    assert await api.error_codes(REASSIGN, {"id": AISLE_TASK, "robot": BETA}) == ["CONFLICT"]
    assert await api.error_codes(REASSIGN, {"id": "nope", "robot": BETA}) == ["BAD_USER_INPUT"]
    assert await snapshot(api) == before


async def test_invalid_transitions_and_bad_input_change_nothing(api: Api) -> None:
    before = await snapshot(api)
    assert await api.error_codes(PRIORITY, {"id": AISLE_TASK, "p": "HIGH"}) == ["CONFLICT"]
    assert await api.error_codes(CANCEL, {"id": AISLE_TASK}) == ["CONFLICT"]
    assert await api.error_codes(PRIORITY, {"id": PICK_TASK, "p": "SOON"}) == ["BAD_USER_INPUT"]
    missing = "80000000-0000-4000-8000-000000000099"
    assert await api.error_codes(PRIORITY, {"id": missing, "p": "HIGH"}) == ["NOT_FOUND"]
    assert await api.error_codes(CLONE, {"id": missing}) == ["NOT_FOUND"]
    assert await api.error_codes(TRANSITIONS, {"id": PICK_TASK, "after": "bogus"}) == ["BAD_USER_INPUT"]
    assert await api.error_codes(TRANSITIONS, {"id": PICK_TASK, "first": 999}) == ["BAD_USER_INPUT"]
    assert await snapshot(api) == before


async def test_assign_task_guards_reassigning_and_reprioritising(api: Api) -> None:
    before = await snapshot(api)
    assert await api.error_codes(PRIORITY, {"id": PICK_TASK, "p": "HIGH"}, as_=DEMO) == ["FORBIDDEN"]
    assert await api.error_codes(REASSIGN, {"id": PICK_TASK, "robot": BETA}, as_=DEMO) == ["FORBIDDEN"]
    assert await snapshot(api) == before
    granted = await api.create_smith("planner@sepulki.com", "SMITH", permissions=["ASSIGN_TASK"])
    changed = await api.data(PRIORITY, {"id": PICK_TASK, "p": "HIGH"}, as_=granted)
    assert changed["updateTaskPriority"]["priority"] == "HIGH"


async def test_a_clone_is_a_new_pending_task_queued_in_the_same_fleet(api: Api) -> None:
    clone = (await api.data(CLONE, {"id": AISLE_TASK}, as_=DEMO))["cloneTask"]
    assert clone["id"] != AISLE_TASK
    assert (clone["name"], clone["type"], clone["status"]) == ("Inspect aisle 3", "INSPECTION", "PENDING")
    assert clone["createdBy"] == {"email": "demo@sepulki.com"}
    source = await api.resources.db.fetchval("SELECT fleet_id FROM tasks WHERE id = $1", AISLE_TASK)
    assert clone["fleetId"] == source


async def test_the_transition_log_pages_forward_with_cursors(api: Api) -> None:
    payload = await dispatch(api, "Paged")
    task_id = payload["task"]["id"]
    await api.data(CANCEL, {"id": task_id})
    first = (await api.data(TRANSITIONS, {"id": task_id, "first": 2}))["task"]["transitions"]
    assert [(e["node"]["from"], e["node"]["to"]) for e in first["edges"]] == [
        (None, "PENDING"),
        ("PENDING", "ASSIGNED"),
    ]
    assert first["pageInfo"]["hasNextPage"] is True and first["pageInfo"]["hasPreviousPage"] is False
    rest = await api.data(TRANSITIONS, {"id": task_id, "first": 2, "after": first["pageInfo"]["endCursor"]})
    page = rest["task"]["transitions"]
    assert [(e["node"]["from"], e["node"]["to"]) for e in page["edges"]] == [("ASSIGNED", "CANCELLED")]
    assert page["pageInfo"]["hasNextPage"] is False and page["pageInfo"]["hasPreviousPage"] is True


async def test_task_analytics_counts_rates_durations_and_failure_reasons(api: Api) -> None:
    db = api.resources.db
    now = datetime.now(UTC)
    rows = [("COMPLETED", 10), ("COMPLETED", 20), ("COMPLETED", 30), ("FAILED", None), ("CANCELLED", None)]
    for status, seconds in rows:
        task_id = await db.fetchval(
            "INSERT INTO tasks (name, type, status, fleet_id, created_by, started_at, completed_at) "
            "SELECT 'T', 'PATROL', $1::task_status, $2, id, $3::timestamptz, "
            "       $3::timestamptz + make_interval(secs => $4) "
            "FROM smiths WHERE email = 'admin@sepulki.com' RETURNING id",
            status,
            DEV_FLEET,
            now - timedelta(minutes=5),
            float(seconds or 0),
        )
        if status == "FAILED":
            await db.execute(
                "INSERT INTO runs (task_id, robot_id, status, failure_reason, attempt) VALUES "
                "($1, $2, 'FAILED', 'gripper jammed', 1), ($1, $2, 'FAILED', 'gripper jammed', 2), "
                "($1, $2, 'FAILED', 'robot went OFFLINE', 3)",
                task_id,
                BETA,
            )
    window = {
        "start": (now - timedelta(hours=1)).isoformat(),
        "end": (now + timedelta(minutes=1)).isoformat(),
    }
    with api.count_statements() as statements:
        body = await api.data(ANALYTICS, {"fleet": DEV_FLEET, "range": window})
    report = body["taskAnalytics"]
    counts = {c["status"]: c["count"] for c in report["byStatus"]}
    # The seeded tasks of the fleet were created now too: PICK (IN_PROGRESS) and GEARBOX (PENDING).
    assert counts == {
        "PENDING": 1,
        "ASSIGNED": 0,
        "IN_PROGRESS": 1,
        "COMPLETED": 3,
        "FAILED": 1,
        "CANCELLED": 1,
    }
    assert report["total"] == 7
    assert {t["type"]: t["count"] for t in report["byType"]}["PATROL"] == 5
    assert report["completionRate"] == 0.6
    assert report["meanDurationSeconds"] == 20.0 and report["p50DurationSeconds"] == 20.0
    assert abs(report["p95DurationSeconds"] - 29.0) < 1e-6
    assert report["failureReasons"] == [
        {"reason": "gripper jammed", "count": 2},
        {"reason": "robot went OFFLINE", "count": 1},
    ]
    # One statement reads the tasks, whatever their number (besides the viewer's own reads).
    assert len([s for s in statements if "tasks" in s]) == 1, statements
    bad = {"start": window["end"], "end": window["start"]}
    assert await api.error_codes(ANALYTICS, {"fleet": DEV_FLEET, "range": bad}) == ["BAD_USER_INPUT"]
    unknown = "40000000-0000-4000-8000-000000000099"
    assert await api.error_codes(ANALYTICS, {"fleet": unknown, "range": window}) == ["NOT_FOUND"]
