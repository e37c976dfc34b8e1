"""Simulated robots on MQTT: one gmqtt connection per robot, publishing at a steady rate.

Each robot connects with client id = username = its robot id and a Last Will that marks it
OFFLINE (retained), as a real robot would, so N robots are N connections: fine for thousands on
Mosquitto (raise `ulimit -n` past ~1000). It publishes its retained status on connect and on every
change, telemetry at `hz`, events when something happens, and acknowledges the commands it receives.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import gmqtt

from app.infra.mqtt import broker_address, version_of
from app.simulator import messages, physics
from app.simulator.physics import RobotState
from app.simulator.robots import SimRobot

log = logging.getLogger("sepulki.simulator")
# gmqtt logs every SUBSCRIBE and SUBACK at INFO: N robots would drown the dev console.
mqtt_log = logging.getLogger("sepulki.simulator.mqtt")
if mqtt_log.level == logging.NOTSET:
    mqtt_log.setLevel(logging.WARNING)

# Random INFO events per robot while driving, on average (real seconds between them).
OBSTACLE_EVERY_S = 120.0
# Concurrent connection attempts while the fleet boots.
CONNECT_CONCURRENCY = 64
# Command ids remembered per robot, to answer a redelivered command without running it twice.
SEEN_COMMANDS = 256


@dataclass(frozen=True, slots=True)
class SimConfig:
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    protocol: int = 5  # 4 = MQTT 3.1.1 (amqtt), 5 = MQTT 5 (Mosquitto, EMQX)
    hz: float = 1.0  # telemetry messages per robot per second
    time_scale: float = 60.0  # simulated seconds per real second, for battery and status
    bad_rate: float = 0.0  # share of telemetry messages replaced by bad ones
    ack_delay_s: float = 0.1  # between RECEIVED and SUCCEEDED/FAILED
    # DISPATCH_TASK: how long a task takes (real seconds, +-20 %) and the share that fail with a reason.
    task_duration_s: float = 60.0
    task_failure_rate: float = 0.1
    update_failure_rate: float = 0.0  # share of UPDATE_INGOT commands acknowledged FAILED
    # A clean stop publishes OFFLINE (a robot powering down); False leaves the last status (dev restarts).
    offline_on_exit: bool = True
    seed: int | None = None
    # Broker accounts by robot id (username, password), for a broker that requires them; a robot
    # without one connects with its id as username and no password.
    credentials: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def address(self) -> tuple[str, int]:
        host, port, *_ = broker_address(self.mqtt_url)
        return host, port


@dataclass(slots=True)
class Stats:
    telemetry: int = 0
    bad: int = 0
    events: int = 0
    statuses: int = 0
    commands: int = 0
    acks: int = 0
    skipped: int = 0  # messages not sent while disconnected or over the in-flight window
    # Robots whose connection is up right now (a gauge for status lines, not a count of messages).
    connected: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__ if name != "connected"}

    @property
    def sent(self) -> int:
        """Messages published so far, every stream together."""
        return self.telemetry + self.bad + self.events + self.statuses + self.acks


class PublishFailed(RuntimeError):
    pass


class BrokerUnreachable(RuntimeError):
    pass


async def publish(client: gmqtt.Client, topic: str, payload: bytes, *, retain: bool = False) -> None:
    """QoS 1 publish. gmqtt raises OverflowError when the broker's receive window (~20 under
    MQTT 5) is full: yield to the loop so PUBACKs arrive, then retry, for at most ~1 s."""
    for attempt in range(1000):
        try:
            client.publish(topic, payload, qos=1, retain=retain)
            return
        except OverflowError:
            await asyncio.sleep(0 if attempt < 100 else 0.001)
    raise PublishFailed(f"{topic}: in-flight window stayed full")


class SimulatedRobot:
    """One robot: its physics state and its own MQTT connection."""

    def __init__(self, robot: SimRobot, config: SimConfig, rng: random.Random, stats: Stats) -> None:
        self.robot = robot
        self.config = config
        self.rng = rng
        self.stats = stats
        self.state: RobotState = physics.initial_state(
            robot.id, rng, status=robot.status, battery=robot.battery, last_pose=robot.last_pose
        )
        # A robot without persistent storage numbers its messages from its boot time (ms), so a
        # restarted robot never reuses a seq the ingest already stored (hz <= 1000).
        boot_ms = int(datetime.now().timestamp() * 1000)
        self.seq = boot_ms
        self.event_seq = boot_ms
        self._seen: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._task_run: asyncio.Task[None] | None = None  # the DISPATCH_TASK being executed
        self.client = gmqtt.Client(robot.id, clean_session=True, will_message=self._will(), logger=mqtt_log)
        username, password = config.credentials.get(robot.id, (robot.id, None))
        self.client.set_auth_credentials(username, password)
        self.client.set_config({"reconnect_delay": 1})
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def _will(self) -> gmqtt.Message:
        """OFFLINE, stamped with the time of the connection it guards: the ingest keys a status
        message without seq by its bytes, so a Will identical to an earlier one would count as
        a duplicate and leave the robot shown online."""
        payload = messages.encode(messages.status("OFFLINE"))
        return gmqtt.Message(self.topic("status"), payload, qos=1, retain=True)

    @property
    def id(self) -> str:
        return self.robot.id

    def topic(self, stream: str) -> str:
        return messages.topic(self.id, stream)

    async def connect(self) -> None:
        host, port, tls, *_ = broker_address(self.config.mqtt_url)
        await self.client.connect(host, port, ssl=tls, keepalive=30, version=version_of(self.config.protocol))

    def _on_connect(self, client: gmqtt.Client, flags: int, rc: int, properties: Any) -> None:
        # Also after every reconnect: gmqtt does not re-subscribe, and the Will may have marked
        # the robot OFFLINE meanwhile.
        client.subscribe(self.topic("commands"), qos=1)
        self._spawn(self.send_status())
        self.stats.connected.add(self.id)

    def _on_disconnect(self, client: gmqtt.Client, packet: Any, exc: Any = None) -> None:
        self.stats.connected.discard(self.id)
        # gmqtt sends the Will it holds with every reconnect; it has no public setter.
        client._will_message = self._will()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("robot %s: %s", self.id, task.exception())

    async def _send(self, stream: str, payload: bytes, *, retain: bool = False) -> bool:
        if not self.client.is_connected:
            self.stats.skipped += 1
            return False
        try:
            await publish(self.client, self.topic(stream), payload, retain=retain)
        except PublishFailed:
            self.stats.skipped += 1
            return False
        return True

    async def send_status(self, status: str | None = None) -> None:
        if await self._send(
            "status", messages.encode(messages.status(status or self.state.status)), retain=True
        ):
            self.stats.statuses += 1

    async def send_event(self, kind: str, severity: str, message: str, data: dict[str, Any]) -> None:
        self.event_seq += 1
        payload = messages.event(self.event_seq, kind, severity, message, data)
        if await self._send("events", messages.encode(payload)):
            self.stats.events += 1

    async def tick(self, dt_s: float) -> None:
        """Advances the physics by `dt_s` real seconds and publishes what a robot would."""
        change = physics.advance(self.state, dt_s, self.config.time_scale, self.rng)
        if change.status_changed:
            await self.send_status()
        for kind, severity, message, data in change.events:
            await self.send_event(kind, severity, message, data)
        if self.state.speed > 0 and self.rng.random() < dt_s / OBSTACLE_EVERY_S:
            await self.send_event(
                "OBSTACLE_DETECTED",
                "INFO",
                "Obstacle ahead, rerouting",
                {"x": round(self.state.x, 2), "y": round(self.state.y, 2)},
            )
            self.state.waypoint = None
        self.seq += 1
        if self.config.bad_rate > 0 and self.rng.random() < self.config.bad_rate:
            _kind, payload = messages.bad_telemetry(self.state, self.seq, self.rng)
            if await self._send("telemetry", payload):
                self.stats.bad += 1
            return
        if await self._send("telemetry", messages.encode(messages.telemetry(self.state, self.seq, self.rng))):
            self.stats.telemetry += 1

    async def run(self) -> None:
        """Publishes at `hz` on an absolute schedule (no drift), starting at a random phase so the
        fleet's messages spread over the period instead of arriving in bursts."""
        loop = asyncio.get_running_loop()
        period = 1.0 / self.config.hz
        deadline = loop.time() + self.rng.uniform(0, period)
        last = loop.time()
        while True:
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            now = loop.time()
            await self.tick(now - last)
            last = now
            deadline += period
            if deadline < now:  # fell behind (a stalled loop): skip, do not burst
                deadline = now + period

    async def _on_message(
        self, client: gmqtt.Client, topic: str, payload: bytes, qos: int, properties: Any
    ) -> int:
        if topic != self.topic("commands"):  # a broker offering other topics' retained messages
            log.debug("robot %s: ignored a message on %s", self.id, topic)
            return 0
        try:
            command = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            log.warning("robot %s: unreadable command on %s", self.id, topic)
            return 0
        command_id = command.get("commandId") if isinstance(command, dict) else None
        if not isinstance(command_id, str):
            log.warning("robot %s: command without commandId on %s", self.id, topic)
            return 0
        self.stats.commands += 1
        if command_id in self._seen:  # redelivered (QoS 1): answer again, do not run it twice
            await self._ack(self._seen[command_id])
            return 0
        self._remember(command_id, messages.ack(command_id, "RECEIVED"))
        await self._ack(self._seen[command_id])
        self._spawn(self._execute(command_id, command))
        return 0

    def _remember(self, command_id: str, ack: dict[str, Any]) -> None:
        self._seen[command_id] = ack
        self._seen.move_to_end(command_id)
        while len(self._seen) > SEEN_COMMANDS:
            self._seen.popitem(last=False)

    async def _ack(self, ack: dict[str, Any]) -> None:
        if await self._send("commands/ack", messages.encode(ack)):
            self.stats.acks += 1

    async def _execute(self, command_id: str, command: dict[str, Any]) -> None:
        await asyncio.sleep(self.config.ack_delay_s)
        kind = str(command.get("type") or "")
        params = command.get("params") if isinstance(command.get("params"), dict) else {}
        if _expired(command.get("expiresAt")):
            outcome = messages.Outcome("FAILED", "expired before it could run")
        elif kind == "UPDATE_INGOT":
            # Installs occasionally fail (SimConfig.update_failure_rate), as real ones do.
            failed = self.rng.random() < self.config.update_failure_rate
            outcome = messages.update_ingot(self.state, params or {}, failed=failed)
        else:
            outcome = messages.execute(self.state, kind, params or {})
        if outcome.status_changed:
            await self.send_status()
        if outcome.event is not None:
            await self.send_event(*outcome.event)
        ack = messages.ack(command_id, outcome.state, outcome.detail)
        self._remember(command_id, ack)
        await self._ack(ack)
        if kind in ("DISPATCH_TASK", "CANCEL_TASK", "EMERGENCY_STOP") and self._task_run is not None:
            self._task_run.cancel()  # a new task replaces the one running; a cancel or a stop ends it
            self._task_run = None
        if kind == "DISPATCH_TASK" and outcome.state == "SUCCEEDED":
            self._task_run = asyncio.ensure_future(self._run_task(params or {}))
            self._tasks.add(self._task_run)
            self._task_run.add_done_callback(self._done)

    async def _run_task(self, params: dict[str, Any]) -> None:
        """Works through the task's steps, reporting TASK_PROGRESS on robots/{id}/events, then
        TASK_COMPLETED, or TASK_FAILED with a reason for `task_failure_rate` of the tasks."""
        ids = {"taskId": params.get("taskId"), "runId": params.get("runId")}
        duration = self.config.task_duration_s * self.rng.uniform(0.8, 1.2)
        steps = messages.TASK_STEPS
        fails = self.rng.random() < self.config.task_failure_rate
        fail_at = self.rng.randrange(len(steps)) if fails else None
        for i, step in enumerate(steps):
            percent = round(100 * i / len(steps))
            await self.send_event("TASK_PROGRESS", "INFO", step, {**ids, "percent": percent, "step": step})
            await asyncio.sleep(duration / len(steps))
            if i == fail_at:
                reason = self.rng.choice(messages.TASK_FAILURES)
                await self.send_event("TASK_FAILED", "WARNING", reason, {**ids, "reason": reason})
                break
        else:
            metrics = {"duration": round(duration), "errors": 0, "warnings": 0,
                       "accuracy": round(self.rng.uniform(0.9, 1.0), 3)}  # fmt: skip
            await self.send_event("TASK_COMPLETED", "INFO", "Task complete", {**ids, "metrics": metrics})
        self._task_run = None
        if self.state.status == "WORKING":
            self.state.status, self.state.speed, self.state.waypoint = "IDLE", 0.0, None
            await self.send_status()

    async def close(self, *, offline: bool) -> None:
        for task in list(self._tasks):
            task.cancel()
        if offline and self.client.is_connected:
            await self.send_status("OFFLINE")
        try:
            await asyncio.wait_for(self.client.disconnect(), timeout=5)
        except (TimeoutError, OSError) as exc:
            log.warning("robot %s: disconnect failed: %s", self.id, exc)


def _expired(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        expires = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    if expires.tzinfo is None:
        return False
    return expires < datetime.now(expires.tzinfo)


@dataclass(slots=True)
class Simulator:
    """A fleet of simulated robots; `async with Simulator(...)` connects them and starts publishing."""

    robots: list[SimRobot]
    config: SimConfig = field(default_factory=SimConfig)
    stats: Stats = field(default_factory=Stats)
    members: list[SimulatedRobot] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def robot(self, robot_id: str) -> SimulatedRobot:
        return next(member for member in self.members if member.id == robot_id)

    async def start(self) -> None:
        if self.config.hz <= 0 or self.config.hz > 1000:
            raise ValueError("hz must be in (0, 1000]")
        rng = random.Random(self.config.seed)  # noqa: S311 - simulation, not security
        self.members = [
            SimulatedRobot(robot, self.config, random.Random(rng.random()), self.stats)  # noqa: S311
            for robot in self.robots
        ]
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def connect(member: SimulatedRobot) -> None:
            async with gate:
                await member.connect()

        try:
            await asyncio.gather(*(connect(member) for member in self.members))
        except OSError as exc:
            await self.stop()
            raise BrokerUnreachable(f"cannot reach the MQTT broker at {self.config.mqtt_url}: {exc}") from exc
        except BaseException:
            await self.stop()
            raise
        self._tasks = [asyncio.create_task(member.run(), name=f"sim-{member.id}") for member in self.members]
        log.info(
            "simulating %d robots at %.3g Hz (time x%g) on %s",
            len(self.members),
            self.config.hz,
            self.config.time_scale,
            self.config.mqtt_url,
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await asyncio.gather(
            *(member.close(offline=self.config.offline_on_exit) for member in self.members),
            return_exceptions=True,
        )

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()
