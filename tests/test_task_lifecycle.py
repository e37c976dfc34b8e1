"""Tasks run to completion, driven by robots over real Mosquitto: DISPATCH_TASK acks start runs,
TASK_PROGRESS / TASK_COMPLETED / TASK_FAILED reports on robots/{id}/events move them on, a robot
going OFFLINE hands its run over, and a queued task waits for the next free robot."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.settings import Settings
from tests.live import Live, serving
from tests.seed_ids import ALPHA, BETA, DEV_FLEET, PICK_TASK
from tests.servers import MosquittoServer
from tests.support import Api, eventually, with_broker
from tests.taskbot import taskbot
from tests.test_ingest import clear_retained_status
from tests.wsclient import subscribe

DISPATCH = """
mutation($fleetId: ID!, $input: TaskInput!) {
  dispatchTask(fleetId: $fleetId, input: $input) {
    task { id status } assignments { robotId } errors { code }
  }
}
"""
CANCEL = "mutation($id: ID!) { cancelTask(taskId: $id) { id status } }"
TASK = """
query($id: ID!) {
  task(id: $id) {
    id status startedAt completedAt failureReason progress { percent step }
    runs { robotId status attempt failureReason progress { percent step } metrics { duration } }
    transitions { edges { node { from to actor reason robotId smith { email } } } }
  }
}
"""
HISTORY = "query($r: ID!) { taskHistory(robotId: $r) { id status } }"
UPDATES = """
subscription($fleetId: ID) { taskUpdates(fleetId: $fleetId) { id status progress { percent step } } }
"""


@pytest.fixture
async def live(settings: Settings, mosquitto: MosquittoServer) -> AsyncIterator[Live]:
    """The app under uvicorn with Mosquitto: ingest, command dispatcher and a fast task worker."""
    # The shared broker keeps the robots' retained statuses other tests left (a simulator powered
    # down publishes OFFLINE): the ingest would apply them on subscribing, as it should in production.
    await clear_retained_status(mosquitto.url, [ALPHA, BETA])
    async with serving(with_broker(settings, mosquitto, task_worker_interval_s=0.1)) as running:
        yield running


async def dispatch(api: Api, name: str, **extra: Any) -> dict[str, Any]:
    body = await api.data(
        DISPATCH, {"fleetId": DEV_FLEET, "input": {"name": name, "type": "CUSTOM", **extra}}
    )
    task: dict[str, Any] = body["dispatchTask"]["task"]
    return task


async def task_of(api: Api, task_id: str) -> dict[str, Any]:
    task: dict[str, Any] = (await api.data(TASK, {"id": task_id}))["task"]
    return task


async def status_becomes(api: Api, task_id: str, status: str, within: float = 30) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        task = await task_of(api, task_id)
        return task if task["status"] == status else None

    found: dict[str, Any] = await eventually(check, within, f"task {task_id} {status}")
    return found


async def test_a_queued_task_runs_when_a_robot_frees_up_and_subscribers_see_every_step(
    live: Live, mosquitto: MosquittoServer
) -> None:
    api = live.api
    token = await api.token("admin@sepulki.com", "admin123")
    async with (
        taskbot(mosquitto.url, ALPHA, BETA) as bot,
        subscribe(live.ws_url, UPDATES, {"fleetId": DEV_FLEET}, init={"authToken": token}) as updates,
    ):
        # Given Alpha busy with its seeded task and Beta taking the first new one,
        first = await dispatch(api, "Sort bolts")
        assert first["status"] == "ASSIGNED"
        # when a second task is dispatched, every robot is busy: it waits in the fleet's queue.
        second = await dispatch(api, "Sort nuts")
        assert second["status"] == "PENDING"

        order = await bot.command(BETA)
        assert order["params"]["taskId"] == first["id"]
        bot.accept(BETA, order)
        await status_becomes(api, first["id"], "IN_PROGRESS")
        bot.complete(BETA, order)
        await status_becomes(api, first["id"], "COMPLETED")

        # Beta is free again: the queued task goes to it, runs, reports 50 % and completes.
        order = await bot.command(BETA)
        assert order["params"]["taskId"] == second["id"]
        bot.accept(BETA, order)
        await status_becomes(api, second["id"], "IN_PROGRESS")
        bot.progress(BETA, order, 50, "halfway")

        async def halfway() -> dict[str, Any] | None:
            task = await task_of(api, second["id"])
            return task if task["progress"] == {"percent": 50.0, "step": "halfway"} else None

        midway = await eventually(halfway, 30, "progress 50 %")
        assert midway["runs"][0]["progress"] == {"percent": 50.0, "step": "halfway"}
        bot.complete(BETA, order, {"duration": 42})
        done = await status_becomes(api, second["id"], "COMPLETED")

        seen: list[tuple[str, str, float | None]] = []
        while not seen or seen[-1][:2] != (second["id"], "COMPLETED"):
            event = (await updates.next(30))["taskUpdates"]
            seen.append((event["id"], event["status"], (event["progress"] or {}).get("percent")))

    steps = [(status, percent) for task_id, status, percent in seen if task_id == second["id"]]
    assert steps == [
        ("PENDING", None),
        ("ASSIGNED", None),
        ("IN_PROGRESS", None),
        ("IN_PROGRESS", 50.0),
        ("COMPLETED", 100.0),
    ]
    assert done["startedAt"] is not None and done["completedAt"] is not None
    assert done["runs"] == [
        {
            "robotId": BETA,
            "status": "COMPLETED",
            "attempt": 1,
            "failureReason": None,
            "progress": {"percent": 100.0, "step": "halfway"},
            "metrics": {"duration": 42},
        }
    ]
    log = [e["node"] for e in done["transitions"]["edges"]]
    assert [(t["from"], t["to"], t["actor"]) for t in log] == [
        (None, "PENDING", "SMITH"),
        ("PENDING", "ASSIGNED", "SYSTEM"),
        ("ASSIGNED", "IN_PROGRESS", "ROBOT"),
        ("IN_PROGRESS", "COMPLETED", "ROBOT"),
    ]
    assert log[0]["smith"] == {"email": "admin@sepulki.com"} and log[2]["robotId"] == BETA
    history = (await api.data(HISTORY, {"r": BETA}))["taskHistory"]
    assert [t["id"] for t in history] == [second["id"], first["id"]]
    audited = await api.resources.db.fetchval(
        "SELECT count(*) FROM audit_logs WHERE action = 'robotTaskReport' AND resource_id = $1", second["id"]
    )
    assert audited == 2
    beta = await api.resources.db.fetchval("SELECT status::text FROM robots WHERE id = $1", BETA)
    assert beta == "IDLE"


async def test_a_failed_run_is_retried_on_another_robot_with_the_reason_kept(
    live: Live, mosquitto: MosquittoServer
) -> None:
    api = live.api
    await api.data(CANCEL, {"id": PICK_TASK})  # both robots free
    async with taskbot(mosquitto.url, ALPHA, BETA) as bot:
        task = await dispatch(api, "Weld seam")
        [first_robot] = [r for r in (ALPHA, BETA) if r in await assigned_to(api, task["id"])]
        other = BETA if first_robot == ALPHA else ALPHA
        order = await bot.command(first_robot)
        bot.accept(first_robot, order)
        await status_becomes(api, task["id"], "IN_PROGRESS")
        bot.fail(first_robot, order, "gripper jammed")
        # Requeued and handed to the robot that has not failed it.
        retry = await bot.command(other)
        assert retry["params"]["taskId"] == task["id"]
        bot.accept(other, retry)
        bot.complete(other, retry)
        done = await status_becomes(api, task["id"], "COMPLETED")
    assert [(r["robotId"], r["status"], r["attempt"], r["failureReason"]) for r in done["runs"]] == [
        (first_robot, "FAILED", 1, "gripper jammed"),
        (other, "COMPLETED", 2, None),
    ]
    reasons = [e["node"]["reason"] for e in done["transitions"]["edges"] if e["node"]["to"] == "PENDING"]
    assert reasons[-1] == "gripper jammed; retrying (attempt 2 of 3)"


async def test_a_robot_going_offline_mid_run_hands_its_task_over(
    live: Live, mosquitto: MosquittoServer
) -> None:
    api = live.api
    await api.data(CANCEL, {"id": PICK_TASK})
    async with taskbot(mosquitto.url, ALPHA, BETA) as bot:
        task = await dispatch(api, "Carry crate")
        [robot] = await assigned_to(api, task["id"])
        other = BETA if robot == ALPHA else ALPHA
        order = await bot.command(robot)
        bot.accept(robot, order)
        await status_becomes(api, task["id"], "IN_PROGRESS")
        # However it happens (its Last Will, a status message, the inactivity timeout), the robot's
        # status becomes OFFLINE in the database; here as the inactivity timeout writes it.
        await api.resources.db.execute("UPDATE robots SET status = 'OFFLINE' WHERE id = $1", robot)
        handed = await bot.command(other, within=30)
        assert handed["params"]["taskId"] == task["id"]
        current = await status_becomes(api, task["id"], "ASSIGNED")
    assert [(r["robotId"], r["status"], r["failureReason"]) for r in current["runs"]] == [
        (robot, "FAILED", "robot went OFFLINE"),
        (other, "PENDING", None),
    ]


async def test_a_refused_dispatch_fails_the_run_and_the_last_attempt_fails_the_task(
    settings: Settings, mosquitto: MosquittoServer
) -> None:
    tuned = with_broker(settings, mosquitto, task_worker_interval_s=0.1, task_max_attempts=1)
    await clear_retained_status(mosquitto.url, [ALPHA, BETA])
    async with Api.running(tuned) as api, taskbot(mosquitto.url, BETA) as bot:
        task = await dispatch(api, "Paint hull")
        order = await bot.command(BETA)
        bot.ack(BETA, order["commandId"], "RECEIVED")
        bot.ack(BETA, order["commandId"], "FAILED", "no paint loaded")
        failed = await status_becomes(api, task["id"], "FAILED")
    assert failed["failureReason"] == "no paint loaded"
    assert [(r["status"], r["failureReason"]) for r in failed["runs"]] == [("FAILED", "no paint loaded")]


async def assigned_to(api: Api, task_id: str) -> list[str]:
    rows = await api.resources.db.fetch(
        "SELECT robot_id FROM runs WHERE task_id = $1 AND status IN ('PENDING', 'RUNNING')", task_id
    )
    return [r["robot_id"] for r in rows]
