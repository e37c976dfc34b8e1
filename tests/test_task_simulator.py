"""The simulated robots execute DISPATCH_TASK as the MQTT contract says a robot does: they ack
it, report TASK_PROGRESS through their steps, and after the configured time send TASK_COMPLETED
with metrics, or TASK_FAILED with a reason; CANCEL_TASK stops a task. Over real Mosquitto, with
an operator's client in place of the service (the service's side of these messages is
tests/test_task_lifecycle.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import gmqtt
from gmqtt.mqtt.constants import MQTTv50

from app.simulator import SimConfig, Simulator
from app.simulator.robots import SimRobot
from tests.seed_ids import BETA, DEV_FLEET
from tests.servers import MosquittoServer


class Operator:
    """Sends commands to robots/{id}/commands and collects the robot's acks and events."""

    def __init__(self) -> None:
        self.client = gmqtt.Client(f"operator-{uuid.uuid4().hex[:8]}")
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.client.on_message = self._on_message
        self._subscribed = asyncio.Event()
        self.client.on_subscribe = lambda *_: self._subscribed.set()

    def _on_message(self, _client: Any, topic: str, payload: bytes, _qos: int, _props: Any) -> int:
        with contextlib.suppress(ValueError):
            self.messages.append((topic.rsplit("/", 1)[-1], json.loads(payload)))
        return 0

    def send(self, robot_id: str, type: str, params: dict[str, Any]) -> str:
        command_id = str(uuid.uuid4())
        now = datetime.now(UTC)
        body = {"commandId": command_id, "type": type, "params": params, "issuedAt": now.isoformat(),
                "expiresAt": (now + timedelta(minutes=5)).isoformat()}  # fmt: skip
        self.client.publish(f"robots/{robot_id}/commands", json.dumps(body), qos=1)
        return command_id

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [m for topic, m in self.messages if topic == "events" and m.get("type") == kind]

    async def until(self, check: Any, within: float = 15) -> None:
        deadline = time.monotonic() + within
        while not check():
            assert time.monotonic() < deadline, self.messages[-5:]
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def operating(
    mosquitto: MosquittoServer, failure_rate: float, duration_s: float
) -> AsyncIterator[Operator]:
    operator = Operator()
    parts = urlsplit(mosquitto.url)
    await operator.client.connect(parts.hostname, parts.port, version=MQTTv50)
    operator.client.subscribe(
        [
            gmqtt.Subscription(f"robots/{BETA}/events", qos=1),
            gmqtt.Subscription(f"robots/{BETA}/commands/ack", qos=1),
        ]
    )
    await asyncio.wait_for(operator._subscribed.wait(), 5)
    config = SimConfig(mqtt_url=mosquitto.url, protocol=5, hz=2, seed=3, task_duration_s=duration_s,
                       task_failure_rate=failure_rate)  # fmt: skip
    robot = SimRobot(BETA, "DevBot-Beta", DEV_FLEET, "IDLE", 90.0, None)
    try:
        async with Simulator([robot], config):
            await asyncio.sleep(0.5)  # connected and subscribed
            yield operator
    finally:
        await operator.client.disconnect()


async def test_a_simulated_robot_reports_progress_then_completes_a_task(mosquitto: MosquittoServer) -> None:
    async with operating(mosquitto, failure_rate=0.0, duration_s=1.0) as operator:
        started = time.monotonic()
        command_id = operator.send(BETA, "DISPATCH_TASK", {"taskId": "t-1", "runId": "r-1"})
        await operator.until(lambda: operator.events("TASK_COMPLETED"))
        took = time.monotonic() - started
    acks = [m["state"] for topic, m in operator.messages if topic == "ack" and m["commandId"] == command_id]
    assert acks[:2] == ["RECEIVED", "SUCCEEDED"]
    progress = [(e["data"]["percent"], e["data"]["step"]) for e in operator.events("TASK_PROGRESS")]
    assert [p for p, _ in progress] == [0, 25, 50, 75]
    [done] = operator.events("TASK_COMPLETED")
    assert done["data"]["taskId"] == "t-1" and done["data"]["runId"] == "r-1"
    assert 0.9 <= done["data"]["metrics"]["accuracy"] <= 1.0
    assert 0.7 < took < 5  # about the configured second, not a minute
    assert not operator.events("TASK_FAILED")


async def test_a_simulated_robot_that_fails_a_task_says_why(mosquitto: MosquittoServer) -> None:
    async with operating(mosquitto, failure_rate=1.0, duration_s=1.0) as operator:
        operator.send(BETA, "DISPATCH_TASK", {"taskId": "t-2", "runId": "r-2"})
        await operator.until(lambda: operator.events("TASK_FAILED"))
    [failed] = operator.events("TASK_FAILED")
    assert failed["data"]["reason"] in (
        "gripper lost the part",
        "path blocked by an obstacle",
        "sensor reading out of range",
    )
    assert failed["severity"] == "WARNING" and not operator.events("TASK_COMPLETED")


async def test_cancel_task_stops_a_simulated_robot_mid_task(mosquitto: MosquittoServer) -> None:
    async with operating(mosquitto, failure_rate=0.0, duration_s=4.0) as operator:
        operator.send(BETA, "DISPATCH_TASK", {"taskId": "t-3", "runId": "r-3"})
        await operator.until(lambda: operator.events("TASK_PROGRESS"))
        cancel_id = operator.send(BETA, "CANCEL_TASK", {"taskId": "t-3", "runId": "r-3"})
        await operator.until(
            lambda: any(
                t == "ack" and m["commandId"] == cancel_id and m["state"] == "SUCCEEDED"
                for t, m in operator.messages
            )
        )
        await asyncio.sleep(4.5)
    assert not operator.events("TASK_COMPLETED") and not operator.events("TASK_FAILED")
