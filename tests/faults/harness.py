"""What the fault scenarios share: servers that can be stopped and started under connected
clients, a `sepulki ingest` process, robots that publish numbered telemetry, and the count of
what PostgreSQL holds afterwards.

Sizes come from the environment so CI runs a bounded form (SEPULKI_FAULT_MESSAGES, default 2000
per scenario) and a longer soak can run the same scenarios (docs/operations.md, "Fault suite").
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
from gmqtt import Client
from gmqtt.mqtt.constants import MQTTv50

from tests.seed_ids import ALPHA, BETA, WAREHOUSE_BOT_01, WAREHOUSE_BOT_02
from tests.servers import MosquittoServer, free_port
from tests.support import ROOT

MESSAGES = int(os.environ.get("SEPULKI_FAULT_MESSAGES", "2000"))
ROBOTS = [ALPHA, BETA, WAREHOUSE_BOT_01, WAREHOUSE_BOT_02]
CLEAR_HISTORY = "TRUNCATE telemetry, robot_events, dead_letters, event_log"
REPORT = Path(os.environ.get("SEPULKI_FAULT_REPORT", ROOT / "tests" / "artifacts" / "faults.jsonl"))


class PersistentMosquitto(MosquittoServer):
    """Mosquitto as deployed: persistence on (saved on shutdown and every second here), so a
    restart keeps persistent sessions, their plain subscriptions and their queued messages."""

    prefix = "sepulki-mqtt-persistent-"

    def start(self) -> str:
        config = self.dir / "mosquitto.conf"
        config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            # Running as root, Mosquitto would switch to its own user, who cannot write here.
            f"user {getpass.getuser()}\n"
            "persistence true\n"
            f"persistence_location {self.dir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 1000000\n"
            "max_inflight_messages 1000\n"
            "max_packet_size 1048576\n"
            "log_dest none\n"
        )
        binary = "/usr/sbin/mosquitto"
        self.process = subprocess.Popen(
            [binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        from tests.servers import _wait_for_port

        _wait_for_port(self.port)
        return self.url

    def restart(self) -> None:
        """SIGTERM (Mosquitto writes its database), then the same configuration and port again."""
        self.stop()
        self.start()


def telemetry(seq: int, base: datetime) -> bytes:
    return orjson.dumps(
        {"seq": seq, "ts": (base + timedelta(milliseconds=seq)).isoformat(), "metrics": {"CPU_USAGE": 1.0}}
    )


class Robots:
    """Four robots on one MQTT connection each, publishing telemetry numbered 1, 2, 3, ... in
    turn; `sent` counts what the broker acknowledged (PUBACK received)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._clients: list[Client] = []
        self.next_seq = 1
        self.base = datetime.now(UTC) - timedelta(hours=1)

    async def connect(self) -> None:
        host, port = self._url.removeprefix("mqtt://").split(":")
        self._clients = []
        for robot in ROBOTS:
            client = Client(f"robot-{robot[-4:]}-{uuid.uuid4().hex[:6]}", clean_session=True)
            # Reconnecting is the scenario's to decide (at once, or after the ingest).
            client.set_config({"reconnect_retries": 0})
            await client.connect(host, int(port), version=MQTTv50)
            self._clients.append(client)

    async def publish(self, count: int) -> None:
        """`count` messages, returning once the broker acknowledged every one."""
        for _ in range(count):
            seq = self.next_seq
            client = self._clients[seq % len(self._clients)]
            topic = f"robots/{ROBOTS[seq % len(ROBOTS)]}/telemetry"
            while True:
                try:
                    client.publish(topic, telemetry(seq, self.base), qos=1)
                    break
                except OverflowError:  # every packet id of the window in flight
                    await asyncio.sleep(0.001)
            self.next_seq += 1
        for client in self._clients:
            await asyncio.wait_for(client._persistent_storage.wait_empty(), 30)

    @property
    def sent(self) -> int:
        return self.next_seq - 1

    async def disconnect(self) -> None:
        for client in self._clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 2)
        self._clients = []


@dataclass
class Outcome:
    """What one fault left in PostgreSQL, and how long the service took to recover."""

    fault: str
    sent: int
    stored: int
    duplicated: int
    recovery_s: float

    def report(self) -> None:
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        with REPORT.open("a") as out:
            out.write(orjson.dumps(self.__dict__).decode() + "\n")
        print(
            f"\n{self.fault}: sent {self.sent}, stored {self.stored}, duplicated {self.duplicated}, "
            f"recovered in {self.recovery_s:.2f}s"
        )


async def stored(conn: asyncpg.Connection) -> tuple[int, int]:
    """(distinct (robot, seq) stored, rows beyond one per (robot, seq))."""
    row = await conn.fetchrow(
        "SELECT count(DISTINCT (robot_id, seq)) AS distinct_n, count(*) AS n FROM telemetry WHERE seq >= 1"
    )
    assert row is not None
    return int(row["distinct_n"]), int(row["n"]) - int(row["distinct_n"])


class IngestProcess:
    """`sepulki ingest` as deployed: its own process, persistent session, health on a port."""

    def __init__(self, database_url: str, mqtt_url: str, tmp: Path, **variables: str) -> None:
        self.client_id = f"sepulki-ingest-fault-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.log = tmp / f"ingest-{self.client_id}.log"
        self._env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SEPULKI_")},
            "SEPULKI_DATABASE_URL": database_url,
            "SEPULKI_MQTT_URL": mqtt_url,
            "SEPULKI_MQTT_CLIENT_ID": self.client_id,
            "SEPULKI_LOG_LEVEL": os.environ.get("SEPULKI_FAULT_LOG_LEVEL", "WARNING"),
            "SEPULKI_INGEST_BATCH_SIZE": "200",
            # A real worker: persistent session (the test-suite default has none).
            "SEPULKI_ENV": "development",
            "SEPULKI_MIGRATE_ON_START": "false",
            "SEPULKI_REDIS_URL": "",
            "SEPULKI_HOST": "127.0.0.1",
            "SEPULKI_METRICS_PORT": str(self.port),
            **{f"SEPULKI_{name.upper()}": value for name, value in variables.items()},
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "ingest"], cwd=ROOT, env=self._env, stdout=out, stderr=out
            )

    async def ready(self) -> bool:
        async with httpx.AsyncClient(timeout=2) as http:
            with contextlib.suppress(httpx.TransportError):
                response = await http.get(f"http://127.0.0.1:{self.port}/health/ready")
                return response.status_code == 200
        return False

    async def readiness(self) -> tuple[int, dict[str, Any]] | None:
        async with httpx.AsyncClient(timeout=2) as http:
            with contextlib.suppress(httpx.TransportError):
                response = await http.get(f"http://127.0.0.1:{self.port}/health/ready")
                return response.status_code, response.json()
        return None

    async def wait_ready(self, within: float = 30) -> None:
        deadline = time.monotonic() + within
        while not await self.ready():
            assert self.process is not None and self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "ingest not ready:\n" + self.log.read_text()[-3000:]
            await asyncio.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.asynccontextmanager
async def running_ingest(
    database_url: str, mqtt_url: str, tmp: Path, **variables: str
) -> AsyncIterator[IngestProcess]:
    ingest = IngestProcess(database_url, mqtt_url, tmp, **variables)
    ingest.start()
    try:
        await ingest.wait_ready()
        yield ingest
    finally:
        ingest.stop()
        from app.ingest.mqtt import forget_session

        with contextlib.suppress(Exception):
            await asyncio.wait_for(forget_session(mqtt_url, ingest.client_id), 5)


async def until_stored(conn: asyncpg.Connection, total: int, within: float) -> float:
    """Seconds until `total` distinct messages are stored (fails after `within`)."""
    started = time.monotonic()
    while (await stored(conn))[0] < total:
        assert time.monotonic() - started < within, f"stored {(await stored(conn))[0]} of {total}"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


class RoleProcess:
    """`sepulki serve` (an API replica) or `sepulki worker` in its own process, on loopback
    ports of its own, killable with SIGKILL. `port` serves /health/ready: the API's port, or the
    worker's metrics port."""

    def __init__(self, role: str, database_url: str, tmp: Path, **variables: str) -> None:
        assert role in ("serve", "worker")
        self.role = role
        self.port = free_port()
        self.log = tmp / f"{role}-{self.port}.log"
        self._env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SEPULKI_")},
            "SEPULKI_ENV": "test",
            "SEPULKI_DATABASE_URL": database_url,
            "SEPULKI_HOST": "127.0.0.1",
            "SEPULKI_PORT" if role == "serve" else "SEPULKI_METRICS_PORT": str(self.port),
            "SEPULKI_DATA_DIR": str(tmp / "data"),
            "SEPULKI_MIGRATE_ON_START": "false",
            "SEPULKI_SEED_ON_START": "false",
            "SEPULKI_RATE_LIMIT_STORAGE_URL": "async+memory://",
            "SEPULKI_ARGON2_TIME_COST": "1",
            "SEPULKI_ARGON2_MEMORY_KIB": "1024",
            "SEPULKI_DB_POOL_MIN": "1",
            "SEPULKI_DB_POOL_MAX": "3",
            "SEPULKI_LOG_LEVEL": os.environ.get("SEPULKI_FAULT_LOG_LEVEL", "WARNING"),
            **{f"SEPULKI_{name.upper()}": value for name, value in variables.items()},
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", self.role], cwd=ROOT, env=self._env, stdout=out, stderr=out
            )

    async def wait_ready(self, within: float = 60) -> None:
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(timeout=2) as http:
            while True:
                assert self.process is not None and self.process.poll() is None, self.log.read_text()[-3000:]
                assert time.monotonic() < deadline, f"{self.role} not ready:\n" + self.log.read_text()[-3000:]
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"{self.url}/health/ready")).status_code == 200:
                        return
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.asynccontextmanager
async def running_roles(
    database_url: str, tmp: Path, roles: list[str], **variables: str
) -> AsyncIterator[list[RoleProcess]]:
    """The `roles` started at once (their starts overlap), each stopped when the block ends."""
    processes = [RoleProcess(role, database_url, tmp, **variables) for role in roles]
    try:
        for process in processes:
            process.start()
        await asyncio.gather(*(process.wait_ready() for process in processes))
        yield processes
    finally:
        await asyncio.gather(*(asyncio.to_thread(process.stop) for process in processes))


async def sign_in(api_url: str, email: str, password: str) -> dict[str, str]:
    """A connection_init payload with a bearer token from `login` over HTTP."""
    from tests.support import LOGIN

    async with httpx.AsyncClient(timeout=15) as http:
        response = await http.post(
            f"{api_url}/graphql", json={"query": LOGIN, "variables": {"email": email, "password": password}}
        )
    session = response.json()["data"]["login"]["session"]
    assert session, response.text
    return {"authorization": f"Bearer {session['token']}"}


async def follow(subscription: Any, seen: list[int], states: list[Any] | None = None) -> None:
    """Notes every event id a subscription delivers (and its payload in `states`), until the
    socket goes (a killed server) or the task is cancelled."""
    while True:
        message: Any = await subscription._queue.get()
        if isinstance(message, BaseException):
            return
        if message.get("type") != "next":
            return
        seen.append(int(message["payload"]["extensions"]["eventId"]))
        if states is not None:
            states.append(message["payload"]["data"])


BELLOWS = """
subscription($fleetId: ID!, $after: String) {
  bellowsStream(fleetId: $fleetId, after: $after) { metrics { name value robotId } }
}
"""


async def dashboard(
    ws_url: str, init: dict[str, str], fleet_id: str, after: int, seen: list[int], subscribed: list[float]
) -> None:
    """A client following a fleet's bellowsStream as a dashboard does: whenever its socket or
    subscription ends, it subscribes again with `after` = the last event id it saw (noting when
    in `subscribed`). Until cancelled."""
    from websockets.exceptions import ConnectionClosed

    from tests.wsclient import connected

    while True:
        cursor = str(max(seen, default=after))
        with contextlib.suppress(OSError, ConnectionClosed, AssertionError, TimeoutError):
            async with (
                connected(ws_url, init) as socket,
                socket.subscribe(BELLOWS, {"fleetId": fleet_id, "after": cursor}) as subscription,
            ):
                subscribed.append(time.monotonic())
                await follow(subscription, seen)
        await asyncio.sleep(0.2)
