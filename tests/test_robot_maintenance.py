"""A technician plans maintenance of a robot, one-off or on a schedule, completes it, and sees what
is due next; completing a scheduled record plans its successor. Real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.seed_ids import ALPHA, BETA, MISSING_ROBOT
from tests.support import DEMO, Api

RECORD_FIELDS = (
    "id robotId kind description status dueAt overdue completedAt notes schedule { id intervalDays }"
)
CREATE = f"""
mutation($input: MaintenanceRecordInput!) {{ createMaintenanceRecord(input: $input) {{ {RECORD_FIELDS} }} }}
"""
SCHEDULE = """
mutation($input: MaintenanceScheduleInput!) {
  createMaintenanceSchedule(input: $input) { id robotId kind intervalDays createdAt }
}
"""
COMPLETE = f"""
mutation($id: ID!, $notes: String) {{ completeMaintenance(id: $id, notes: $notes) {{ {RECORD_FIELDS} }} }}
"""
CANCEL = f"""
mutation($id: ID!, $notes: String) {{ cancelMaintenance(id: $id, notes: $notes) {{ {RECORD_FIELDS} }} }}
"""
RECORDS = f"""
query($id: ID!, $status: MaintenanceStatus) {{
  maintenanceRecords(robotId: $id, status: $status) {{ {RECORD_FIELDS} }}
}}
"""
ROBOT = f"""
query($id: ID!) {{
  robot(id: $id) {{
    nextMaintenance {{ {RECORD_FIELDS} }}
    upcomingMaintenance {{ id kind dueAt }}
    maintenanceSchedules {{ id kind intervalDays }}
  }}
}}
"""


def iso(dt: datetime) -> str:
    return dt.isoformat()


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def create(api: Api, **input: Any) -> dict[str, Any]:
    record: dict[str, Any] = (await api.data(CREATE, {"input": {"robotId": ALPHA, **input}}))[
        "createMaintenanceRecord"
    ]
    return record


async def test_a_scheduled_maintenance_plans_its_successor_when_completed(api: Api) -> None:
    # Given a weekly battery check starting tomorrow and an overdue one-off lubrication.
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    schedule = (
        await api.data(
            SCHEDULE,
            {
                "input": {
                    "robotId": ALPHA,
                    "kind": "BATTERY_CHECK",
                    "intervalDays": 7,
                    "firstDueAt": iso(tomorrow),
                }
            },
        )
    )["createMaintenanceSchedule"]
    assert schedule["intervalDays"] == 7 and schedule["kind"] == "BATTERY_CHECK"
    overdue = await create(
        api, kind="LUBRICATION", description="joints 2-4", dueAt=iso(datetime.now(UTC) - timedelta(hours=2))
    )
    assert overdue["status"] == "SCHEDULED" and overdue["overdue"] is True and overdue["schedule"] is None

    robot = (await api.data(ROBOT, {"id": ALPHA}))["robot"]
    assert robot["nextMaintenance"]["id"] == overdue["id"]
    assert [m["kind"] for m in robot["upcomingMaintenance"]] == ["LUBRICATION", "BATTERY_CHECK"]
    assert robot["maintenanceSchedules"] == [
        {"id": schedule["id"], "kind": "BATTERY_CHECK", "intervalDays": 7}
    ]

    # When both are done.
    done = (await api.data(COMPLETE, {"id": overdue["id"], "notes": "greased"}))["completeMaintenance"]
    assert done["status"] == "COMPLETED" and done["notes"] == "greased" and done["overdue"] is False
    battery = (await api.data(ROBOT, {"id": ALPHA}))["robot"]["nextMaintenance"]
    assert battery["kind"] == "BATTERY_CHECK" and battery["schedule"]["id"] == schedule["id"]
    finished = (await api.data(COMPLETE, {"id": battery["id"]}))["completeMaintenance"]

    # Then the schedule's next check is due a week after this completion, and the rest is history.
    following = (await api.data(ROBOT, {"id": ALPHA}))["robot"]["nextMaintenance"]
    assert following["kind"] == "BATTERY_CHECK" and following["id"] != battery["id"]
    assert parse(following["dueAt"]) - parse(finished["completedAt"]) == timedelta(days=7)
    completed = (await api.data(RECORDS, {"id": ALPHA, "status": "COMPLETED"}))["maintenanceRecords"]
    assert {r["id"] for r in completed} == {overdue["id"], battery["id"]}
    everything = (await api.data(RECORDS, {"id": ALPHA}))["maintenanceRecords"]
    assert everything[0]["id"] == following["id"]  # open ones first
    assert (await api.data(RECORDS, {"id": BETA}))["maintenanceRecords"] == []
    assert (await api.data(ROBOT, {"id": BETA}))["robot"]["nextMaintenance"] is None


async def test_a_schedule_without_a_first_date_is_due_one_interval_from_now(api: Api) -> None:
    before = datetime.now(UTC)
    await api.data(SCHEDULE, {"input": {"robotId": BETA, "kind": "INSPECTION", "intervalDays": 30}})
    due = parse((await api.data(ROBOT, {"id": BETA}))["robot"]["nextMaintenance"]["dueAt"])
    assert before + timedelta(days=30) <= due <= datetime.now(UTC) + timedelta(days=30)


async def test_finished_records_cannot_be_completed_again_and_bad_input_changes_nothing(api: Api) -> None:
    record = await create(api, kind="CLEANING")
    cancelled = (await api.data(CANCEL, {"id": record["id"], "notes": "not needed"}))["cancelMaintenance"]
    assert cancelled["status"] == "CANCELLED" and cancelled["completedAt"] is None
    assert await api.error_codes(COMPLETE, {"id": record["id"]}) == ["CONFLICT"]
    assert await api.error_codes(CANCEL, {"id": record["id"]}) == ["CONFLICT"]
    assert await api.error_codes(COMPLETE, {"id": MISSING_ROBOT}) == ["NOT_FOUND"]
    db = api.resources.db
    counts = (
        await db.fetchval("SELECT count(*) FROM maintenance_records"),
        await db.fetchval("SELECT count(*) FROM maintenance_schedules"),
    )
    bad = [
        (CREATE, {"input": {"robotId": ALPHA, "kind": " "}}, "BAD_USER_INPUT"),
        (CREATE, {"input": {"robotId": ALPHA, "kind": "x" * 101}}, "BAD_USER_INPUT"),
        (CREATE, {"input": {"robotId": MISSING_ROBOT, "kind": "CLEANING"}}, "NOT_FOUND"),
        (CREATE, {"input": {"robotId": "nope", "kind": "CLEANING"}}, "BAD_USER_INPUT"),
        (SCHEDULE, {"input": {"robotId": ALPHA, "kind": "CHECK", "intervalDays": 0}}, "BAD_USER_INPUT"),
        (SCHEDULE, {"input": {"robotId": ALPHA, "kind": "CHECK", "intervalDays": 4000}}, "BAD_USER_INPUT"),
        (SCHEDULE, {"input": {"robotId": MISSING_ROBOT, "kind": "CHECK", "intervalDays": 7}}, "NOT_FOUND"),
        (COMPLETE, {"id": "nope"}, "BAD_USER_INPUT"),
    ]
    for query, variables, code in bad:
        assert await api.error_codes(query, variables) == [code], variables
    after = (
        await db.fetchval("SELECT count(*) FROM maintenance_records"),
        await db.fetchval("SELECT count(*) FROM maintenance_schedules"),
    )
    assert after == counts
    # Planning maintenance is managing robots: a plain smith may look, not plan.
    assert await api.error_codes(CREATE, {"input": {"robotId": ALPHA, "kind": "CLEANING"}}, as_=DEMO) == [
        "FORBIDDEN"
    ]
