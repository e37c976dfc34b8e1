"""Operators send commands to robots; robots receive them over MQTT and acknowledge them.

Real Mosquitto (MQTT 5) and PostgreSQL: the app's dispatcher publishes each QUEUED command QoS 1
to robots/{id}/commands, a test robot (a gmqtt client) receives it, and its acks move the
command on. The sweeper expires what was never sent and times out what was never acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import gmqtt
import pytest
from gmqtt.mqtt.constants import MQTTv50

from app import commands
from app.core.channels import channels
from app.infra import db
from app.settings import Settings
from app.workers.commands import Sweeper
from tests.live import serving
from tests.seed_ids import ALPHA, BETA, DEV_FLEET, PICK_RUN, PICK_TASK, WAREHOUSE_BOT_01
from tests.servers import MosquittoServer
from tests.support import ADMIN, Api, eventually, with_broker
from tests.wsclient import subscribe

ADMIN_ID_SQL = "SELECT id FROM smiths WHERE email = 'admin@sepulki.com'"

FIELDS = """
  id robotId type params state detail taskId issuedAt expiresAt sentAt receivedAt completedAt
  issuedBy { email }
"""
SEND = f"""
mutation($robotId: ID!, $type: String!, $params: JSON, $ttl: Int) {{
  sendRobotCommand(robotId: $robotId, type: $type, params: $params, ttlSeconds: $ttl) {{ {FIELDS} }}
}}
"""
COMMAND = f"query($id: ID!) {{ robotCommand(id: $id) {{ {FIELDS} }} }}"
COMMANDS = f"""
query($robotId: ID!, $limit: Int) {{ robotCommands(robotId: $robotId, limit: $limit) {{ {FIELDS} }} }}
"""
UPDATES = f"""
subscription($robotId: ID, $after: String) {{
  commandUpdates(robotId: $robotId, after: $after) {{ {FIELDS} }}
}}
"""
EMERGENCY_STOP = "mutation($fleetId: ID!) { emergencyStop(fleetId: $fleetId) { id status } }"
DISPATCH = """
mutation($fleetId: ID!, $input: TaskInput!) {
  dispatchTask(fleetId: $fleetId, input: $input) {
    task { id name } assignments { robotId } errors { code message }
  }
}
"""


class TestRobot:
    """A robot on the broker: receives robots/{id}/commands (QoS 1) and publishes acks."""

    __test__ = False

    def __init__(self, robot_ids: list[str]) -> None:
        self.robot_ids = robot_ids
        self.received: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.client = gmqtt.Client(f"test-robot-{uuid.uuid4().hex[:12]}")
        self.client.on_message = self._on_message
        self._subscribed = asyncio.Event()
        self.client.on_subscribe = lambda *_: self._subscribed.set()

    def _on_message(self, _client: Any, topic: str, payload: bytes, _qos: int, _props: Any) -> int:
        self.received.put_nowait((topic, json.loads(payload)))
        return 0

    async def connect(self, url: str) -> None:
        parts = urlsplit(url)
        await self.client.connect(parts.hostname, parts.port, version=MQTTv50)
        self.client.subscribe([gmqtt.Subscription(f"robots/{r}/commands", qos=1) for r in self.robot_ids])
        await asyncio.wait_for(self._subscribed.wait(), 5)

    async def next(self, timeout: float = 5) -> tuple[str, dict[str, Any]]:  # noqa: ASYNC109
        return await asyncio.wait_for(self.received.get(), timeout)

    def ack(self, robot_id: str, command_id: str, state: str, detail: str | None = None) -> None:
        body = {"commandId": command_id, "state": state} | ({"detail": detail} if detail else {})
        self.client.publish(f"robots/{robot_id}/commands/ack", json.dumps(body), qos=1)


@contextlib.asynccontextmanager
async def robot_on(url: str, *robot_ids: str) -> AsyncIterator[TestRobot]:
    robot = TestRobot(list(robot_ids))
    await robot.connect(url)
    try:
        yield robot
    finally:
        await robot.client.disconnect()


async def row(api: Api, command_id: str) -> dict[str, Any]:
    return dict(await api.resources.db.fetchrow("SELECT * FROM robot_commands WHERE id = $1", command_id))


async def state_becomes(api: Api, command_id: str, state: str, within: float = 5) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        current = await row(api, command_id)
        return current if current["state"] == state else None

    result: dict[str, Any] = await eventually(check, within, f"command {command_id} {state}")
    return result


async def send(api: Api, robot_id: str, type: str = "MOVE_TO", **variables: Any) -> dict[str, Any]:
    data = await api.data(SEND, {"robotId": robot_id, "type": type, **variables})
    command: dict[str, Any] = data["sendRobotCommand"]
    return command


@pytest.fixture
async def commanding(settings: Settings, mosquitto: MosquittoServer) -> AsyncIterator[Api]:
    """The app connected to Mosquitto: its dispatcher (and the ingest, once present) running."""
    async with Api.running(with_broker(settings, mosquitto)) as running:
        yield running


async def test_admin_sends_a_command_and_devbot_alpha_receives_it_over_mqtt(
    commanding: Api, mosquitto: MosquittoServer
) -> None:
    async with robot_on(mosquitto.url, ALPHA) as robot:
        command = await send(commanding, ALPHA, params={"x": 1.5, "y": -2}, ttl=60)
        topic, message = await robot.next()
    assert command["state"] == "QUEUED"
    assert command["robotId"] == ALPHA
    assert command["issuedBy"] == {"email": ADMIN[0]}
    assert topic == f"robots/{ALPHA}/commands"
    assert message["commandId"] == command["id"]
    assert message["type"] == "MOVE_TO"
    assert message["params"] == {"x": 1.5, "y": -2}
    issued = datetime.fromisoformat(message["issuedAt"])
    assert (datetime.fromisoformat(message["expiresAt"]) - issued).total_seconds() == 60
    stored = await state_becomes(commanding, command["id"], "SENT")
    assert stored["sent_at"] is not None
    seen = (await commanding.data(COMMAND, {"id": command["id"]}))["robotCommand"]
    assert seen["state"] == "SENT" and seen["sentAt"] is not None
    listed = (await commanding.data(COMMANDS, {"robotId": ALPHA}))["robotCommands"]
    assert [c["id"] for c in listed] == [command["id"]]
    audit = await commanding.resources.db.fetchrow(
        "SELECT * FROM audit_logs WHERE action = 'sendRobotCommand' AND resource_id = $1", command["id"]
    )
    assert audit["changes"]["type"] == "MOVE_TO"
    logged = await commanding.resources.db.fetch(
        "SELECT payload->>'state' AS state FROM event_log WHERE channels @> $1 ORDER BY id",
        [channels.commands(ALPHA)],
    )
    assert [e["state"] for e in logged] == ["QUEUED", "SENT"]


async def test_robot_acks_over_mqtt_move_the_command_to_received_then_succeeded(
    commanding: Api, mosquitto: MosquittoServer
) -> None:
    """Needs the ingest pipeline (app/ingest) in the app: it consumes robots/{id}/commands/ack."""
    async with robot_on(mosquitto.url, ALPHA) as robot:
        command = await send(commanding, ALPHA, type="DOCK")
        _, message = await robot.next()
        await state_becomes(commanding, command["id"], "SENT")
        robot.ack(ALPHA, message["commandId"], "RECEIVED")
        received = await state_becomes(commanding, command["id"], "RECEIVED")
        robot.ack(ALPHA, message["commandId"], "SUCCEEDED", "docked at charger 2")
        done = await state_becomes(commanding, command["id"], "SUCCEEDED")
    assert received["received_at"] is not None
    assert done["detail"] == "docked at charger 2"
    assert done["completed_at"] >= done["received_at"] >= done["sent_at"]
    seen = (await commanding.data(COMMAND, {"id": command["id"]}))["robotCommand"]
    assert seen["state"] == "SUCCEEDED" and seen["detail"] == "docked at charger 2"


async def test_acks_apply_only_in_order_and_only_from_the_commands_robot(api: Api) -> None:
    """apply_acks as the ingest calls it, in its batch transaction."""
    alpha = await send(api, ALPHA, type="BEEP")
    beta = await send(api, BETA, type="BEEP")
    now = datetime.now(UTC)

    async def apply(*acks: dict[str, Any]) -> list[dict[str, Any]]:
        async with api.resources.db.acquire() as conn, conn.transaction():
            return await commands.apply_acks(conn, [{"received_at": now, "detail": None} | a for a in acks])

    # Another robot's ack, an unknown command, a malformed id and an unknown state change nothing.
    ignored = await apply(
        {"robot_id": BETA, "command_id": alpha["id"], "state": "RECEIVED"},
        {"robot_id": ALPHA, "command_id": str(uuid.uuid4()), "state": "RECEIVED"},
        {"robot_id": ALPHA, "command_id": "not-a-uuid", "state": "RECEIVED"},
        {"robot_id": ALPHA, "command_id": alpha["id"], "state": "DONE"},
    )
    assert ignored == []
    assert (await row(api, alpha["id"]))["state"] == "QUEUED"
    # QUEUED -> SUCCEEDED skips a step: refused. RECEIVED then SUCCEEDED in one batch: both apply.
    assert await apply({"robot_id": ALPHA, "command_id": alpha["id"], "state": "SUCCEEDED"}) == []
    changed = await apply(
        {"robot_id": ALPHA, "command_id": alpha["id"], "state": "SUCCEEDED", "detail": "beeped"},
        {"robot_id": ALPHA, "command_id": alpha["id"], "state": "RECEIVED"},
        {"robot_id": BETA, "command_id": beta["id"], "state": "RECEIVED"},
    )
    assert [(c["id"], c["state"]) for c in changed] == [
        (alpha["id"], "RECEIVED"),
        (beta["id"], "RECEIVED"),
        (alpha["id"], "SUCCEEDED"),
    ]
    event_ids = [c["event_id"] for c in changed]
    assert event_ids == sorted(set(event_ids)), "one event per change, in order"
    done = await row(api, alpha["id"])
    assert done["state"] == "SUCCEEDED" and done["detail"] == "beeped"
    assert done["received_at"] == now and done["completed_at"] == now
    # A redelivered or late ack does not reopen a finished command.
    late = await apply(
        {"robot_id": ALPHA, "command_id": alpha["id"], "state": "FAILED"},
        {"robot_id": ALPHA, "command_id": alpha["id"], "state": "RECEIVED"},
    )
    assert late == []
    assert (await row(api, alpha["id"]))["state"] == "SUCCEEDED"
    failed = await apply({"robot_id": BETA, "command_id": beta["id"], "state": "FAILED", "detail": "jam"})
    assert [(c["state"], c["detail"]) for c in failed] == [("FAILED", "jam")]
    logged = await api.resources.db.fetch(
        "SELECT payload->>'state' AS state FROM event_log WHERE payload->>'id' = $1 ORDER BY id", alpha["id"]
    )
    assert [e["state"] for e in logged] == ["QUEUED", "RECEIVED", "SUCCEEDED"]


async def test_a_command_nobody_acknowledges_times_out(
    settings: Settings, mosquitto: MosquittoServer
) -> None:
    async with (
        Api.running(with_broker(settings, mosquitto, command_ack_timeout_s=1)) as api,
        robot_on(mosquitto.url, BETA) as robot,
    ):
        command = await send(api, BETA, type="LIFT")
        await robot.next()
        sent = await state_becomes(api, command["id"], "SENT")
        timed_out = await state_becomes(api, command["id"], "TIMED_OUT", within=5)
    assert (timed_out["completed_at"] - sent["sent_at"]).total_seconds() >= 1
    assert timed_out["received_at"] is None


async def test_a_command_that_cannot_be_sent_in_time_expires(api: Api) -> None:
    # No broker configured: nothing sends, so the command waits QUEUED until its TTL runs out.
    command = await send(api, WAREHOUSE_BOT_01, type="SCAN", ttl=1)
    expired = await state_becomes(api, command["id"], "EXPIRED", within=5)
    assert expired["sent_at"] is None
    assert expired["completed_at"] >= expired["expires_at"]
    seen = (await api.data(COMMAND, {"id": command["id"]}))["robotCommand"]
    assert seen["state"] == "EXPIRED" and seen["completedAt"] is not None


async def test_emergency_stop_sends_each_robot_of_the_fleet_an_emergency_stop_then_drops_its_run(
    commanding: Api, mosquitto: MosquittoServer
) -> None:
    async with robot_on(mosquitto.url, ALPHA, BETA, WAREHOUSE_BOT_01) as robots:
        stopped = await commanding.data(EMERGENCY_STOP, {"fleetId": DEV_FLEET})
        received = [await robots.next() for _ in range(3)]
        with pytest.raises(TimeoutError):
            await robots.next(timeout=0.5)  # the warehouse robot is in another fleet
    assert stopped["emergencyStop"]["status"] == "MAINTENANCE"
    by_robot: dict[str, list[dict[str, Any]]] = {}
    for topic, message in received:
        by_robot.setdefault(topic, []).append(message)
    # Alpha was running the seeded pick task: it is halted first, then told to drop that run.
    assert [m["type"] for m in by_robot[f"robots/{ALPHA}/commands"]] == ["EMERGENCY_STOP", "CANCEL_TASK"]
    assert [m["type"] for m in by_robot[f"robots/{BETA}/commands"]] == ["EMERGENCY_STOP"]
    stops = [m for _, m in received if m["type"] == "EMERGENCY_STOP"]
    assert {m["params"]["fleetId"] for m in stops} == {DEV_FLEET}
    cancel = by_robot[f"robots/{ALPHA}/commands"][1]
    assert cancel["params"] == {"taskId": PICK_TASK, "runId": PICK_RUN}
    rows = await commanding.resources.db.fetch(
        "SELECT robot_id, type FROM robot_commands ORDER BY robot_id, type DESC"
    )
    assert [(r["robot_id"], r["type"]) for r in rows] == [
        (ALPHA, "EMERGENCY_STOP"),
        (ALPHA, "CANCEL_TASK"),
        (BETA, "EMERGENCY_STOP"),
    ]
    for _, command in received:
        await state_becomes(commanding, command["commandId"], "SENT")


async def test_dispatching_a_task_queues_it_as_a_command_for_the_assigned_robot(api: Api) -> None:
    task_input = {
        "name": "Sort bin 7",
        "type": "PICK_AND_PLACE",
        "priority": "HIGH",
        "parameters": {"bin": 7},
    }
    result = (await api.data(DISPATCH, {"fleetId": DEV_FLEET, "input": task_input}))["dispatchTask"]
    task_id, robot_id = result["task"]["id"], result["assignments"][0]["robotId"]
    listed = (await api.data(COMMANDS, {"robotId": robot_id}))["robotCommands"]
    assert len(listed) == 1
    command = listed[0]
    assert command["type"] == "DISPATCH_TASK"
    assert command["taskId"] == task_id
    assert command["state"] == "QUEUED"
    run_id = await api.resources.db.fetchval("SELECT id FROM runs WHERE task_id = $1", task_id)
    assert command["params"] == {
        "taskId": task_id,
        "runId": run_id,
        "name": "Sort bin 7",
        "type": "PICK_AND_PLACE",
        "parameters": {"bin": 7},
        "priority": "HIGH",
    }


async def test_the_dispatcher_keeps_sending_past_the_brokers_in_flight_window(
    commanding: Api, mosquitto: MosquittoServer
) -> None:
    """300 commands at once: far more unacknowledged QoS 1 publishes than gmqtt has packet ids
    for (the broker's receive maximum); every one arrives and is marked SENT."""
    robot_ids = [ALPHA, BETA, WAREHOUSE_BOT_01]
    async with robot_on(mosquitto.url, *robot_ids) as robots:
        async with commanding.resources.db.acquire() as conn, conn.transaction():
            for n in range(100):
                await commands.enqueue(conn, robot_ids, "STEP", {"n": n}, issued_by=None, ttl_s=60)
            await conn.execute("SELECT pg_notify('robot_commands', '')")
        received = [await robots.next(timeout=10) for _ in range(300)]
    assert len({m["commandId"] for _, m in received}) == 300

    async def all_sent() -> bool:
        states = await commanding.resources.db.fetch(
            "SELECT state::text, count(*) FROM robot_commands GROUP BY 1"
        )
        return {r["state"]: r["count"] for r in states} == {"SENT": 300}

    await eventually(all_sent, 5, "all 300 SENT")


async def test_commands_queued_while_the_broker_is_down_go_out_once_it_is_up(settings: Settings) -> None:
    broker = MosquittoServer()  # its port is chosen, the broker not started yet
    try:
        async with Api.running(with_broker(settings, broker)) as api:
            command = await send(api, ALPHA, type="RESUME")
            await asyncio.sleep(1)
            assert (await row(api, command["id"]))["state"] == "QUEUED"
            await asyncio.to_thread(broker.start)
            sent = await state_becomes(api, command["id"], "SENT", within=8)
        assert sent["sent_at"] > sent["issued_at"]
    finally:
        broker.close()


async def test_invalid_commands_are_refused_as_bad_user_input(api: Api) -> None:
    for variables in (
        {"type": ""},
        {"type": "move_to"},
        {"type": "MOVE TO"},
        {"type": "X" * 65},
        {"type": "MOVE_TO", "params": [1, 2]},
        {"type": "MOVE_TO", "params": "go"},
        {"type": "MOVE_TO", "ttl": 0},
        {"type": "MOVE_TO", "ttl": 86401},
    ):
        codes = await api.error_codes(SEND, {"robotId": ALPHA, **variables})
        assert codes == ["BAD_USER_INPUT"], variables
    assert await api.error_codes(SEND, {"robotId": "robot-1", "type": "MOVE_TO"}) == ["BAD_USER_INPUT"]
    assert await api.error_codes(SEND, {"robotId": str(uuid.uuid4()), "type": "MOVE_TO"}) == ["NOT_FOUND"]
    assert await api.error_codes(COMMANDS, {"robotId": "nope"}) == ["BAD_USER_INPUT"]
    assert await api.resources.db.fetchval("SELECT count(*) FROM robot_commands") == 0
    ok = await send(api, ALPHA, type="X" * 64, ttl=86400)
    assert ok["state"] == "QUEUED"


async def test_a_smith_may_read_commands_but_not_send_them(api: Api) -> None:
    smith = await api.create_smith("apprentice@sepulki.com", "SMITH")
    sent = await send(api, ALPHA, type="BEEP")
    assert await api.error_codes(SEND, {"robotId": ALPHA, "type": "BEEP"}, as_=smith) == ["FORBIDDEN"]
    by_name = COMMANDS.replace("issuedBy { email }", "issuedBy { name }")
    listed = (await api.data(by_name, {"robotId": ALPHA}, as_=smith))["robotCommands"]
    assert [(c["id"], c["issuedBy"]) for c in listed] == [(sent["id"], {"name": "System Administrator"})]
    # The admin's email is not the smith's to read (docs/authorization.md).
    refused = await api.execute(COMMANDS, {"robotId": ALPHA}, as_=smith)
    assert refused["data"]["robotCommands"][0]["issuedBy"] == {"email": None}
    assert [(e["extensions"]["code"], e["path"][-1]) for e in refused["errors"]] == [("FORBIDDEN", "email")]
    assert await api.resources.db.fetchval("SELECT count(*) FROM robot_commands") == 1
    anonymous = await api.error_codes(COMMANDS, {"robotId": ALPHA}, as_=None)
    assert anonymous == ["UNAUTHENTICATED"]


async def test_only_one_sweeper_acts_when_several_replicas_run(api: Api) -> None:
    # The app's own sweeper holds the advisory lock; a second replica's stands by.
    await eventually(lambda: _leading(api.components.command_sweeper), 5, "first sweeper leads")
    second = Sweeper(api.resources)
    try:
        await second.tick()
        assert not second.leader
    finally:
        await second.close()


async def _leading(sweeper: Sweeper) -> bool:
    return sweeper.leader


async def test_operator_watches_a_command_move_through_its_states(
    settings: Settings, mosquitto: MosquittoServer
) -> None:
    async with serving(with_broker(settings, mosquitto)) as live:
        api, ws_url = live.api, live.ws_url
        init = {"authorization": f"Bearer {await api.token(*ADMIN)}"}
        async with (
            robot_on(mosquitto.url, ALPHA) as robot,
            subscribe(ws_url, UPDATES, {"robotId": ALPHA}, init=init) as updates,
            subscribe(ws_url, UPDATES, {}, init=init) as everything,
        ):
            await eventually(lambda: _listening(api, channels.commands(ALPHA)), 5, "subscribed to the robot")
            await eventually(lambda: _listening(api, channels.COMMANDS_ALL), 5, "subscribed to all")
            await send(api, WAREHOUSE_BOT_01, type="IGNORED_HERE")
            command = await send(api, ALPHA, type="OPEN_GRIPPER")
            await robot.next()
            # Published by the mutation and by the dispatcher: their order on the bus may vary.
            first, second = (await updates.next())["commandUpdates"], (await updates.next())["commandUpdates"]
            queued, sent = sorted([first, second], key=lambda c: c["state"] != "QUEUED")
            async with api.resources.db.acquire() as conn, conn.transaction():
                acked = await commands.apply_acks(
                    conn,
                    [{"robot_id": ALPHA, "command_id": command["id"], "state": "RECEIVED"}],
                )
            await commands.publish(api.resources.events, acked)
            received = (await updates.next())["commandUpdates"]
            other = (await everything.next())["commandUpdates"]
        # A client that was away replays the committed changes from event_log, in order.
        async with subscribe(ws_url, UPDATES, {"robotId": ALPHA, "after": "0"}, init=init) as replay:
            replayed = [(await replay.next())["commandUpdates"] for _ in range(3)]
    assert (queued["id"], queued["state"]) == (command["id"], "QUEUED")
    assert queued["issuedBy"] == {"email": ADMIN[0]}
    assert (sent["state"], received["state"]) == ("SENT", "RECEIVED")
    assert sent["sentAt"] is not None and received["receivedAt"] is not None
    assert (other["robotId"], other["type"]) == (WAREHOUSE_BOT_01, "IGNORED_HERE")
    assert [(c["id"], c["state"]) for c in replayed] == [
        (command["id"], "QUEUED"),
        (command["id"], "SENT"),
        (command["id"], "RECEIVED"),
    ]


async def _listening(api: Api, channel: str) -> bool:
    return api.resources.events.subscribers(channel) >= 1


async def test_sepulki_worker_dispatches_commands_without_the_api(
    database_url: str, mosquitto: MosquittoServer
) -> None:
    env = os.environ | {
        "SEPULKI_DATABASE_URL": database_url,
        "SEPULKI_MQTT_URL": mosquitto.url,
        "SEPULKI_MQTT_CLIENT_ID": f"worker-{uuid.uuid4().hex[:8]}",
        "SEPULKI_ENV": "test",
    }
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.cli", "worker", env=env, stderr=asyncio.subprocess.PIPE
    )
    pool = await db.create_pool(database_url, min_size=1, max_size=2)
    try:
        async with robot_on(mosquitto.url, BETA) as robot:
            async with pool.acquire() as conn, conn.transaction():
                (queued,) = await commands.enqueue(
                    conn, [BETA], "HONK", {}, issued_by=await conn.fetchval(ADMIN_ID_SQL), ttl_s=30
                )
            _, message = await robot.next(timeout=15)
        assert message["commandId"] == queued["id"]

        async def sent() -> bool:
            return (
                await pool.fetchval("SELECT state::text FROM robot_commands WHERE id = $1", queued["id"])
                == "SENT"
            )

        await eventually(sent, 5, "worker marked it SENT")
    finally:
        await pool.close()
        if worker.returncode is None:
            worker.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(worker.communicate(), 15)
    assert worker.returncode == 0, stderr.decode()[-2000:]
