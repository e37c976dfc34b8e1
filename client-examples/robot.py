"""A robot on MQTT 5 with gmqtt: the reference for robot makers (the contract is docs/ingest.md).

- Client id = the robot's id, clean start off and a session expiry: the broker keeps the robot's
  subscription while it is away, and the commands sent meanwhile arrive when it is back.
- Telemetry on robots/{id}/telemetry, QoS 1, with a `seq` that never repeats: it counts up from
  the boot time in milliseconds, so a restarted robot never reuses one (the ingest keys samples by
  (robot id, seq) and drops a repeat as a duplicate).
- Status on robots/{id}/status, retained (a new subscriber learns it at once); the Last Will is a
  retained OFFLINE, stamped with the time of the connection it guards, which the broker publishes
  when the robot vanishes without saying goodbye. A deliberate stop publishes OFFLINE itself.
- Commands from robots/{id}/commands (QoS 1, at least once): RECEIVED at once, then SUCCEEDED or
  FAILED with a detail, on robots/{id}/commands/ack. A repeated commandId is answered again, not
  run twice.

Every line it prints is one JSON object.

    SEPULKI_MQTT_URL=mqtt://127.0.0.1:1883 SEPULKI_ROBOT_ID=<id> .venv/bin/python client-examples/robot.py

SEPULKI_MQTT_URL: mqtt:// or mqtts:// (TLS), with user:password@ where the broker has accounts (a
robot's account is its API key: username = the key's prefix, password = the key).
SEPULKI_MQTT_PROTOCOL: 5 (default), or 4 for an MQTT 3.1.1 broker such as the embedded one of
`sepulki dev` (no session expiry there: the session is kept until the robot connects clean).
SEPULKI_ROBOT_HZ: telemetry messages per second (1). SEPULKI_ROBOT_SESSION_EXPIRY_S: how long the
broker keeps the session of a robot that is away (3600). SIGINT or SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import signal
import ssl
import sys
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import gmqtt
from gmqtt.mqtt.constants import MQTTv50, MQTTv311

MQTT_URL = os.environ.get("SEPULKI_MQTT_URL", "mqtt://127.0.0.1:1883")
ROBOT_ID = os.environ.get("SEPULKI_ROBOT_ID", "70000000-0000-4000-8000-000000000001")  # seed: DevBot-Alpha
HZ = float(os.environ.get("SEPULKI_ROBOT_HZ", "1"))
PROTOCOL = int(os.environ.get("SEPULKI_MQTT_PROTOCOL", "5"))
SESSION_EXPIRY_S = int(os.environ.get("SEPULKI_ROBOT_SESSION_EXPIRY_S", "3600"))
KEEPALIVE_S = 30
# Command ids already answered, with their last ack, so a redelivered command is not run again.
REMEMBERED_COMMANDS = 1000


def now() -> str:
    """RFC 3339 in UTC with milliseconds: the `ts` every message carries."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def say(step: str, **fields: Any) -> None:
    print(json.dumps({"step": step, **fields}), flush=True)


class Robot:
    def __init__(self, robot_id: str) -> None:
        self.id = robot_id
        self.status = "IDLE"
        self.battery = 100.0
        self.x = self.y = self.heading = 0.0
        # Grows across restarts: boot time in ms, + 1 per message (at most 1000 messages a second).
        self.seq = int(time.time() * 1000)
        self.answered: dict[str, dict[str, Any]] = {}
        self.connected = asyncio.Event()
        properties = {"session_expiry_interval": SESSION_EXPIRY_S} if PROTOCOL == 5 else {}
        self.client = gmqtt.Client(
            robot_id,
            clean_session=False,  # clean start off: resume the session the broker kept
            optimistic_acknowledgement=False,  # PUBACK a command once it is acknowledged RECEIVED
            will_message=self.will(),
            **properties,
        )
        self.client.set_config({"reconnect_retries": -1, "reconnect_delay": 2})  # -1: for ever
        self.client.on_connect = self.on_connect
        self.client.on_disconnect = self.on_disconnect
        self.client.on_message = self.on_message

    def topic(self, stream: str) -> str:
        return f"robots/{self.id}/{stream}"

    def will(self) -> gmqtt.Message:
        # A status without seq is keyed by its bytes: an OFFLINE identical to an earlier one would
        # be dropped as a duplicate, so each connection's Will carries that connection's time.
        payload = json.dumps({"status": "OFFLINE", "ts": now()})
        return gmqtt.Message(self.topic("status"), payload, qos=1, retain=True)

    async def connect(self) -> None:
        url = urlsplit(MQTT_URL)
        if url.username:
            self.client.set_auth_credentials(unquote(url.username), unquote(url.password or ""))
        tls = ssl.create_default_context() if url.scheme == "mqtts" else False
        port = url.port or (8883 if tls else 1883)
        version = MQTTv50 if PROTOCOL == 5 else MQTTv311
        await self.client.connect(
            url.hostname or "127.0.0.1", port, ssl=tls, keepalive=KEEPALIVE_S, version=version
        )

    def on_connect(self, client: gmqtt.Client, flags: int, rc: int, properties: Any) -> None:
        # After every (re)connect: subscribing again is harmless on a resumed session, and the Will
        # may have shown the robot OFFLINE in between.
        client.subscribe(self.topic("commands"), qos=1)
        self.publish_status()
        say("connected", robotId=self.id, sessionPresent=bool(flags), protocol=PROTOCOL)
        self.connected.set()

    def on_disconnect(self, client: gmqtt.Client, packet: Any, exc: Any = None) -> None:
        self.connected.clear()
        # gmqtt sends the Will it holds with every reconnect and has no public setter for it.
        client._will_message = self.will()
        say("disconnected", reason=str(exc) if exc else None)

    def publish_status(self) -> None:
        payload = json.dumps({"status": self.status, "ts": now()})
        self.client.publish(self.topic("status"), payload, qos=1, retain=True)
        say("status", status=self.status)

    def publish_telemetry(self) -> None:
        self.seq += 1
        half = self.heading / 2
        sample = {
            "seq": self.seq,
            "ts": now(),
            "batteryLevel": round(self.battery, 2),
            "healthScore": 97.5,
            "pose": {
                "position": {"x": round(self.x, 3), "y": round(self.y, 3), "z": 0.0},
                "orientation": {
                    "x": 0.0,
                    "y": 0.0,
                    "z": round(math.sin(half), 4),
                    "w": round(math.cos(half), 4),
                },
            },
            "metrics": {"CPU_USAGE": round(random.uniform(20, 40), 1), "MOTOR_TEMPERATURE": 41.5},  # noqa: S311
        }
        self.client.publish(self.topic("telemetry"), json.dumps(sample), qos=1)
        say("telemetry", seq=self.seq)

    def step(self, dt: float) -> None:
        if self.status == "WORKING":
            self.heading += 0.2 * dt
            self.x += math.cos(self.heading) * 0.5 * dt
            self.y += math.sin(self.heading) * 0.5 * dt
            self.battery = max(0.0, self.battery - 0.05 * dt)

    def ack(self, command_id: str, state: str, detail: str | None = None) -> None:
        body = {"commandId": command_id, "state": state, "detail": detail}
        self.answered[command_id] = body
        while len(self.answered) > REMEMBERED_COMMANDS:
            self.answered.pop(next(iter(self.answered)))
        self.client.publish(self.topic("commands/ack"), json.dumps(body), qos=1)
        say("ack", commandId=command_id, state=state, detail=detail)

    async def on_message(
        self, client: gmqtt.Client, topic: str, payload: bytes, qos: int, properties: Any
    ) -> int:
        if topic != self.topic("commands"):
            return 0
        try:
            command = json.loads(payload)
            command_id = command["commandId"]
        except (ValueError, KeyError, TypeError):
            say("unreadable-command", payload=payload[:200].decode(errors="replace"))
            return 0
        if command_id in self.answered:  # redelivered (QoS 1 is at least once): answer again
            self.client.publish(self.topic("commands/ack"), json.dumps(self.answered[command_id]), qos=1)
            return 0
        say("command", commandId=command_id, type=command.get("type"), params=command.get("params"))
        self.ack(command_id, "RECEIVED")
        asyncio.ensure_future(self.execute(command_id, command))
        return 0

    async def execute(self, command_id: str, command: dict[str, Any]) -> None:
        kind, params = command.get("type"), command.get("params") or {}
        expires = command.get("expiresAt")
        if expires and datetime.fromisoformat(expires) < datetime.now(UTC):
            self.ack(command_id, "FAILED", "expired before it arrived")
            return
        before = self.status
        if kind == "PING":
            self.ack(command_id, "SUCCEEDED", f"pong: {self.status}, battery {self.battery:.1f}%")
        elif kind == "EMERGENCY_STOP":
            self.status = "MAINTENANCE"
            self.ack(command_id, "SUCCEEDED", "motion stopped; MAINTENANCE until RESUME")
        elif kind == "RESUME":
            self.status = "IDLE"
            self.ack(command_id, "SUCCEEDED", "resumed: IDLE")
        elif self.status == "MAINTENANCE":
            self.ack(command_id, "FAILED", "robot is in MAINTENANCE: send RESUME first")
        elif kind == "DISPATCH_TASK":
            self.status = "WORKING"
            self.ack(command_id, "SUCCEEDED", f"task {params.get('taskId')} accepted")
        elif kind == "PAUSE":
            self.status = "IDLE"
            self.ack(command_id, "SUCCEEDED", "paused: IDLE")
        else:
            self.ack(command_id, "FAILED", f"unknown command type {kind!r}")
        if self.status != before:
            self.publish_status()

    async def run(self, stop: asyncio.Event) -> None:
        await self.connect()
        period = 1.0 / HZ
        last = time.monotonic()
        while not stop.is_set():
            if self.connected.is_set():
                current = time.monotonic()
                self.step(current - last)
                last = current
                self.publish_telemetry()
            try:
                await asyncio.wait_for(stop.wait(), period)
            except TimeoutError:
                pass
        # A deliberate stop: say OFFLINE (a normal DISCONNECT makes the broker drop the Will), and
        # keep the session, so commands sent while the robot is off wait for it.
        self.status = "OFFLINE"
        if self.connected.is_set():
            self.publish_status()
            await asyncio.sleep(0.2)  # let the broker acknowledge it
        await self.client.disconnect()
        say("stopped")


async def main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await Robot(ROBOT_ID).run(stop)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except (OSError, gmqtt.mqtt.handler.MQTTConnectError) as error:
        say("failed", error=str(error))
        sys.exit(1)
