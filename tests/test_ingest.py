"""Robots publish over MQTT; what they send is stored once, bad input is dead-lettered, the robot
rows follow, and the fleet's subscribers hear about each batch after it committed.

Real Mosquitto (MQTT 5) and real PostgreSQL; robots are gmqtt clients like the firmware's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import io
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from gmqtt import Client
from gmqtt.mqtt.constants import MQTTv50

from app.core.channels import channels
from app.infra import db as database
from app.infra import logs
from app.ingest import pipeline as pipeline_module
from app.ingest.messages import RawMessage
from app.ingest.mqtt import forget_session
from app.ingest.pipeline import Pipeline
from app.ingest.writer import DEAD_LETTER_PREFIX_BYTES, PRUNE_SLICE, prune_dead_letters
from app.settings import Settings
from tests.seed_ids import ALPHA, BETA, DEV_FLEET, WAREHOUSE_BOT_01, WAREHOUSE_BOT_02, WAREHOUSE_FLEET
from tests.servers import MosquittoServer, free_port
from tests.support import ROOT, Api

NOBODY = "7fffffff-0000-4000-8000-00000000dead"
POSE = {
    "position": {"x": 12.5, "y": 8.0, "z": 0.0},
    "orientation": {"x": 0.0, "y": 0.0, "z": 0.38, "w": 0.92},
}


def now_iso(offset_s: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset_s)).isoformat()


def telemetry(seq: int | None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"ts": now_iso(), "metrics": {"CPU_USAGE": 35.2, "MOTOR_TEMPERATURE": 48.1}}
    if seq is not None:
        body["seq"] = seq
    return body | fields


async def eventually(check: Callable[[], Any], within: float = 10.0, what: str = "condition") -> Any:
    """The first truthy result of `check` (plain or async), polled for `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


class Robot:
    """One robot's MQTT 5 connection (gmqtt, QoS 1), as the firmware would hold it."""

    def __init__(self, client: Client, robot_id: str) -> None:
        self.client = client
        self.robot_id = robot_id

    def send(self, kind: str, body: dict[str, Any] | bytes, *, retain: bool = False) -> None:
        payload = body if isinstance(body, bytes) else orjson.dumps(body)
        topic = f"robots/{self.robot_id}/{'commands/ack' if kind == 'ack' else kind}"
        publish_qos1(self.client, topic, payload, retain=retain)


def publish_qos1(client: Client, topic: str, payload: bytes, *, retain: bool = False) -> None:
    client.publish(topic, payload, qos=1, retain=retain)


async def publish_many(client: Client, messages: list[tuple[str, bytes]]) -> None:
    """QoS 1 publishes as fast as the broker's receive window allows (gmqtt raises OverflowError
    when all packet ids of the window are in flight: yield and retry)."""
    for topic, payload in messages:
        while True:
            try:
                client.publish(topic, payload, qos=1)
                break
            except OverflowError:
                await asyncio.sleep(0.001)


@contextlib.asynccontextmanager
async def robot_client(
    url: str, robot_id: str, *, client_id: str | None = None, clean: bool = True
) -> AsyncIterator[Robot]:
    host, port = url.removeprefix("mqtt://").split(":")
    client_id = client_id or f"robot-{robot_id[-4:]}-{uuid.uuid4().hex[:6]}"
    # A persistent session (clean=False) keeps the robot's unacknowledged publishes across a reconnect.
    client = Client(client_id, clean_session=clean, session_expiry_interval=0 if clean else 600)
    await client.connect(host, int(port), version=MQTTv50)
    try:
        yield Robot(client, robot_id)
    finally:
        await client.disconnect()


def ingest_settings(settings: Settings, mosquitto: MosquittoServer, **changes: Any) -> Settings:
    client_id = f"sepulki-ingest-test-{uuid.uuid4().hex[:8]}"
    return settings.replace(mqtt_url=mosquitto.url, mqtt_client_id=client_id, **changes)


async def clear_retained_status(url: str, robot_ids: list[str]) -> None:
    """Other tests leave robots' retained statuses on the shared broker; an empty retained
    message removes one (and the ingest ignores it)."""
    async with robot_client(url, robot_ids[0]) as robot:
        for robot_id in robot_ids:
            publish_qos1(robot.client, f"robots/{robot_id}/status", b"", retain=True)
        await asyncio.sleep(0.05)


# The seed's hour of demo telemetry and its event would blur what the robots below send.
CLEAR_HISTORY = "TRUNCATE telemetry, robot_events, dead_letters, event_log"


@contextlib.asynccontextmanager
async def ingesting(settings: Settings) -> AsyncIterator[Api]:
    """The API with its MQTT ingest subscribed, on a database without telemetry history."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(CLEAR_HISTORY)
    finally:
        await conn.close()
    async with Api.running(settings) as api:
        consumer = api.components.mqtt_ingest
        async with asyncio.timeout(10):
            await consumer.subscribed.wait()
        yield api


@pytest.fixture
async def ingest(settings: Settings, mosquitto: MosquittoServer) -> AsyncIterator[Api]:
    await clear_retained_status(mosquitto.url, [ALPHA, BETA, WAREHOUSE_BOT_01, WAREHOUSE_BOT_02])
    async with ingesting(ingest_settings(settings, mosquitto)) as api:
        yield api


def counted(api: Api, outcome: str, reason: str | None = None) -> int:
    metrics = api.components.pipeline.metrics
    if reason is not None:
        return int(metrics.rejected[reason])
    return int(metrics.total(outcome))


async def robot_row(api: Api, robot_id: str) -> dict[str, Any]:
    return dict(await api.resources.db.fetchrow("SELECT * FROM robots WHERE id = $1", robot_id))


async def samples_of(api: Api, robot_id: str) -> list[dict[str, Any]]:
    rows = await api.resources.db.fetch(
        "SELECT * FROM telemetry WHERE robot_id = $1 AND seq >= 0 ORDER BY seq", robot_id
    )
    return [dict(r) for r in rows]


async def test_robot_telemetry_is_stored_and_updates_the_robot_row(
    ingest: Api, mosquitto: MosquittoServer
) -> None:
    sent = telemetry(1, batteryLevel=77.5, healthScore=93.0, pose=POSE)
    async with robot_client(mosquitto.url, ALPHA) as robot:
        robot.send("telemetry", sent)
        rows = await eventually(lambda: samples_of(ingest, ALPHA), what="the telemetry row")
    assert len(rows) == 1
    row = rows[0]
    assert (row["seq"], row["fleet_id"], row["battery_level"], row["health_score"]) == (
        1,
        DEV_FLEET,
        77.5,
        93.0,
    )
    assert row["ts"] == datetime.fromisoformat(sent["ts"])
    assert row["metrics"] == {"CPU_USAGE": 35.2, "MOTOR_TEMPERATURE": 48.1}
    assert row["pose"] == POSE
    robot_now = await robot_row(ingest, ALPHA)
    assert robot_now["battery_level"] == 77.5
    assert robot_now["health_score"] == 93.0
    assert robot_now["last_seen"] == datetime.fromisoformat(sent["ts"])
    assert robot_now["last_pose"]["position"] == POSE["position"]
    assert counted(ingest, "stored") == 1


async def test_telemetry_sent_at_qos_0_is_stored_too(ingest: Api, mosquitto: MosquittoServer) -> None:
    # QoS 0 has no acknowledgement: it takes gmqtt's on_message path, QoS 1 the packet-handler one.
    async with robot_client(mosquitto.url, WAREHOUSE_BOT_02) as robot:
        sample = orjson.dumps(telemetry(3, batteryLevel=42.0))
        robot.client.publish(f"robots/{WAREHOUSE_BOT_02}/telemetry", sample, qos=0)
        rows = await eventually(lambda: samples_of(ingest, WAREHOUSE_BOT_02), what="the QoS 0 sample")
    assert [(r["seq"], r["battery_level"]) for r in rows] == [(3, 42.0)]
    assert (await robot_row(ingest, WAREHOUSE_BOT_02))["battery_level"] == 42.0
    assert counted(ingest, "stored") == 1


async def test_redelivered_telemetry_is_counted_as_duplicate_and_stored_once(
    ingest: Api, mosquitto: MosquittoServer
) -> None:
    sent = orjson.dumps(telemetry(7, batteryLevel=60.0))
    async with robot_client(mosquitto.url, BETA) as robot:
        robot.send("telemetry", sent)
        await eventually(lambda: samples_of(ingest, BETA), what="the first copy")
        robot.send("telemetry", sent)  # the same message again, as after a lost PUBACK
        await eventually(lambda: counted(ingest, "duplicate"), what="the duplicate")
    assert len(await samples_of(ingest, BETA)) == 1
    assert (counted(ingest, "stored"), counted(ingest, "duplicate")) == (1, 1)


BAD_INPUT = [
    # (robot, payload, reason)
    (ALPHA, b'{"seq": 1, "ts": ', "malformed_json"),
    (ALPHA, b"[1, 2, 3]", "invalid_type"),
    (NOBODY, orjson.dumps(telemetry(1)), "unknown_robot"),
    (WAREHOUSE_BOT_01, orjson.dumps(telemetry(2, robotId=WAREHOUSE_BOT_02)), "robot_mismatch"),
    (ALPHA, orjson.dumps(telemetry(3, batteryLevel="full")), "invalid_type"),
    (ALPHA, orjson.dumps(telemetry(4, healthScore=140)), "out_of_range"),
    (ALPHA, orjson.dumps(telemetry(-5)), "out_of_range"),
    (ALPHA, orjson.dumps(telemetry(6, metrics={"CPU_USAGE": "hot"})), "invalid_type"),
    (ALPHA, orjson.dumps({"seq": 8, "metrics": {}}), "missing_field"),
    (ALPHA, orjson.dumps(telemetry(9, ts="yesterday")), "invalid_timestamp"),
    (ALPHA, orjson.dumps(telemetry(12, ts="0001-01-01T00:00:00+14:00")), "out_of_range"),
    (ALPHA, orjson.dumps(telemetry(10, pose={"position": {"x": 1}})), "missing_field"),
    (ALPHA, orjson.dumps(telemetry(11, notes="x" * 3000)), "oversized"),
]


async def test_bad_input_is_dead_lettered_while_good_messages_of_the_batch_are_stored(
    settings: Settings, mosquitto: MosquittoServer
) -> None:
    # A long window and a large batch: everything published below commits in one transaction.
    configured = ingest_settings(settings, mosquitto, ingest_batch_ms=400, ingest_max_payload_bytes=2048)
    async with ingesting(configured) as api, robot_client(mosquitto.url, ALPHA) as robot:
        good = telemetry(100, batteryLevel=50.0)
        robot.send("telemetry", good)
        for robot_id, payload, _ in BAD_INPUT:
            publish_qos1(robot.client, f"robots/{robot_id}/telemetry", payload)
        robot.send("telemetry", telemetry(101, batteryLevel=51.0))
        rows = await eventually(
            lambda: api.resources.db.fetch("SELECT * FROM dead_letters ORDER BY id"),
            what="the dead letters",
        )
        stored = await samples_of(api, ALPHA)
        battery = (await robot_row(api, ALPHA))["battery_level"]
        out_of_range = counted(api, "rejected", "out_of_range")
    assert [r["reason"] for r in rows] == [reason for _, _, reason in BAD_INPUT]
    assert [bytes(r["payload"]) for r in rows] == [payload for _, payload, _ in BAD_INPUT]
    assert all(r["source"] == "mqtt" and r["detail"] for r in rows)
    assert rows[2]["robot_id"] == NOBODY and rows[2]["topic"] == f"robots/{NOBODY}/telemetry"
    assert [s["seq"] for s in stored] == [100, 101]
    # One transaction: now() is the same in both tables.
    assert {r["received_at"] for r in rows} == {stored[0]["received_at"]}
    assert out_of_range == 3
    assert battery == 51.0


async def test_pipeline_answers_each_item_after_commit(api: Api) -> None:
    """The contract HTTP ingest codes against: one outcome per item, in order."""
    pipeline: Pipeline = api.components.pipeline
    await api.resources.db.execute(CLEAR_HISTORY)
    await api.resources.db.execute("UPDATE robots SET deleted_at = now() WHERE id = $1", WAREHOUSE_BOT_02)
    good = orjson.dumps(telemetry(1))
    items = [
        RawMessage(
            "http", f"robots/{ALPHA}/telemetry", ALPHA, "telemetry", good, authenticated_robot_id=ALPHA
        ),
        RawMessage(
            "http", f"robots/{ALPHA}/telemetry", ALPHA, "telemetry", good, authenticated_robot_id=ALPHA
        ),
        RawMessage(
            "http", f"robots/{ALPHA}/telemetry", ALPHA, "telemetry", good, authenticated_robot_id=BETA
        ),
        RawMessage("http", f"robots/{WAREHOUSE_BOT_02}/telemetry", WAREHOUSE_BOT_02, "telemetry", good),
        RawMessage("http", f"robots/{ALPHA}/status", ALPHA, "status", b'{"status": "DANCING", "ts": "x"}'),
        RawMessage(
            "http",
            f"robots/{ALPHA}/status",
            ALPHA,
            "status",
            orjson.dumps({"status": "CHARGING", "ts": now_iso()}),
        ),
    ]
    outcomes = await pipeline.submit(items)
    assert [(o.status, o.reason) for o in outcomes] == [
        ("stored", None),
        ("duplicate", None),
        ("rejected", "robot_mismatch"),
        ("rejected", "unknown_robot"),
        ("rejected", "invalid_value"),
        ("stored", None),
    ]
    # Answered after the commit: another connection sees the rows already.
    assert (
        await api.resources.db.fetchval(
            "SELECT count(*) FROM telemetry WHERE robot_id = $1 AND seq = 1", ALPHA
        )
        == 1
    )
    assert await api.resources.db.fetchval("SELECT count(*) FROM dead_letters") == 3
    assert (await robot_row(api, ALPHA))["status"] == "CHARGING"


async def test_a_message_the_database_refuses_is_dead_lettered_and_the_rest_stored(
    settings: Settings,
) -> None:
    """Whatever slips past validation and fails in the database is found by splitting the batch."""

    async def refuse_one(conn: asyncpg.Connection, acks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if any(a["command_id"] == POISON for a in acks):
            raise asyncpg.DataError("refused by the command outbox")
        return []

    async with Api.running(settings) as api:
        await api.resources.db.execute(CLEAR_HISTORY)
        pipeline = Pipeline(api.resources.db, None, settings, apply_acks=refuse_one)
        async with pipeline:
            good = [
                RawMessage(
                    "mqtt", f"robots/{ALPHA}/telemetry", ALPHA, "telemetry", orjson.dumps(telemetry(seq))
                )
                for seq in range(1, 6)
            ]
            poison = orjson.dumps({"commandId": POISON, "state": "RECEIVED"})
            ack = RawMessage("mqtt", f"robots/{ALPHA}/commands/ack", ALPHA, "ack", poison)
            outcomes = await pipeline.submit([*good[:2], ack, *good[2:]])
        assert [o.status for o in outcomes] == ["stored", "stored", "rejected", "stored", "stored", "stored"]
        assert outcomes[2].reason == "storage_error" and "refused by the command outbox" in (
            outcomes[2].detail or ""
        )
        letters = await api.resources.db.fetch("SELECT reason, payload FROM dead_letters")
        assert [(r["reason"], bytes(r["payload"])) for r in letters] == [("storage_error", poison)]
        assert [s["seq"] for s in await samples_of(api, ALPHA)] == [1, 2, 3, 4, 5]


POISON = "c0000000-0000-4000-8000-00000000dead"


async def test_log_lines_about_one_robot_carry_its_robot_id_in_json(settings: Settings) -> None:
    """An unknown robot's messages and a message the database refuses are logged with the robot's
    id in the JSON line's robot_id, not only in the message text."""

    async def refuse(conn: asyncpg.Connection, acks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        raise asyncpg.DataError("refused by the command outbox")

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(logs.ContextFilter())
    handler.setFormatter(logs.json_formatter())
    logger = logging.getLogger("sepulki.ingest")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        async with Api.running(settings) as api:
            await api.resources.db.execute(CLEAR_HISTORY)
            async with Pipeline(api.resources.db, None, settings, apply_acks=refuse) as pipeline:
                stray = orjson.dumps(telemetry(1))
                ack = orjson.dumps({"commandId": POISON, "state": "RECEIVED"})
                outcomes = await pipeline.submit(
                    [
                        RawMessage("mqtt", f"robots/{NOBODY}/telemetry", NOBODY, "telemetry", stray),
                        RawMessage("mqtt", f"robots/{ALPHA}/commands/ack", ALPHA, "ack", ack),
                    ]
                )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert [o.reason for o in outcomes] == ["unknown_robot", "storage_error"]
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    unknown = [line for line in lines if "unknown robot" in line["message"]]
    refused = [line for line in lines if "not storable" in line["message"]]
    assert len(unknown) == 1 and unknown[0]["robot_id"] == NOBODY
    assert unknown[0]["logger"] == "sepulki.ingest" and unknown[0]["level"] == "INFO"
    assert len(refused) == 1 and refused[0]["robot_id"] == ALPHA


async def test_a_batch_whose_statement_goes_unanswered_is_retried_and_committed_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A statement that never returns (here: waiting on a robot row another transaction holds)
    fails its attempt after ATTEMPT_TIMEOUT_S instead of stalling the writer; the batch is not
    answered before a commit, and is stored once when the row is free again."""
    monkeypatch.setattr(pipeline_module, "ATTEMPT_TIMEOUT_S", 0.5)
    async with Api.running(settings) as api:
        await api.resources.db.execute(CLEAR_HISTORY)
        blocker = await asyncpg.connect(api.resources.settings.database_url)
        try:
            holding = blocker.transaction()
            await holding.start()
            await blocker.execute("SELECT 1 FROM robots WHERE id::text = $1 FOR UPDATE", ALPHA)
            async with Pipeline(api.resources.db, None, settings) as pipeline:
                sample = orjson.dumps(telemetry(1))
                message = RawMessage("mqtt", f"robots/{ALPHA}/telemetry", ALPHA, "telemetry", sample)
                answer = asyncio.ensure_future(pipeline.submit([message]))
                await eventually(lambda: pipeline.metrics.batch_retries >= 2, what="two timed-out attempts")
                assert not answer.done()  # not acknowledged while nothing is committed
                await holding.rollback()
                outcomes = await asyncio.wait_for(answer, 10)
        finally:
            await blocker.close()
        # The first attempts' statements may still have run once the row was free: stored once.
        assert outcomes[0].status in ("stored", "duplicate")
        count = await api.resources.db.fetchval(
            "SELECT count(*) FROM telemetry WHERE robot_id = $1 AND seq = 1", ALPHA
        )
        assert count == 1


async def test_two_workers_writing_the_same_robots_do_not_deadlock(api: Api) -> None:
    """Workers sharing the load ($share) commit batches about the same robots at the same time."""
    await api.resources.db.execute(CLEAR_HISTORY)
    settings = api.resources.settings
    robots = [ALPHA, BETA, WAREHOUSE_BOT_01, WAREHOUSE_BOT_02]

    def batch(order: list[str], first_seq: int) -> list[RawMessage]:
        return [
            RawMessage(
                "mqtt", f"robots/{rid}/telemetry", rid, "telemetry", orjson.dumps(telemetry(first_seq + i))
            )
            for i, rid in enumerate(order * 25)
        ]

    async with (
        Pipeline(api.resources.db, None, settings) as one,
        Pipeline(api.resources.db, None, settings) as two,
    ):
        for round_ in range(10):
            seq = 1000 * round_
            outcomes = await asyncio.gather(
                one.submit(batch(robots, seq)), two.submit(batch(robots[::-1], seq + 500))
            )
            assert {o.status for result in outcomes for o in result} == {"stored"}
        retries = one.metrics.batch_retries + two.metrics.batch_retries
    assert retries == 0
    assert await api.resources.db.fetchval("SELECT count(*) FROM telemetry") == 10 * 2 * 100


async def test_retained_status_and_last_will_set_the_robot_status(
    settings: Settings, mosquitto: MosquittoServer
) -> None:
    await clear_retained_status(mosquitto.url, [WAREHOUSE_BOT_01])
    # Published before the ingest runs: the broker keeps it and hands it over on subscribe.
    async with robot_client(mosquitto.url, WAREHOUSE_BOT_01) as robot:
        robot.send("status", {"status": "MAINTENANCE", "ts": now_iso(-60)}, retain=True)
        await asyncio.sleep(0.1)
    async with ingesting(ingest_settings(settings, mosquitto)) as api:
        await eventually(
            lambda: robot_status_is(api, WAREHOUSE_BOT_01, "MAINTENANCE"), what="the retained status"
        )
        # The robot comes online with a Last Will, reports WORKING, then its link dies.
        will = orjson.dumps({"status": "OFFLINE", "ts": now_iso()})
        with connected_with_will(
            mosquitto.port, f"robot-{WAREHOUSE_BOT_01[-4:]}", f"robots/{WAREHOUSE_BOT_01}/status", will
        ) as link:
            async with robot_client(mosquitto.url, WAREHOUSE_BOT_01) as robot:
                robot.send("status", {"status": "WORKING", "ts": now_iso(1)}, retain=True)
                await eventually(lambda: robot_status_is(api, WAREHOUSE_BOT_01, "WORKING"), what="WORKING")
            link.close()  # no DISCONNECT packet: the broker publishes the will
        await eventually(lambda: robot_status_is(api, WAREHOUSE_BOT_01, "OFFLINE"), what="the Last Will")
        statuses = await api.resources.db.fetch(
            "SELECT status::text FROM telemetry WHERE robot_id = $1 AND seq < 0 ORDER BY ts", WAREHOUSE_BOT_01
        )
    assert [r["status"] for r in statuses] == ["MAINTENANCE", "OFFLINE", "WORKING"]
    await clear_retained_status(mosquitto.url, [WAREHOUSE_BOT_01])


async def robot_status_is(api: Api, robot_id: str, status: str) -> bool:
    return (await robot_row(api, robot_id))["status"] == status


@contextlib.contextmanager
def connected_with_will(port: int, client_id: str, topic: str, payload: bytes) -> Any:
    """A bare MQTT 3.1.1 connection that registers a retained QoS 1 Last Will; closing the socket
    without DISCONNECT is a robot losing power."""

    def text(value: str | bytes) -> bytes:
        data = value.encode() if isinstance(value, str) else value
        return struct.pack("!H", len(data)) + data

    # Flags: will retain (0x20), will QoS 1 (0x08), will (0x04), clean session (0x02).
    body = text("MQTT") + bytes([4, 0x20 | 0x08 | 0x04 | 0x02]) + struct.pack("!H", 30)
    body += text(client_id) + text(topic) + text(payload)
    length, remaining = b"", len(body)
    while True:  # MQTT's variable-length integer: 7 bits a byte, high bit = more
        remaining, digit = divmod(remaining, 128)
        length += bytes([digit | (0x80 if remaining else 0)])
        if not remaining:
            break
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        sock.sendall(b"\x10" + length + body)
        assert sock.recv(4) == b"\x20\x02\x00\x00", "CONNACK refused"
        yield sock
    finally:
        sock.close()


async def test_robot_event_lands_in_robot_events_and_on_the_fleet_stream(
    ingest: Api, mosquitto: MosquittoServer
) -> None:
    event = {
        "seq": 3,
        "ts": now_iso(),
        "type": "OBSTACLE",
        "severity": "WARNING",
        "message": "Obstacle at 0.4 m",
        "data": {"distance": 0.4},
    }
    async with (
        ingest.resources.events.subscribe(channels.bellows(WAREHOUSE_FLEET)) as stream,
        robot_client(mosquitto.url, WAREHOUSE_BOT_01) as robot,
    ):
        robot.send("events", event)
        async with asyncio.timeout(10):
            published = await anext(stream)
    row = await ingest.resources.db.fetchrow(
        "SELECT * FROM robot_events WHERE robot_id = $1", WAREHOUSE_BOT_01
    )
    assert row is not None
    assert (row["seq"], row["type"], row["severity"], row["message"]) == (
        3,
        "OBSTACLE",
        "WARNING",
        "Obstacle at 0.4 m",
    )
    assert row["data"] == {"distance": 0.4} and row["fleet_id"] == WAREHOUSE_FLEET
    assert published["fleet_id"] == WAREHOUSE_FLEET and published["samples"] == []
    [sent] = published["events"]
    assert datetime.fromisoformat(sent.pop("timestamp")) == row["ts"]
    assert sent == {
        "id": str(row["id"]),
        "robot_id": WAREHOUSE_BOT_01,
        "type": "OBSTACLE",
        "data": {"distance": 0.4},
        "message": "Obstacle at 0.4 m",
        "severity": "WARNING",
    }


async def test_fleet_channel_gets_one_message_per_batch(api: Api) -> None:
    pipeline: Pipeline = api.components.pipeline
    await api.resources.db.execute(CLEAR_HISTORY)
    events = api.resources.events
    batch = [
        RawMessage(
            "mqtt",
            f"robots/{rid}/telemetry",
            rid,
            "telemetry",
            orjson.dumps(telemetry(seq, batteryLevel=90.0 - seq)),
        )
        for seq in range(1, 4)
        for rid in (ALPHA, BETA)
    ]
    batch.append(
        RawMessage(
            "mqtt", f"robots/{BETA}/events", BETA, "events", orjson.dumps({"ts": now_iso(), "type": "DOCKED"})
        )
    )
    async with (
        events.subscribe(channels.bellows(DEV_FLEET)) as fleet,
        events.subscribe(channels.ROBOT_STATUS_ALL) as statuses,
    ):
        outcomes = await pipeline.submit(batch)
        assert {o.status for o in outcomes} == {"stored"}
        async with asyncio.timeout(5):
            message = await anext(fleet)
            robots = [await anext(statuses), await anext(statuses)]
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await anext(fleet)
    assert message["real_time"] is True
    # Every sample of the batch, in order per robot (robots by id): 2 robots, 3 samples each.
    assert [(m["robot_id"], m["seq"], m["battery_level"]) for m in message["samples"]] == [
        (rid, seq, 90.0 - seq) for rid in sorted((ALPHA, BETA)) for seq in (1, 2, 3)
    ]
    assert all(set(m["metrics"]) == {"CPU_USAGE", "MOTOR_TEMPERATURE"} for m in message["samples"])
    assert [e["type"] for e in message["events"]] == ["DOCKED"]
    assert sorted((r["id"], r["battery_level"]) for r in robots) == [(ALPHA, 87.0), (BETA, 87.0)]
    logged = await api.resources.db.fetch("SELECT channels FROM event_log ORDER BY id")
    assert [r["channels"] for r in logged] == [
        [channels.bellows(DEV_FLEET)],
        [channels.robot_status(ALPHA), channels.ROBOT_STATUS_ALL],
        [channels.robot_status(BETA), channels.ROBOT_STATUS_ALL],
    ]


async def test_metrics_endpoint_counts_messages_in_prometheus_format(api: Api) -> None:
    pipeline: Pipeline = api.components.pipeline
    # A seq of its own: the seed holds ALPHA's seq 1..60 of the last hour, and a seq repeated
    # within 24 hours is a duplicate.
    sample = orjson.dumps(telemetry(1001))
    await pipeline.submit(
        [
            RawMessage("http", f"robots/{ALPHA}/telemetry", ALPHA, "telemetry", sample),
            RawMessage("http", f"robots/{ALPHA}/telemetry", ALPHA, "telemetry", b"{"),
        ]
    )
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = response.text.splitlines()
    # prometheus-client writes labels in alphabetical order.
    assert 'sepulki_ingest_messages_total{kind="telemetry",outcome="stored",source="http"} 1.0' in lines
    assert 'sepulki_ingest_dead_letters_total{reason="malformed_json"} 1.0' in lines
    assert "sepulki_ingest_batches_total 1.0" in lines


# --- The SIGKILL story -------------------------------------------------------------------------


def start_worker(
    database_url: str, mosquitto: MosquittoServer, client_id: str, metrics_port: int = 0
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SEPULKI_DATABASE_URL": database_url,
        "SEPULKI_MQTT_URL": mosquitto.url,
        "SEPULKI_MQTT_CLIENT_ID": client_id,
        "SEPULKI_LOG_LEVEL": "WARNING",
        "SEPULKI_INGEST_BATCH_SIZE": "200",
        # A real worker: persistent session (not the test-suite default), in-process event bus.
        "SEPULKI_ENV": "development",
        "SEPULKI_REDIS_URL": "",
        "SEPULKI_METRICS_PORT": str(metrics_port),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "ingest"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL
    )


async def test_killed_ingest_worker_loses_and_duplicates_nothing(
    database_url: str, mosquitto: MosquittoServer
) -> None:
    total = 3000
    robots = [ALPHA, BETA, WAREHOUSE_BOT_01, WAREHOUSE_BOT_02]
    worker_id = f"sepulki-ingest-kill-{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(database_url)
    await conn.execute(CLEAR_HISTORY)

    async def stored() -> int:
        return int(await conn.fetchval("SELECT count(*) FROM telemetry WHERE seq >= 0"))

    worker = start_worker(database_url, mosquitto, worker_id)
    try:
        async with robot_client(mosquitto.url, ALPHA, clean=False) as publisher:
            # The worker is consuming once a probe is stored (the same probe again until then:
            # before the worker's first subscription the broker has nobody to queue it for).
            probe = orjson.dumps(telemetry(0))
            deadline = time.monotonic() + 30
            while not await stored():
                assert time.monotonic() < deadline and worker.poll() is None, "the worker did not start"
                publish_qos1(publisher.client, f"robots/{ALPHA}/telemetry", probe)
                await asyncio.sleep(0.2)
            base = datetime.now(UTC)
            messages = [
                (
                    f"robots/{robots[i % 4]}/telemetry",
                    orjson.dumps(
                        {
                            "seq": i,
                            "ts": (base + timedelta(milliseconds=i)).isoformat(),
                            "metrics": {"CPU_USAGE": 1.0},
                        }
                    ),
                )
                for i in range(1, total + 1)
            ]
            chunk = 100
            killed_at = None
            for start in range(0, total, chunk):
                await publish_many(publisher.client, messages[start : start + chunk])
                await asyncio.sleep(0.02)
                if killed_at is None and await stored() >= total // 4:
                    worker.send_signal(signal.SIGKILL)  # no goodbye: mid-batch, PUBACKs unsent
                    worker.wait(timeout=10)
                    killed_at = await stored()
            assert killed_at is not None and killed_at < total, (
                "the worker finished before it could be killed"
            )
            worker = start_worker(database_url, mosquitto, worker_id)
            await eventually(lambda: count_is(conn, total + 1), within=60, what="every message")
        rows = await conn.fetch("SELECT robot_id::text, seq FROM telemetry WHERE seq >= 0")
        assert len(rows) == total + 1
        assert sorted(r["seq"] for r in rows) == list(range(total + 1))
        assert all(r["robot_id"] == robots[r["seq"] % 4] for r in rows if r["seq"] > 0)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
        await conn.close()
        await forget_session(mosquitto.url, worker_id)


async def test_a_standalone_ingest_worker_serves_its_counters(
    database_url: str, mosquitto: MosquittoServer
) -> None:
    port = free_port()
    worker_id = f"sepulki-ingest-metrics-{uuid.uuid4().hex[:8]}"
    worker = start_worker(database_url, mosquitto, worker_id, metrics_port=port)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

            async def scrape() -> str | None:
                with contextlib.suppress(httpx.TransportError):
                    response = await http.get("/metrics")
                    if response.status_code == 200 and 'outcome="stored"' in response.text:
                        return response.text
                return None

            async with robot_client(mosquitto.url, ALPHA, clean=False) as robot:
                # Published until one is counted: the worker may not have subscribed yet.
                async def stored_one() -> str | None:
                    publish_qos1(robot.client, f"robots/{ALPHA}/telemetry", orjson.dumps(telemetry(0)))
                    return await scrape()

                text = await eventually(stored_one, within=30, what="a stored message on /metrics")
        assert worker.poll() is None
        assert text.startswith("# HELP") and "sepulki_ingest_messages_total" in text
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            assert worker.wait(timeout=15) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
            await forget_session(mosquitto.url, worker_id)


async def count_is(conn: asyncpg.Connection, expected: int) -> bool:
    return int(await conn.fetchval("SELECT count(*) FROM telemetry WHERE seq >= 0")) >= expected


async def test_an_oversized_message_is_dead_lettered_as_a_bounded_prefix_and_its_neighbours_are_stored(
    ingest: Api, mosquitto: MosquittoServer
) -> None:
    # Under the test broker's 1 MiB packet limit and far over the 64 KiB ingest limit.
    big = orjson.dumps(telemetry(2002, notes="x" * 900_000))
    noise = os.urandom(200_000)  # not JSON, not even text
    async with robot_client(mosquitto.url, ALPHA) as robot:
        robot.send("telemetry", telemetry(2001, batteryLevel=70.0))
        robot.send("telemetry", big)
        robot.send("events", noise)
        robot.send("telemetry", telemetry(2003, batteryLevel=69.0))
        robot.send("events", {"seq": 2004, "ts": now_iso(), "type": "OBSTACLE_DETECTED"})
        await eventually(
            lambda: counted(ingest, "stored") + counted(ingest, "rejected") >= 5, what="all five messages"
        )
    letters = await ingest.resources.db.fetch(
        "SELECT reason, topic, payload, payload_size, payload_sha256 FROM dead_letters ORDER BY id"
    )
    assert [(r["reason"], r["topic"]) for r in letters] == [
        ("oversized", f"robots/{ALPHA}/telemetry"),
        ("oversized", f"robots/{ALPHA}/events"),
    ]
    for letter, sent in zip(letters, [big, noise], strict=True):
        assert bytes(letter["payload"]) == sent[:DEAD_LETTER_PREFIX_BYTES]
        assert letter["payload_size"] == len(sent)
        assert bytes(letter["payload_sha256"]) == hashlib.sha256(sent).digest()
    stored_bytes = await ingest.resources.db.fetchval("SELECT sum(octet_length(payload)) FROM dead_letters")
    assert stored_bytes == 2 * DEAD_LETTER_PREFIX_BYTES
    # Nothing around them is lost.
    assert [s["seq"] for s in await samples_of(ingest, ALPHA)] == [2001, 2003]
    events = await ingest.resources.db.fetch("SELECT seq, type FROM robot_events WHERE robot_id = $1", ALPHA)
    assert [(e["seq"], e["type"]) for e in events] == [(2004, "OBSTACLE_DETECTED")]
    assert (await robot_row(ingest, ALPHA))["battery_level"] == 69.0
    assert (counted(ingest, "stored"), counted(ingest, "rejected", "oversized")) == (3, 2)


async def test_a_small_rejected_message_is_kept_whole_with_its_size_and_hash(api: Api) -> None:
    await api.resources.db.execute(CLEAR_HISTORY)
    payload = b'{"seq": 1, "ts": '
    raw = RawMessage("http", f"robots/{ALPHA}/telemetry", ALPHA, "telemetry", payload)
    [outcome] = await api.components.pipeline.submit([raw])
    assert outcome.reason == "malformed_json"
    letter = await api.resources.db.fetchrow("SELECT payload, payload_size, payload_sha256 FROM dead_letters")
    assert (bytes(letter["payload"]), letter["payload_size"]) == (payload, len(payload))
    assert bytes(letter["payload_sha256"]) == hashlib.sha256(payload).digest()


INSERT_DEAD_LETTERS = """
INSERT INTO dead_letters (source, topic, robot_id, reason, detail, payload, payload_size, payload_sha256,
                          received_at)
SELECT 'mqtt', 'robots/x/telemetry', 'x', 'malformed_json', $2, '\\x7b', 1, sha256('\\x7b'),
       now() - make_interval(secs => $3)
FROM generate_series(1, $1)
"""


async def test_dead_letters_past_the_retention_are_pruned_and_recent_ones_kept(api: Api) -> None:
    db = api.resources.db
    await db.execute(CLEAR_HISTORY)
    week = 7 * 86400
    # More old rows than one pruning slice, so that pruning goes on until none is left.
    await db.execute(INSERT_DEAD_LETTERS, PRUNE_SLICE + 5, "old", float(week + 60))
    await db.execute(INSERT_DEAD_LETTERS, 3, "recent", float(week - 60))
    await db.execute(INSERT_DEAD_LETTERS, 2, "new", 0.0)
    assert await prune_dead_letters(db, week) == PRUNE_SLICE + 5
    rows = await db.fetch("SELECT detail, count(*) AS n FROM dead_letters GROUP BY detail")
    assert {r["detail"]: r["n"] for r in rows} == {"recent": 3, "new": 2}
    assert await prune_dead_letters(db, week) == 0


async def test_the_api_prunes_dead_letters_by_the_configured_retention(settings: Settings) -> None:
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(CLEAR_HISTORY)
        await conn.execute(INSERT_DEAD_LETTERS, 2, "old", 7200.0)
        await conn.execute(INSERT_DEAD_LETTERS, 1, "recent", 60.0)
    finally:
        await conn.close()
    # Housekeeping runs at start, then hourly.
    async with Api.running(settings.replace(dead_letter_retention_s=3600)) as api:

        async def only_recent_left() -> bool:
            rows = await api.resources.db.fetch("SELECT detail FROM dead_letters")
            return [r["detail"] for r in rows] == ["recent"]

        assert await eventually(only_recent_left, what="the old dead letters pruned")


async def test_the_migration_cuts_existing_dead_letters_down_to_their_prefix(
    postgres_url: str, tmp_path: Any
) -> None:
    # The migrations before this one, applied to an empty database holding one large dead letter.
    earlier = tmp_path / "migrations"
    earlier.mkdir()
    for path in sorted(database.MIGRATIONS.glob("*.sql")):
        if path.name < "20261202_01_dead_letter_bounds.sql":
            (earlier / path.name).write_bytes(path.read_bytes())
    name = f"sepulki_dead_letter_migration_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(postgres_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = postgres_url.rpartition("/")[0] + "/" + name
    big = os.urandom(50_000)
    try:
        await database.migrate(url, earlier)
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "INSERT INTO dead_letters (source, reason, payload) VALUES ('mqtt', 'oversized', $1), "
                "('http', 'malformed_json', '\\x7b')",
                big,
            )
            await database.migrate(url)
            rows = await conn.fetch(
                "SELECT payload, payload_size, payload_sha256 FROM dead_letters ORDER BY id"
            )
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    assert [(bytes(r["payload"]), r["payload_size"], bytes(r["payload_sha256"])) for r in rows] == [
        (big[:DEAD_LETTER_PREFIX_BYTES], len(big), hashlib.sha256(big).digest()),
        (b"{", 1, hashlib.sha256(b"{").digest()),
    ]
