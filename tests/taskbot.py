"""A scripted robot for task stories: a gmqtt client (MQTT 5, real Mosquitto) that receives its
robots' commands and publishes what a robot executing a task would: command acks and TASK_*
reports on robots/{id}/events (docs/mqtt-contract.md)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import gmqtt
from gmqtt.mqtt.constants import MQTTv50

_seq = itertools.count(int(time.time() * 1000))


class TaskBot:
    """Receives robots/{id}/commands for its robots; `command` waits for the next of a type."""

    __test__ = False

    def __init__(self, robot_ids: list[str]) -> None:
        self.robot_ids = robot_ids
        self.commands: dict[str, asyncio.Queue[dict[str, Any]]] = {r: asyncio.Queue() for r in robot_ids}
        self.client = gmqtt.Client(f"taskbot-{uuid.uuid4().hex[:12]}")
        self.client.on_message = self._on_message
        self._subscribed = asyncio.Event()
        self.client.on_subscribe = lambda *_: self._subscribed.set()

    def _on_message(self, _client: Any, topic: str, payload: bytes, _qos: int, _props: Any) -> int:
        robot_id = topic.split("/")[1]
        self.commands[robot_id].put_nowait(json.loads(payload))
        return 0

    async def connect(self, url: str) -> None:
        parts = urlsplit(url)
        await self.client.connect(parts.hostname, parts.port, version=MQTTv50)
        self.client.subscribe([gmqtt.Subscription(f"robots/{r}/commands", qos=1) for r in self.robot_ids])
        await asyncio.wait_for(self._subscribed.wait(), 5)

    async def command(self, robot_id: str, type: str = "DISPATCH_TASK", within: float = 30) -> dict[str, Any]:
        """The next command of `type` the robot receives (others are skipped)."""
        deadline = time.monotonic() + within
        while True:
            message = await asyncio.wait_for(self.commands[robot_id].get(), deadline - time.monotonic())
            if message["type"] == type:
                return message

    def ack(self, robot_id: str, command_id: str, state: str, detail: str | None = None) -> None:
        body = {"commandId": command_id, "state": state} | ({"detail": detail} if detail else {})
        self.client.publish(f"robots/{robot_id}/commands/ack", json.dumps(body), qos=1)

    def accept(self, robot_id: str, command: dict[str, Any]) -> None:
        self.ack(robot_id, command["commandId"], "RECEIVED")
        self.ack(robot_id, command["commandId"], "SUCCEEDED", "task accepted")

    def report(self, robot_id: str, kind: str, data: dict[str, Any], severity: str = "INFO") -> None:
        body = {
            "seq": next(_seq),
            "ts": datetime.now(UTC).isoformat(),
            "type": kind,
            "severity": severity,
            "message": kind.lower(),
            "data": data,
        }
        self.client.publish(f"robots/{robot_id}/events", json.dumps(body), qos=1)

    def progress(self, robot_id: str, command: dict[str, Any], percent: float, step: str) -> None:
        self.report(robot_id, "TASK_PROGRESS", _ids(command) | {"percent": percent, "step": step})

    def complete(self, robot_id: str, command: dict[str, Any], metrics: dict[str, Any] | None = None) -> None:
        self.report(robot_id, "TASK_COMPLETED", _ids(command) | {"metrics": metrics or {"duration": 1}})

    def fail(self, robot_id: str, command: dict[str, Any], reason: str) -> None:
        self.report(robot_id, "TASK_FAILED", _ids(command) | {"reason": reason}, "WARNING")


def _ids(command: dict[str, Any]) -> dict[str, Any]:
    return {"taskId": command["params"]["taskId"], "runId": command["params"]["runId"]}


@contextlib.asynccontextmanager
async def taskbot(url: str, *robot_ids: str) -> AsyncIterator[TaskBot]:
    bot = TaskBot(list(robot_ids))
    await bot.connect(url)
    try:
        yield bot
    finally:
        await bot.client.disconnect()
