"""An emergency stop ends a fleet's work through the task lifecycle: a task in progress is
cancelled by the operator with the reason "emergency stop", in its transition log, on
`taskUpdates` and in the audit; its robot is halted and told to drop the run; after the release
the robots report back and the fleet's queue runs again. Real Mosquitto, ingest, command
dispatcher and task worker; the robots are scripted over MQTT 5."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from app.core.channels import channels
from app.settings import Settings
from tests.live import Live, serving
from tests.seed_ids import (
    ADMIN_ID,
    ALPHA,
    BETA,
    DEV_FLEET,
    GEARBOX_TASK,
    PATROL_TASK,
    PICK_RUN,
    PICK_TASK,
    WAREHOUSE_BOT_01,
    WAREHOUSE_FLEET,
)
from tests.servers import MosquittoServer
from tests.support import Api, eventually, with_broker
from tests.taskbot import TaskBot, taskbot
from tests.test_ingest import clear_retained_status
from tests.wsclient import subscribe

DISPATCH = """
mutation($fleetId: ID!, $input: TaskInput!) {
  dispatchTask(fleetId: $fleetId, input: $input) { task { id status } assignments { robotId } }
}
"""
STOP = "mutation($id: ID!) { emergencyStop(fleetId: $id) { id status emergencyStoppedAt activeTask { id } } }"
RELEASE = "mutation($id: ID!) { releaseEmergencyStop(fleetId: $id) { id emergencyStoppedAt } }"
TASK = """
query($id: ID!) {
  task(id: $id) {
    id status completedAt
    runs { id robotId status failureReason }
    transitions { edges { node { from to actor reason smith { email } } } }
  }
}
"""
AUDIT = """
query($filter: AuditLogFilter) {
  auditLogs(filter: $filter) { edges { node { action resourceType resourceId changes smith { email } } } }
}
"""
UPDATES = "subscription($fleetId: ID) { taskUpdates(fleetId: $fleetId) { id status } }"
ADMIN_EMAIL = "admin@sepulki.com"


@pytest.fixture
async def live(settings: Settings, mosquitto: MosquittoServer) -> AsyncIterator[Live]:
    """The app under uvicorn with Mosquitto: ingest, command dispatcher and a fast task worker."""
    # The shared broker keeps the robots' retained statuses other tests left (a simulator powered
    # down publishes OFFLINE): the ingest would apply them on subscribing, as it should in production.
    await clear_retained_status(mosquitto.url, [ALPHA, BETA])
    async with serving(with_broker(settings, mosquitto, task_worker_interval_s=0.1)) as running:
        yield running


async def dispatch(api: Api, name: str) -> dict[str, Any]:
    body = await api.data(DISPATCH, {"fleetId": DEV_FLEET, "input": {"name": name, "type": "CUSTOM"}})
    task: dict[str, Any] = body["dispatchTask"]["task"]
    return task


async def task_of(api: Api, task_id: str) -> dict[str, Any]:
    task: dict[str, Any] = (await api.data(TASK, {"id": task_id}))["task"]
    return task


async def status_becomes(api: Api, task_id: str, status: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        task = await task_of(api, task_id)
        return task if task["status"] == status else None

    found: dict[str, Any] = await eventually(check, 30, f"task {task_id} {status}")
    return found


def report_status(bot: TaskBot, robot_id: str, status: str) -> None:
    """What a robot does after acting on RESUME (not retained: the broker outlives this test)."""
    body = {"status": status, "ts": datetime.now(UTC).isoformat()}
    bot.client.publish(f"robots/{robot_id}/status", json.dumps(body), qos=1)


def obey(bot: TaskBot, robot_id: str, command: dict[str, Any]) -> None:
    bot.ack(robot_id, command["commandId"], "SUCCEEDED")


async def test_an_emergency_stop_cancels_the_task_in_progress_by_its_lifecycle_and_release_reopens_the_queue(
    live: Live, mosquitto: MosquittoServer
) -> None:
    api = live.api
    token = await api.token(ADMIN_EMAIL, "admin123")
    async with (
        taskbot(mosquitto.url, ALPHA, BETA) as bot,
        subscribe(live.ws_url, UPDATES, {"fleetId": DEV_FLEET}, init={"authToken": token}) as updates,
    ):
        await live.listening(channels.tasks(DEV_FLEET))
        # Given Alpha on its seeded pick task and Beta at work on a new one,
        task = await dispatch(api, "Sort bolts")
        order = await bot.command(BETA)
        assert order["params"]["taskId"] == task["id"]
        bot.accept(BETA, order)
        await status_becomes(api, task["id"], "IN_PROGRESS")

        # when the operator stops the fleet,
        stopped = (await api.data(STOP, {"id": DEV_FLEET}))["emergencyStop"]
        assert stopped["status"] == "MAINTENANCE" and stopped["emergencyStoppedAt"]
        assert stopped["activeTask"] is None

        # each robot is halted first, then told to drop the run the stop ended.
        for robot_id, run_id, task_id in ((BETA, order["params"]["runId"], task["id"]),
                                          (ALPHA, PICK_RUN, PICK_TASK)):  # fmt: skip
            halt = await bot.command(robot_id, "EMERGENCY_STOP")
            assert halt["params"] == {"fleetId": DEV_FLEET}
            drop = await bot.command(robot_id, "CANCEL_TASK")
            assert drop["params"] == {"taskId": task_id, "runId": run_id}
            obey(bot, robot_id, halt)
            obey(bot, robot_id, drop)
        # A report of the cancelled run arriving late changes nothing.
        bot.complete(BETA, order)

        # Then the task is CANCELLED, by the operator, for the emergency stop, its run with it;
        cancelled = await task_of(api, task["id"])
        assert cancelled["status"] == "CANCELLED" and cancelled["completedAt"]
        assert [(r["robotId"], r["status"], r["failureReason"]) for r in cancelled["runs"]] == [
            (BETA, "CANCELLED", "emergency stop")
        ]
        log = [e["node"] for e in cancelled["transitions"]["edges"]]
        assert log[-1] == {
            "from": "IN_PROGRESS",
            "to": "CANCELLED",
            "actor": "SMITH",
            "reason": "emergency stop",
            "smith": {"email": ADMIN_EMAIL},
        }
        # subscribers of the fleet's tasks saw it (after the commit, as every transition),
        seen: list[tuple[str, str]] = []
        while not {(task["id"], "CANCELLED"), (PICK_TASK, "CANCELLED")} <= set(seen):
            event = (await updates.next(30))["taskUpdates"]
            seen.append((event["id"], event["status"]))
        mine = [status for task_id, status in seen if task_id == task["id"]]
        assert mine == ["PENDING", "ASSIGNED", "IN_PROGRESS", "CANCELLED"]

        # and the audit has it, per task and for the fleet.
        rows = (await api.data(AUDIT, {"filter": {"action": "emergencyStop"}}))["auditLogs"]["edges"]
        audited = {(n["resourceType"], n["resourceId"]): n for n in (e["node"] for e in rows)}
        assert audited[("Task", task["id"])]["changes"] == {
            "fleetId": DEV_FLEET,
            "from": "IN_PROGRESS",
            "to": "CANCELLED",
            "reason": "emergency stop",
            "runId": cancelled["runs"][0]["id"],
        }
        assert audited[("Task", task["id"])]["smith"] == {"email": ADMIN_EMAIL}
        fleet_row = audited[("Fleet", DEV_FLEET)]["changes"]
        assert {task["id"], PICK_TASK} <= set(fleet_row["tasks"])
        assert set(fleet_row["runs"]) == {PICK_RUN, cancelled["runs"][0]["id"]}

        # While the fleet is stopped new work waits in its queue: no robot is free.
        queued = await dispatch(api, "Sort nuts")
        assert queued["status"] == "PENDING"

        # After the release the robots act on RESUME and report back, and the queue runs again.
        released = (await api.data(RELEASE, {"id": DEV_FLEET}))["releaseEmergencyStop"]
        assert released["emergencyStoppedAt"] is None
        for robot_id in (ALPHA, BETA):
            obey(bot, robot_id, await bot.command(robot_id, "RESUME"))
            report_status(bot, robot_id, "IDLE")
        assigned = await status_becomes(api, queued["id"], "ASSIGNED")
        robot = assigned["runs"][0]["robotId"]
        work = await bot.command(robot)
        assert work["params"]["taskId"] == queued["id"]
        bot.accept(robot, work)
        bot.complete(robot, work)
        await status_becomes(api, queued["id"], "COMPLETED")

    # The late report of the cancelled run moved nothing.
    after = await task_of(api, task["id"])
    assert after["status"] == "CANCELLED" and after["transitions"] == cancelled["transitions"]
    assert [r["status"] for r in after["runs"]] == ["CANCELLED"]


async def test_the_stop_ends_every_open_task_of_the_fleet_each_with_its_own_log_audit_and_event(
    api: Api,
) -> None:
    db, events = api.resources.db, api.resources.events
    # Given the warehouse robot holding the warehouse's patrol moved into the dev fleet mid-task,
    await db.execute("UPDATE robots SET fleet_id = $1 WHERE id = $2", DEV_FLEET, WAREHOUSE_BOT_01)
    async with (
        events.subscribe(channels.tasks(DEV_FLEET)) as dev_tasks,
        events.subscribe(channels.tasks(WAREHOUSE_FLEET)) as warehouse_tasks,
    ):
        # when the dev fleet is stopped,
        await api.data(STOP, {"id": DEV_FLEET})
        dev_seen = [await asyncio.wait_for(anext(dev_tasks), 5) for _ in range(3)]
        warehouse_seen = await asyncio.wait_for(anext(warehouse_tasks), 5)

    # then its running, queued and borrowed tasks are all CANCELLED by the operator, each logged,
    ended = {PICK_TASK: "IN_PROGRESS", GEARBOX_TASK: "PENDING", PATROL_TASK: "ASSIGNED"}
    log = await db.fetch(
        "SELECT task_id, from_status::text, to_status::text, actor_type, smith_id, run_id, reason"
        " FROM task_transitions WHERE to_status = 'CANCELLED' ORDER BY task_id"
    )
    assert [tuple(r) for r in log] == [
        (task_id, before, "CANCELLED", "SMITH", ADMIN_ID, PICK_RUN if task_id == PICK_TASK else None,
         "emergency stop")
        for task_id, before in sorted(ended.items())
    ]  # fmt: skip
    # audited one by one,
    audited = await db.fetch(
        "SELECT resource_id, changes FROM audit_logs"
        " WHERE action = 'emergencyStop' AND resource_type = 'Task' ORDER BY resource_id"
    )
    assert {r["resource_id"]: r["changes"]["from"] for r in audited} == ended
    # and streamed: the borrowed task on its own fleet's channel and on the stopped fleet's.
    assert {e["id"]: e["status"] for e in dev_seen} == dict.fromkeys(ended, "CANCELLED")
    assert (warehouse_seen["id"], warehouse_seen["status"]) == (PATROL_TASK, "CANCELLED")
    # Only the run that was open is dropped by its robot; the stopped robots stay stopped.
    sent = await db.fetch("SELECT robot_id, type, params FROM robot_commands WHERE type = 'CANCEL_TASK'")
    assert [(r["robot_id"], r["params"]) for r in sent] == [(ALPHA, {"taskId": PICK_TASK, "runId": PICK_RUN})]
    robots = await db.fetch("SELECT status::text FROM robots WHERE fleet_id = $1", DEV_FLEET)
    assert {r["status"] for r in robots} == {"MAINTENANCE"}
