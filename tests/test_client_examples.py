"""The examples of client-examples/ run against a real server (uvicorn on a loopback port, the
MQTT ingest and the command dispatcher on the test Mosquitto) and do what their README says."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import gmqtt
import pytest
from gmqtt.mqtt.constants import MQTTv50

from app.ingest.mqtt import forget_session
from app.settings import Settings
from tests.live import Live, serving
from tests.seed_ids import ALPHA, BETA, WAREHOUSE_BOT_02
from tests.servers import MosquittoServer
from tests.support import ADMIN, DEV, LOGIN, ROOT, eventually, with_broker

EXAMPLES = ROOT / "client-examples"
TYPESCRIPT = EXAMPLES / "typescript"
SET_STATUS = "mutation($id: ID!, $s: RobotStatus!) { updateRobotStatus(robotId: $id, status: $s) { status } }"
SEND = """
mutation($robotId: ID!, $type: String!) {
  sendRobotCommand(robotId: $robotId, type: $type) { id state }
}
"""
COMMAND = "query($id: ID!) { robotCommand(id: $id) { state detail receivedAt completedAt } }"

# Examples start processes of their own: they get longer than the suite's default wait.
WITHIN = 10.0


class Example:
    """An example as a child process; its stdout is one JSON object (or text) a line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[Any] = []
        self._arrived = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            text = raw.decode().rstrip("\n")
            try:
                line: Any = json.loads(text)
            except ValueError:
                line = text
            async with self._arrived:
                self.lines.append(line)
                self._arrived.notify_all()

    def steps(self, step: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if isinstance(line, dict) and line.get("step") == step]

    async def line(self, matches: Callable[[Any], bool], within: float = 15, what: str = "") -> Any:
        """The first line (already printed or to come) that `matches`."""
        async with asyncio.timeout(within), self._arrived:
            while True:
                for line in self.lines:
                    if matches(line):
                        return line
                if self._reader.done():
                    raise AssertionError(f"exited before {what}: {self.lines[-20:]} {await self.stderr()}")
                await self._arrived.wait()

    async def stderr(self) -> str:
        if self.process.returncode is None or self.process.stderr is None:
            return ""
        return (await self.process.stderr.read()).decode()[-3000:]

    async def finish(self, within: float = 60) -> tuple[int, str]:
        """Waits for the exit: the return code and stderr."""
        async with asyncio.timeout(within):
            await self._reader
            code = await self.process.wait()
        return code, await self.stderr()

    async def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        if self.process.returncode is None:
            self.process.send_signal(sig)
        return await self.finish(20)


@contextlib.asynccontextmanager
async def running(*command: str, env: dict[str, str], cwd: Path = ROOT) -> AsyncIterator[Example]:
    # Asynchronously: the server the example talks to runs on this same event loop.
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=cwd,
        env=os.environ | env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    example = Example(process)
    try:
        yield example
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        example._reader.cancel()


async def run_to_end(*command: str, env: dict[str, str], within: float = 60) -> tuple[list[Any], str]:
    """Runs an example that ends by itself; its lines, after checking it exited 0."""
    async with running(*command, env=env) as example:
        code, err = await example.finish(within)
    assert code == 0, f"{command} exited {code}: {err}\n{example.lines[-20:]}"
    return example.lines, err


def is_step(name: str) -> Callable[[Any], bool]:
    return lambda line: isinstance(line, dict) and line.get("step") == name


def example_env(live: Live, **more: str) -> dict[str, str]:
    return {"SEPULKI_API_URL": live.ws_url.replace("ws://", "http://", 1)} | more


@contextlib.asynccontextmanager
async def serving_with_ingest(settings: Settings) -> AsyncIterator[Live]:
    async with serving(settings) as live:
        async with asyncio.timeout(10):
            await live.api.components.mqtt_ingest.subscribed.wait()
        yield live


async def ensure_typescript_example() -> None:
    """`./run test` runs `npm ci` there first; this covers a bare `pytest` on a clean checkout."""
    assert shutil.which("node") and shutil.which("npm"), "the TypeScript example needs Node.js 20+ and npm"
    if (TYPESCRIPT / "node_modules" / "graphql-ws").is_dir():
        return
    process = await asyncio.create_subprocess_exec(
        "npm",
        "ci",
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
        cwd=TYPESCRIPT,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(300):
        _, err = await process.communicate()
    assert process.returncode == 0, err.decode()


class Driver:
    """Changes a robot's status every `period` seconds through the API, signed in as dev (whose
    short-lived tokens it renews), until stopped."""

    def __init__(self, live: Live, robot_id: str, period: float, token_ttl_s: float) -> None:
        self.live, self.robot_id, self.period, self.ttl = live, robot_id, period, token_ttl_s
        self.changes = 0
        self._token, self._signed_in_at = "", 0.0

    async def _token_now(self) -> str:
        if time.monotonic() - self._signed_in_at > self.ttl - 1.5:
            body = await self.live.api.execute(LOGIN, {"email": DEV[0], "password": DEV[1]}, as_=None)
            self._token, self._signed_in_at = body["data"]["login"]["session"]["token"], time.monotonic()
        return self._token

    async def run(self) -> None:
        statuses = ("IDLE", "CHARGING", "WORKING")
        while True:
            status = statuses[self.changes % len(statuses)]
            body = await self.live.api.execute(
                SET_STATUS, {"id": self.robot_id, "s": status}, token=await self._token_now()
            )
            assert body.get("errors") is None, body
            self.changes += 1
            await asyncio.sleep(self.period)


async def test_the_typescript_example_follows_robot_status_across_a_lost_socket_and_a_token_refresh(
    settings: Settings,
) -> None:
    await ensure_typescript_example()
    ttl = 6
    async with serving(settings.replace(access_token_ttl_s=ttl)) as live:
        env = example_env(live, SEPULKI_ROBOT_ID=ALPHA, SEPULKI_EXAMPLE_DROP_AFTER="3")
        async with running("node", "--import", "tsx", "src/main.ts", env=env, cwd=TYPESCRIPT) as example:
            await example.line(is_step("connected"), what="the first socket")
            await live.listening(f"robot-status:{ALPHA}")
            driver = asyncio.create_task(Driver(live, ALPHA, 0.15, ttl).run())
            try:
                renewed = await example.line(
                    lambda line: is_step("connected")(line) and line["reason"] == "token refreshed",
                    20,
                    "a socket with the refreshed token",
                )
                # Events go on past the first token's expiry, on the socket of the new one.
                await asyncio.sleep(ttl + 1)
                assert not driver.done(), driver
            finally:
                driver.cancel()
            code, err = await example.stop()
        first_events = example.steps("event")
        ids = [int(line["eventId"]) for line in first_events]
        logged = await live.api.resources.db.fetch(
            "SELECT id FROM event_log WHERE $1 = ANY(channels) AND id BETWEEN $2 AND $3 ORDER BY id",
            f"robot-status:{ALPHA}",
            min(ids),
            max(ids),
        )
    assert code == 0, err
    assert example.steps("login")[0]["email"] == ADMIN[0]
    assert {line["name"] for line in example.steps("fleet")} >= {"Dev Fleet Alpha", "Demo Warehouse Bots"}
    connections = example.steps("connected")
    # The first socket, the one after the drop (resumed after the third event), the refreshed one.
    assert [c["reason"] for c in connections][:2] == ["start", "reconnect"]
    assert connections[0]["after"] is None
    assert connections[1]["after"] == first_events[2]["eventId"]
    assert renewed["after"] is not None and example.steps("refreshed")
    # Every change committed while the example watched, exactly once and in order: nothing lost
    # while the socket was down or being replaced.
    assert ids == [row["id"] for row in logged]
    assert len(ids) >= 10
    assert {line["status"] for line in first_events} == {"IDLE", "CHARGING", "WORKING"}
    # The first token's socket was replaced before it expired: no 4403 "Token expired".
    assert all("4403" not in line["why"] for line in example.steps("disconnected"))
    assert example.steps("done")[0]["refreshes"] >= 1


async def test_the_typescript_example_type_checks() -> None:
    await ensure_typescript_example()
    process = await asyncio.create_subprocess_exec(
        "node_modules/.bin/tsc", "--noEmit", cwd=TYPESCRIPT, stdout=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(120):
        out, _ = await process.communicate()
    assert process.returncode == 0, out.decode()


async def test_the_gql_example_runs_a_mutation_a_query_and_a_subscription(settings: Settings) -> None:
    async with serving(settings) as live:
        lines, _ = await run_to_end(
            sys.executable, str(EXAMPLES / "python_gql.py"), env=example_env(live, SEPULKI_ROBOT_ID=BETA)
        )
        status = await live.api.resources.db.fetchval("SELECT status::text FROM robots WHERE id = $1", BETA)
    steps = {line["step"] for line in lines}
    assert steps >= {"login", "fleet", "mutation", "event", "done"}
    events = [line for line in lines if line["step"] == "event"]
    assert events[-1]["status"] == "MAINTENANCE" and events[-1]["robot"] == "DevBot-Beta"
    assert all(int(e["eventId"]) > 0 for e in events)
    assert status == "IDLE"  # the example put the robot back as it found it


async def test_the_curl_example_signs_in_queries_and_ingests_telemetry_with_a_new_api_key(
    settings: Settings,
) -> None:
    async with serving(settings) as live:
        lines, _ = await run_to_end("bash", str(EXAMPLES / "curl.sh"), env=example_env(live))
        seq = int(next(line for line in lines if "ingest (first" in line).split("seq ")[1].split(")")[0])
        row = await live.api.resources.db.fetchrow(
            "SELECT battery_level, metrics FROM telemetry WHERE robot_id = $1 AND seq = $2", ALPHA, seq
        )
        keys = await live.api.resources.db.fetchval(
            "SELECT count(*) FROM api_keys WHERE robot_id = $1 AND name = 'curl example'", ALPHA
        )
    text = "\n".join(lines)
    assert f"login: signed in as {ADMIN[0]}" in text
    assert '"name":"DevBot-Alpha"' in text.replace(" ", "")
    first, again = (json.loads(line.split(": ", 1)[1]) for line in lines if line.startswith("ingest"))
    assert (first["stored"], again["duplicate"], again["stored"]) == (1, 1, 0)
    assert row["battery_level"] == 87.5 and row["metrics"]["CPU_USAGE"] == 31.5
    assert keys == 1


async def test_the_query_fleets_script_lists_the_seeded_fleets_and_their_robots(settings: Settings) -> None:
    async with serving(settings) as live:
        url = live.ws_url.replace("ws://", "http://", 1)
        lines, _ = await run_to_end(sys.executable, str(EXAMPLES / "query_fleets.py"), url, env={})
    text = "\n".join(lines)
    for name in ("Assembly Line Alpha", "Dev Fleet Alpha", "Demo Warehouse Bots", "Factory Test Units"):
        assert name in text
    assert "DevBot-Alpha" in text and "WarehouseBot-Demo-02" in text


async def test_the_subscribe_robot_status_script_prints_a_status_change_as_it_happens(
    settings: Settings,
) -> None:
    async with serving(settings) as live:
        url = live.ws_url.replace("ws://", "http://", 1)
        script = str(EXAMPLES / "subscribe_robot_status.py")
        async with running(sys.executable, script, url, env={}) as example:
            await live.listening("robot-status:*", within=15)
            await live.api.data(SET_STATUS, {"id": BETA, "s": "ERROR"})
            line = await example.line(lambda line: "DevBot-Beta" in str(line), what="the change")
            await example.stop()
    assert "'status': 'ERROR'" in str(line)


@contextlib.asynccontextmanager
async def robot_cleared(url: str, robot_id: str) -> AsyncIterator[None]:
    """The robot's broker session and retained status removed before and after: the broker is
    shared by the whole suite."""

    async def clear() -> None:
        await forget_session(url, robot_id)
        client = gmqtt.Client(f"clear-{uuid.uuid4().hex[:8]}")
        host, port = url.removeprefix("mqtt://").split(":")
        await client.connect(host, int(port), version=MQTTv50)
        client.publish(f"robots/{robot_id}/status", b"", qos=1, retain=True)
        await asyncio.sleep(0.1)
        await client.disconnect()

    await clear()
    try:
        yield
    finally:
        await clear()


async def test_the_example_robot_streams_telemetry_answers_commands_and_leaves_a_last_will(
    settings: Settings, mosquitto: MosquittoServer
) -> None:
    robot_id = WAREHOUSE_BOT_02  # WORKING in the seed; the example robot boots IDLE
    env = {"SEPULKI_MQTT_URL": mosquitto.url, "SEPULKI_ROBOT_ID": robot_id, "SEPULKI_ROBOT_HZ": "5"}
    script = str(EXAMPLES / "robot.py")
    async with (
        robot_cleared(mosquitto.url, robot_id),
        serving_with_ingest(with_broker(settings, mosquitto)) as live,
    ):
        db = live.api.resources.db

        async def status() -> str:
            return str(await db.fetchval("SELECT status::text FROM robots WHERE id = $1", robot_id))

        async def settled(command_id: str) -> dict[str, Any] | None:
            command: dict[str, Any] = (await live.api.data(COMMAND, {"id": command_id}))["robotCommand"]
            return command if command["state"] in ("SUCCEEDED", "FAILED") else None

        async def send(kind: str) -> str:
            command_id: str = (await live.api.data(SEND, {"robotId": robot_id, "type": kind}))[
                "sendRobotCommand"
            ]["id"]
            return command_id

        async with running(sys.executable, script, env=env) as robot:
            first = await robot.line(is_step("connected"), what="connected")
            await eventually(lambda: _is(status, "IDLE"), WITHIN, what="the retained IDLE stored")
            await robot.line(lambda line: len(robot.steps("telemetry")) >= 3, what="three samples")
            seqs = [line["seq"] for line in robot.steps("telemetry")[:3]]

            async def stored() -> bool:
                count = await db.fetchval(
                    "SELECT count(*) FROM telemetry WHERE robot_id = $1 AND seq = ANY($2::bigint[])"
                    " AND battery_level IS NOT NULL AND metrics ? 'CPU_USAGE'",
                    robot_id,
                    seqs,
                )
                return bool(count == 3)

            await eventually(stored, WITHIN, what="the telemetry stored")
            ping = await settled_after(send, settled, "PING")
            unknown = await settled_after(send, settled, "SELF_DESTRUCT")
            code, _ = await robot.stop(signal.SIGKILL)
        # Gone without a goodbye: the broker publishes the Last Will.
        await eventually(lambda: _is(status, "OFFLINE"), WITHIN, what="the Last Will stored")
        # A command sent while the robot is away waits in its broker session.
        stop_id = await send("EMERGENCY_STOP")
        await eventually(lambda: _state(live, stop_id, "SENT"), WITHIN, what="the dispatcher sent it")
        async with running(sys.executable, script, env=env) as robot:
            again = await robot.line(is_step("connected"), what="reconnected")
            stopped = await eventually(
                lambda: settled(stop_id), WITHIN, what="the queued EMERGENCY_STOP answered"
            )
            await eventually(lambda: _is(status, "MAINTENANCE"), WITHIN, what="the robot in MAINTENANCE")
            code, err = await robot.stop()
        final = await eventually(lambda: _is(status, "OFFLINE"), WITHIN, what="the goodbye OFFLINE stored")
    assert first["sessionPresent"] is False and again["sessionPresent"] is True
    assert ping["state"] == "SUCCEEDED" and ping["detail"].startswith("pong")
    assert ping["receivedAt"] is not None and ping["completedAt"] is not None  # RECEIVED, then SUCCEEDED
    assert (unknown["state"], unknown["detail"]) == ("FAILED", "unknown command type 'SELF_DESTRUCT'")
    assert stopped["state"] == "SUCCEEDED"
    assert code == 0, err
    assert robot.steps("stopped") and final


async def settled_after(
    send: Callable[[str], Awaitable[str]], settled: Callable[[str], Awaitable[Any]], kind: str
) -> Any:
    command_id = await send(kind)
    return await eventually(lambda: settled(command_id), WITHIN, what=f"{kind} answered")


async def _is(current: Callable[[], Awaitable[str]], wanted: str) -> bool:
    return await current() == wanted


async def _state(live: Live, command_id: str, state: str) -> bool:
    found = await live.api.resources.db.fetchval(
        "SELECT state::text FROM robot_commands WHERE id = $1", command_id
    )
    return bool(found == state)


@pytest.mark.parametrize(
    "name", ["python_gql.py", "robot.py", "query_fleets.py", "subscribe_robot_status.py"]
)
def test_every_python_example_documents_how_to_run_it(name: str) -> None:
    text = (EXAMPLES / name).read_text()
    readme = (EXAMPLES / "README.md").read_text()
    assert text.startswith('"""') and name in readme
