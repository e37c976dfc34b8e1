"""Simulated robots behave like robots: their physics is sane, they speak the MQTT contract to a
real Mosquitto, acknowledge commands, send bad messages on request, and `sepulki dev` runs them
on its embedded broker so telemetry lands in PostgreSQL with nothing else running."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import gmqtt
import pytest

from app.infra import db
from app.infra.embedded_broker import running_broker
from app.settings import Settings
from app.simulator import SimConfig, Simulator, physics, robots
from app.simulator.messages import Outcome, bad_telemetry, execute
from app.simulator.physics import FLOOR_HEIGHT_M, FLOOR_WIDTH_M, RobotState
from app.simulator.runner import publish
from tests.seed_ids import ALPHA, BETA, DEV_FLEET, WAREHOUSE_BOT_01, WAREHOUSE_BOT_02
from tests.servers import MosquittoServer, _wait_for_port, free_port
from tests.support import Api

ROOT = Path(__file__).resolve().parent.parent
SEEDED = [ALPHA, BETA, WAREHOUSE_BOT_01, WAREHOUSE_BOT_02]
METRICS = {
    "BATTERY_SOC",
    "BATTERY_VOLTAGE",
    "BATTERY_CURRENT",
    "MOTOR_TEMPERATURE",
    "CPU_USAGE",
    "MEMORY_USAGE",
    "SIGNAL_STRENGTH",
    "VELOCITY",
    "VIBRATION",
    "AMBIENT_TEMPERATURE",
}


def working(battery: float = 80.0, **kwargs: Any) -> RobotState:
    return RobotState(robot_id=SEEDED[0], status="WORKING", battery=battery, **kwargs)


def run_for(state: RobotState, seconds: float, *, dt: float = 1.0, time_scale: float = 60.0) -> list[str]:
    """Advances the robot; returns the event types it raised."""
    rng = random.Random(7)
    events: list[str] = []
    for _ in range(int(seconds / dt)):
        events += [kind for kind, *_ in physics.advance(state, dt, time_scale, rng).events]
    return events


# --- physics: pure functions -------------------------------------------------------------------


def test_a_working_robot_drains_2_to_3_percent_an_hour_plus_its_speed_and_an_idle_one_half_a_percent() -> (
    None
):
    busy, idle = working(80.0), RobotState(robot_id=SEEDED[1], status="IDLE", battery=80.0)
    run_for(busy, 60)  # one real minute at x60: one simulated hour
    run_for(idle, 60)
    assert 80 - (3.0 + 0.5 * 1.5) <= busy.battery <= 80 - 2.0
    assert idle.battery == pytest.approx(79.5, abs=0.01)


def test_a_robot_below_15_percent_goes_charging_and_returns_to_work_at_95() -> None:
    state = working(21.0)
    events = run_for(state, 60 * 60 * 3, dt=5.0)  # three real hours, three sim days at x60
    battery_events = [kind for kind in events if kind != "MOTOR_OVERHEAT"]
    assert battery_events[:4] == ["BATTERY_LOW", "CHARGING_STARTED", "CHARGING_COMPLETE", "BATTERY_LOW"]
    state = working(15.5)
    trace: list[tuple[str, float]] = []
    rng = random.Random(1)
    for _ in range(3000):
        physics.advance(state, 1.0, 60.0, rng)
        trace.append((state.status, state.battery))
    first_charging = next(i for i, (status, _) in enumerate(trace) if status == "CHARGING")
    assert trace[first_charging][1] < 15 and trace[first_charging - 1][0] == "WORKING"
    back = next(i for i in range(first_charging, len(trace)) if trace[i][0] == "WORKING")
    assert trace[back][1] >= 95 and trace[back - 1][1] < 95
    assert all(
        b1 > b0
        for (_, b0), (_, b1) in zip(
            trace[first_charging:back], trace[first_charging + 1 : back], strict=False
        )
    )


def test_health_loses_points_for_low_battery_hot_motor_and_errors_and_stays_within_0_and_100() -> None:
    assert physics.health_score(80, 50, 0) == 100
    assert physics.health_score(12, 50, 0) == 92  # 20 - 12
    assert physics.health_score(80, 65, 0) == 90  # 2 * (65 - 60)
    assert physics.health_score(80, 50, 2) == 90  # 5 per error
    assert physics.health_score(10, 70, 1) == 100 - 10 - 20 - 5
    assert physics.health_score(0, 200, 10) == 0


def test_a_working_robot_moves_but_never_leaves_the_floor_and_a_charging_one_stands_still() -> None:
    state = working(90.0, x=-20.0, y=15.0)
    state.x, state.y = physics.inside_floor(state.x, state.y)  # seeded poses may lie off the floor
    rng, seen = random.Random(3), set()
    for _ in range(20_000):
        physics.advance(state, 0.1, 1.0, rng)
        assert 0 <= state.x <= FLOOR_WIDTH_M and 0 <= state.y <= FLOOR_HEIGHT_M
        assert 0 <= state.speed <= 2.0  # the seeded speed-limit edict
        seen.add((round(state.x), round(state.y)))
    assert len(seen) > 50  # it actually went places
    q = physics.orientation(state.heading)
    assert math.isclose(q["z"] ** 2 + q["w"] ** 2, 1.0, abs_tol=1e-3)
    docked = RobotState(robot_id=SEEDED[2], status="CHARGING", battery=50.0, x=5, y=5)
    run_for(docked, 30)
    assert (docked.x, docked.y, docked.speed) == (5, 5, 0)


def test_a_robot_resumes_from_its_row_and_an_offline_one_boots_into_work() -> None:
    rng = random.Random(0)
    pose = {"position": {"x": 40, "y": -10, "z": 0}, "orientation": {"x": 0, "y": 0, "z": 1, "w": 0}}
    state = physics.initial_state(SEEDED[3], rng, status="ERROR", battery=71.3, last_pose=pose)
    assert (state.status, state.battery, state.error_count) == ("ERROR", 71.3, 1)
    assert (state.x, state.y) == (FLOOR_WIDTH_M - physics.FLOOR_MARGIN_M, physics.FLOOR_MARGIN_M)
    assert state.heading == pytest.approx(math.pi)
    assert physics.initial_state(SEEDED[0], rng, status="OFFLINE", battery=50).status == "WORKING"
    assert physics.initial_state(SEEDED[0], rng, status="OFFLINE", battery=5).status == "CHARGING"


def test_emergency_stop_halts_the_robot_until_resume_and_unknown_commands_fail() -> None:
    state = working(70.0, speed=1.2, waypoint=(3.0, 3.0))
    stop = execute(state, "EMERGENCY_STOP", {})
    assert stop.state == "SUCCEEDED" and stop.status_changed and stop.event is not None
    assert (state.status, state.speed, state.waypoint) == ("MAINTENANCE", 0.0, None)
    run_for(state, 10)
    assert state.status == "MAINTENANCE" and state.speed == 0
    assert execute(state, "DISPATCH_TASK", {"taskId": "t1"}).state == "FAILED"
    assert execute(state, "RESUME", {}) == Outcome("SUCCEEDED", "resumed: IDLE", True)
    assert execute(state, "DISPATCH_TASK", {"taskId": "t1"}).state == "SUCCEEDED"
    assert (state.status, state.task_id) == ("WORKING", "t1")
    assert execute(state, "SELF_DESTRUCT", {}).state == "FAILED"


# --- on a real broker ----------------------------------------------------------------------------


@dataclass
class Watcher:
    """A plain gmqtt client that records everything under robots/#."""

    client: gmqtt.Client
    received: list[tuple[str, bytes, bool]] = field(default_factory=list)

    def on(self, robot_id: str, stream: str, *, retained: bool = False) -> list[bytes]:
        """Live messages (or only the retained ones the broker replayed on subscribe)."""
        topic = f"robots/{robot_id}/{stream}"
        return [payload for t, payload, retain in self.received if t == topic and retain == retained]

    def json(self, robot_id: str, stream: str) -> list[dict[str, Any]]:
        return [json.loads(payload) for payload in self.on(robot_id, stream)]

    async def until(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while not predicate():
            assert time.monotonic() < deadline, f"timed out; got {len(self.received)} messages"
            await asyncio.sleep(0.02)

    def command(self, robot_id: str, kind: str, params: dict[str, Any] | None = None) -> str:
        command_id = str(uuid.uuid4())
        body = {
            "commandId": command_id,
            "type": kind,
            "params": params or {},
            "issuedAt": "2026-01-01T00:00:00Z",
        }
        self.client.publish(f"robots/{robot_id}/commands", json.dumps(body).encode(), qos=1)
        return command_id


@asynccontextmanager
async def watching(url: str, protocol: int = 5, topic: str = "robots/#") -> AsyncIterator[Watcher]:
    client = gmqtt.Client(f"watcher-{uuid.uuid4().hex[:8]}")
    watcher = Watcher(client)

    def on_message(_c: Any, topic: str, payload: bytes, _qos: int, properties: dict[str, Any]) -> int:
        watcher.received.append((topic, payload, bool(properties.get("retain"))))
        return 0

    client.on_message = on_message
    host, port = SimConfig(mqtt_url=url).address
    await client.connect(host, port, version=protocol)
    client.subscribe(topic, qos=1)
    await asyncio.sleep(0.1)
    try:
        yield watcher
    finally:
        await client.disconnect()


def sim_robots(ids: list[str], status: str = "WORKING", battery: float = 60.0) -> list[robots.SimRobot]:
    return [
        robots.SimRobot(robot_id, f"R{n}", DEV_FLEET, status, battery, None) for n, robot_id in enumerate(ids)
    ]


def in_range(sample: dict[str, Any]) -> bool:
    pos = sample["pose"]["position"]
    return (
        0 <= sample["batteryLevel"] <= 100
        and 0 <= sample["healthScore"] <= 100
        and 0 <= pos["x"] <= FLOOR_WIDTH_M
        and 0 <= pos["y"] <= FLOOR_HEIGHT_M
        and set(sample["metrics"]) == METRICS
        and 44 <= sample["metrics"]["BATTERY_VOLTAGE"] <= 52.5
        and -80 <= sample["metrics"]["SIGNAL_STRENGTH"] <= -50
    )


async def test_simulated_robots_publish_telemetry_that_follows_the_mqtt_contract(
    mosquitto: MosquittoServer,
) -> None:
    config = SimConfig(mqtt_url=mosquitto.url, protocol=5, hz=20, seed=11)
    async with watching(mosquitto.url) as watcher:
        async with Simulator(sim_robots(SEEDED[:3]), config):
            await watcher.until(lambda: all(len(watcher.on(r, "telemetry")) >= 10 for r in SEEDED[:3]))
        # A clean stop powers the robots down.
        await watcher.until(lambda: all(b"OFFLINE" in watcher.on(r, "status")[-1] for r in SEEDED[:3]))
    for robot_id in SEEDED[:3]:
        samples = watcher.json(robot_id, "telemetry")
        seqs = [s["seq"] for s in samples]
        assert seqs == sorted(set(seqs)) and seqs[-1] - seqs[0] == len(seqs) - 1
        assert all(in_range(s) for s in samples), samples[0]
        assert all(s["ts"].endswith("Z") and len(s["ts"]) == 24 for s in samples)
        statuses = [s["status"] for s in watcher.json(robot_id, "status")]
        assert statuses == ["WORKING", "OFFLINE"]
    async with watching(mosquitto.url) as late:  # status messages are retained
        await late.until(lambda: all(late.on(r, "status", retained=True) for r in SEEDED[:3]))
        assert json.loads(late.on(SEEDED[0], "status", retained=True)[0])["status"] == "OFFLINE"


@asynccontextmanager
async def broker_of(kind: str, mosquitto: MosquittoServer) -> AsyncIterator[tuple[str, int]]:
    """(url, protocol) of Mosquitto (MQTT 5) or of the embedded dev broker (3.1.1)."""
    if kind == "mosquitto":
        yield mosquitto.url, 5
        return
    port = free_port()
    async with running_broker(port):
        yield f"mqtt://127.0.0.1:{port}", 4


@pytest.mark.parametrize("kind", ["mosquitto", "embedded"])
async def test_a_robot_is_marked_offline_by_its_last_will_and_comes_back_by_itself(
    mosquitto: MosquittoServer, kind: str
) -> None:
    async with broker_of(kind, mosquitto) as (url, protocol):
        config = SimConfig(mqtt_url=url, protocol=protocol, hz=10, seed=5)
        await _last_will_story(url, protocol, config)


async def _last_will_story(url: str, protocol: int, config: SimConfig) -> None:
    async with watching(url, protocol) as watcher, Simulator(sim_robots(SEEDED[:1]), config) as sim:
        await watcher.until(lambda: len(watcher.on(SEEDED[0], "telemetry")) >= 2)
        wills: list[bytes] = []
        for _ in range(2):
            sim.robot(SEEDED[0]).client._connection._transport.abort()  # the link drops, no DISCONNECT
            await watcher.until(lambda: b"OFFLINE" in watcher.on(SEEDED[0], "status")[-1])
            wills.append(watcher.on(SEEDED[0], "status")[-1])
            before = len(watcher.on(SEEDED[0], "telemetry"))
            await watcher.until(lambda: watcher.json(SEEDED[0], "status")[-1]["status"] == "WORKING")
            await watcher.until(lambda n=before: len(watcher.on(SEEDED[0], "telemetry")) > n + 2)
        assert wills[0] != wills[1]  # each Will is a new message to the ingest, not a duplicate
        # Re-subscribed after the reconnect: commands still reach it.
        command_id = watcher.command(SEEDED[0], "PING")
        await watcher.until(
            lambda: any(a["commandId"] == command_id for a in watcher.json(SEEDED[0], "commands/ack"))
        )


async def test_a_robot_acknowledges_commands_and_an_emergency_stop_puts_it_in_maintenance(
    mosquitto: MosquittoServer,
) -> None:
    robot_id = SEEDED[0]
    config = SimConfig(mqtt_url=mosquitto.url, protocol=5, hz=10, seed=2, ack_delay_s=0.05)
    async with watching(mosquitto.url) as watcher, Simulator(sim_robots([robot_id]), config) as sim:
        await watcher.until(lambda: bool(watcher.on(robot_id, "telemetry")))

        def acks(command_id: str) -> list[tuple[str, str | None]]:
            return [
                (a["state"], a["detail"])
                for a in watcher.json(robot_id, "commands/ack")
                if a["commandId"] == command_id
            ]

        stop = watcher.command(robot_id, "EMERGENCY_STOP")
        unknown = watcher.command(robot_id, "DANCE")
        await watcher.until(lambda: len(acks(stop)) == 2 and len(acks(unknown)) == 2)
        assert [state for state, _ in acks(stop)] == ["RECEIVED", "SUCCEEDED"]
        assert acks(unknown)[1] == ("FAILED", "unknown command type 'DANCE'")
        assert watcher.json(robot_id, "status")[-1]["status"] == "MAINTENANCE"
        assert "EMERGENCY_STOP" in [e["type"] for e in watcher.json(robot_id, "events")]
        await asyncio.sleep(0.3)
        latest = watcher.json(robot_id, "telemetry")[-1]
        assert latest["metrics"]["VELOCITY"] == 0 and sim.robot(robot_id).state.status == "MAINTENANCE"
        # A redelivered command is answered again, not run twice.
        again = json.dumps({"commandId": stop, "type": "EMERGENCY_STOP", "params": {}}).encode()
        watcher.client.publish(f"robots/{robot_id}/commands", again, qos=1)
        await watcher.until(lambda: len(acks(stop)) == 3)
        assert acks(stop)[2][0] == "SUCCEEDED"
        assert [e["type"] for e in watcher.json(robot_id, "events")].count("EMERGENCY_STOP") == 1


async def test_with_bad_rate_one_every_telemetry_message_is_one_the_ingest_must_refuse(
    mosquitto: MosquittoServer,
) -> None:
    config = SimConfig(mqtt_url=mosquitto.url, protocol=5, hz=50, bad_rate=1.0, seed=9)
    async with watching(mosquitto.url) as watcher, Simulator(sim_robots(SEEDED[:1]), config) as sim:
        await watcher.until(lambda: len(watcher.on(SEEDED[0], "telemetry")) >= 30)
    kinds = set()
    for payload in watcher.on(SEEDED[0], "telemetry"):
        try:
            body = json.loads(payload)
        except ValueError:
            kinds.add("malformed_json")
            continue
        if not isinstance(body["seq"], int):
            kinds.add("invalid_type")
        else:
            assert not 0 <= body["batteryLevel"] <= 100
            kinds.add("out_of_range")
    assert kinds == {"malformed_json", "invalid_type", "out_of_range"}
    assert sim.stats.telemetry == 0 and sim.stats.bad >= 30
    assert bad_telemetry(working(), 1, random.Random(0))[0] in kinds


class StockMosquitto(MosquittoServer):
    """Mosquitto with its default in-flight window (20 QoS 1 messages per client)."""

    def start(self) -> str:
        config = self.dir / "mosquitto.conf"
        config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\nlog_dest none\n")
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.process = subprocess.Popen([binary, "-c", str(config)])
        _wait_for_port(self.port)
        return self.url


async def test_a_burst_beyond_the_brokers_in_flight_window_waits_for_pubacks_instead_of_failing() -> None:
    server = StockMosquitto()
    server.start()
    client = gmqtt.Client("burst")
    try:
        await client.connect("127.0.0.1", server.port, version=5)
        with pytest.raises(OverflowError):  # what gmqtt does on its own past ~19 in flight
            for _ in range(100):
                client.publish("robots/burst/telemetry", b"{}", qos=1)
        for _ in range(500):
            await publish(client, "robots/burst/telemetry", b"{}")
        await client.disconnect()
    finally:
        server.close()


async def test_simulate_plays_the_seeded_robots_first_and_registers_sim_robots_for_the_rest(
    database_url: str,
) -> None:
    pool = await db.create_pool(database_url, min_size=1, max_size=2)
    try:
        fleet = await robots.pick(pool, 2, DEV_FLEET)
        assert [r.id for r in fleet] == SEEDED[:2]
        more = await robots.pick(pool, 5, DEV_FLEET)
        assert [r.name for r in more[2:]] == ["Sim-001", "Sim-002", "Sim-003"]
        assert {r.fleet_id for r in more} == {DEV_FLEET}
        again = await robots.pick(pool, 6, DEV_FLEET)  # the registered ones are reused
        assert [r.name for r in again[5:]] == ["Sim-004"] and again[:5] == more
        # Robots reporting right now are driven by something else: `simulate` leaves them alone.
        await pool.execute("UPDATE robots SET last_seen = now(), status = 'WORKING' WHERE id = $1", SEEDED[0])
        await pool.execute("UPDATE robots SET last_seen = now() - interval '1 hour' WHERE id = $1", SEEDED[1])
        idle = await robots.pick(pool, 2, DEV_FLEET, skip_live_s=30)
        assert [r.id for r in idle] == [SEEDED[1], more[2].id]
        with pytest.raises(robots.NoRobots, match="unknown robot ids"):
            await robots.by_ids(pool, [SEEDED[0], str(uuid.uuid4())])
        with pytest.raises(robots.NoRobots):
            await robots.pick(pool, 50, DEV_FLEET, register=False)
    finally:
        await pool.close()


async def test_sepulki_simulate_runs_from_the_command_line_against_mosquitto(
    mosquitto: MosquittoServer, database_url: str
) -> None:
    env = {**os.environ, "SEPULKI_DATABASE_URL": database_url, "SEPULKI_MQTT_URL": mosquitto.url}
    command = [
        sys.executable,
        "-m",
        "app.cli",
        "simulate",
        "--robots",
        "3",
        "--hz",
        "10",
        "--duration",
        "1.5",
    ]
    async with watching(mosquitto.url) as watcher:
        process = await asyncio.create_subprocess_exec(
            *command, "--fleet", DEV_FLEET, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()[-2000:]
    sent = json.loads(stdout.decode().strip().splitlines()[-1])["sent"]
    assert sent["telemetry"] >= 3 * 10 and sent["bad"] == 0
    conn = await asyncpg.connect(database_url)
    try:
        sim_id = await conn.fetchval("SELECT id::text FROM robots WHERE name = 'Sim-001'")
    finally:
        await conn.close()
    assert len(watcher.on(sim_id, "telemetry")) >= 10


async def test_sepulki_simulate_prints_a_status_line_while_it_runs_not_minutes_of_silence(
    mosquitto: MosquittoServer, database_url: str
) -> None:
    env = {**os.environ, "SEPULKI_DATABASE_URL": database_url, "SEPULKI_MQTT_URL": mosquitto.url}
    command = [sys.executable, "-m", "app.cli", "simulate", "--robots", "2", "--hz", "10"]
    process = await asyncio.create_subprocess_exec(
        *command,
        "--fleet",
        DEV_FLEET,
        "--duration",
        "2.5",
        "--status-every",
        "0.5",
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()[-2000:]
    lines = [line for line in stderr.decode().splitlines() if line.startswith("simulate: ")]
    assert lines, stderr.decode()[-2000:]
    # Once the robots are up, a line says so, with the rate and the counters an operator watches
    # (a line printed while the run ends may already count them disconnecting).
    up = [line for line in lines if line.startswith("simulate: 2/2 robots connected, ")]
    assert up, lines
    last = up[-1]
    rate = float(last.split(", ")[1].removesuffix(" msg/s"))
    assert rate > 5, last
    for counter in ("telemetry ", "acks ", "skipped ", "dead letters 0"):
        assert counter in last, last
    # stdout still ends with the one JSON summary scripts read.
    assert json.loads(stdout.decode().strip().splitlines()[-1])["sent"]["telemetry"] > 0


# --- inside the application: `sepulki dev` -------------------------------------------------------


def dev_settings(settings: Settings, simulate_robots: int) -> Settings:
    """What `sepulki dev` sets when SEPULKI_MQTT_URL is unset, on a free port."""
    return settings.replace(
        mqtt_url=f"mqtt://127.0.0.1:{free_port()}",
        mqtt_protocol=4,
        embedded_broker=True,
        simulate_robots=simulate_robots,
    )


async def test_the_embedded_broker_starts_and_stops_with_the_app_and_carries_mqtt_3_1_1(
    settings: Settings,
) -> None:
    dev = dev_settings(settings, simulate_robots=0)
    port = SimConfig(mqtt_url=dev.mqtt_url or "").address[1]
    async with Api.running(dev) as api:
        assert api.resources.broker is not None
        async with watching(dev.mqtt_url or "", protocol=4) as watcher:
            publisher = gmqtt.Client("publisher")
            await publisher.connect("127.0.0.1", port, version=4)
            publisher.publish(f"robots/{SEEDED[0]}/events", b'{"hello": 1}', qos=1)
            await watcher.until(lambda: watcher.on(SEEDED[0], "events") == [b'{"hello": 1}'], within=5)
            await publisher.disconnect()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)  # stopped with the app: nothing listens


async def test_a_second_broker_on_a_busy_port_fails_with_a_clear_hint() -> None:
    port = free_port()
    async with running_broker(port):
        with pytest.raises(RuntimeError, match="SEPULKI_MQTT_PORT"):
            async with running_broker(port):
                pass


async def test_dev_story_simulated_robots_telemetry_lands_in_postgres_through_the_embedded_broker(
    settings: Settings,
) -> None:
    """Given `sepulki dev` (embedded broker, ingest, 4 simulated robots), within seconds each
    seeded robot has fresh telemetry rows and a fresh lastSeen; nothing else is running."""
    started = time.time()
    async with Api.running(dev_settings(settings, simulate_robots=4)) as api:
        simulator = api.components.simulator
        assert sorted(member.id for member in simulator.members) == SEEDED

        async def fresh() -> dict[str, int]:
            rows = await api.resources.db.fetch(
                "SELECT robot_id::text AS id, count(*) AS n FROM telemetry "
                "WHERE received_at > to_timestamp($1) GROUP BY robot_id",
                started,
            )
            return {row["id"]: row["n"] for row in rows}

        deadline = time.monotonic() + 15
        while not (counts := await fresh()) or min(counts.get(r, 0) for r in SEEDED) < 2:
            assert time.monotonic() < deadline, f"telemetry rows after 15 s: {counts}"
            await asyncio.sleep(0.25)
        seen = await api.resources.db.fetch(
            "SELECT id::text AS id, last_seen FROM robots WHERE id = ANY($1::uuid[])", SEEDED
        )
        assert all(row["last_seen"].timestamp() > started - 1 for row in seen)


SEND = """
mutation($robotId: ID!, $type: String!) {
  sendRobotCommand(robotId: $robotId, type: $type) { id state }
}
"""


async def test_dev_story_an_operators_command_reaches_a_simulated_robot_and_comes_back_acknowledged(
    settings: Settings,
) -> None:
    """Given `sepulki dev`, an admin stops DevBot-Alpha and sends DevBot-Beta a command it does not
    know: the first ends SUCCEEDED with the robot in MAINTENANCE, the second FAILED with the reason."""
    async with Api.running(dev_settings(settings, simulate_robots=4)) as api:
        stop = (await api.data(SEND, {"robotId": SEEDED[0], "type": "EMERGENCY_STOP"}))["sendRobotCommand"]
        dance = (await api.data(SEND, {"robotId": SEEDED[1], "type": "DANCE"}))["sendRobotCommand"]

        async def state(command_id: str) -> dict[str, Any]:
            query = "query($id: ID!) { robotCommand(id: $id) { state detail } }"
            command: dict[str, Any] = (await api.data(query, {"id": command_id}))["robotCommand"]
            return command

        deadline = time.monotonic() + 10
        while (await state(stop["id"]))["state"] != "SUCCEEDED" or (await state(dance["id"]))[
            "state"
        ] != "FAILED":
            assert time.monotonic() < deadline, (await state(stop["id"]), await state(dance["id"]))
            await asyncio.sleep(0.1)
        assert (await state(dance["id"]))["detail"] == "unknown command type 'DANCE'"
        while (await api.data(f'{{ robot(id: "{SEEDED[0]}") {{ status }} }}'))["robot"][
            "status"
        ] != "MAINTENANCE":
            assert time.monotonic() < deadline, "the robot's MAINTENANCE status did not reach its row"
            await asyncio.sleep(0.1)


async def test_robots_booting_together_on_the_embedded_broker_connect_once_and_see_only_their_commands() -> (
    None
):
    """amqtt 0.12.1 alone hands every connecting client the retained messages of everyone's
    subscriptions and drops connections that race a SUBSCRIBE; app.broker works around both."""
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"
    async with running_broker(port), watching(url, protocol=4) as watcher:
        ids = [str(uuid.uuid4()) for _ in range(40)]
        for robot_id in ids:  # statuses retained from an earlier run
            watcher.client.publish(f"robots/{robot_id}/status", b'{"status":"OFFLINE"}', qos=1, retain=True)
        await watcher.until(lambda: len(watcher.on(ids[-1], "status")) == 1)
        config = SimConfig(mqtt_url=url, protocol=4, hz=5, seed=4)
        async with Simulator(sim_robots(ids), config) as sim:
            await watcher.until(lambda: all(watcher.on(r, "telemetry") for r in ids))
            await asyncio.sleep(0.5)
            assert sim.stats.statuses == len(ids) and sim.stats.skipped == 0  # no reconnect, no resend
            assert all(member.client.is_connected for member in sim.members)
        # A new client gets the retained messages it asked for, none of the others.
        async with watching(url, protocol=4, topic=f"robots/{ids[0]}/status") as late:
            await late.until(lambda: bool(late.on(ids[0], "status", retained=True)))
            assert {topic for topic, _, _ in late.received} == {f"robots/{ids[0]}/status"}
