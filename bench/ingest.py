"""MQTT ingest throughput: QoS 1 telemetry, Mosquitto -> ingest pipeline -> committed rows, against
raw Mosquitto -> a bare gmqtt subscriber that only counts, in the same run.

    .venv/bin/python -m bench.ingest [--messages 30000] [--rounds 3] [--robots 100] [--burst 10]

Starts its own Mosquitto (MQTT 5, raised queue limits) and PostgreSQL (the embedded one, or
SEPULKI_DATABASE_URL), seeds the demo data plus `--robots` robots. Publishers are separate processes
(multiprocessing), one gmqtt connection each, publishing pre-built payloads as fast as the broker's
receive window allows. Phases:

1. baseline: a bare gmqtt subscriber (acknowledges on receipt, does nothing) counts N messages;
2. ingest: the real consumer (`MqttIngest` + `Pipeline`, PUBACK after commit, events published)
   until N are committed; 1 and 2 alternate for `--rounds` rounds, best of each reported;
3. burst: 10 x N messages at once into the ingest, sampling this process's RSS.

Prints one JSON line per figure: value, baseline, ratio, lost, duplicated, peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import psutil
import uvloop
from broadcaster import Broadcast
from gmqtt import Client, Subscription
from gmqtt.mqtt.constants import MQTTv50
from gmqtt.storage import PersistentStorage

from app import db, seed
from app.ingest.metrics import IngestMetrics
from app.ingest.mqtt import MqttIngest
from app.ingest.pipeline import Pipeline
from app.pubsub import Events
from app.security import Passwords
from app.settings import Settings
from bench.common import database, emit
from tests.servers import MosquittoServer

# The baseline's topics: same shape and length as robots/..., unseen by the ingest running meanwhile.
RAW_ROOT = "bnchrw"
FLEETS = ("40000000-0000-4000-8000-000000000002", "40000000-0000-4000-8000-000000000003")
ADD_ROBOTS = """
INSERT INTO robots (id, name, sepulka_id, fleet_id, current_ingot_id, status, battery_level, health_score)
SELECT u.id, 'bench-' || u.n, r.sepulka_id, u.fleet_id, r.current_ingot_id, 'WORKING', 100, 100
FROM unnest($1::uuid[], $2::uuid[]) WITH ORDINALITY AS u(id, fleet_id, n)
CROSS JOIN (SELECT sepulka_id, current_ingot_id FROM robots ORDER BY id LIMIT 1) r
"""


# --- publishers (child processes) -------------------------------------------------------------


def _payloads(robots: list[str], first: int, count: int, step: int, root: str) -> list[tuple[str, bytes]]:
    """Messages first, first+step, ...: robot = seq % len(robots), one millisecond apart."""
    base = datetime(2026, 11, 1, tzinfo=UTC)
    out = []
    for i in range(first, first + count * step, step):
        robot = robots[i % len(robots)]
        body = {
            "seq": i,
            "ts": (base + timedelta(milliseconds=i)).isoformat(),
            "batteryLevel": 100 - (i % 1000) / 20,
            "healthScore": 97.5,
            "metrics": {"CPU_USAGE": 35.2 + i % 7, "MOTOR_TEMPERATURE": 48.1, "VELOCITY": 0.8},
        }
        out.append((f"{root}/{robot}/telemetry", orjson.dumps(body)))
    return out


async def _publish(port: int, messages: list[tuple[str, bytes]], start: Any, done: Any) -> None:
    inflight = PersistentStorage()  # ours, so we can wait for the broker's last PUBACK
    client = Client(
        f"bench-pub-{uuid.uuid4().hex[:8]}",
        clean_session=False,
        session_expiry_interval=300,
        persistent_storage=inflight,
    )
    await client.connect("127.0.0.1", port, version=MQTTv50)
    start.wait()
    for topic, payload in messages:
        while True:
            try:
                client.publish(topic, payload, qos=1)
                break
            except OverflowError:
                # All packet ids of the broker's receive window are in flight: let PUBACKs in.
                await asyncio.sleep(0)
    # Every PUBACK in before leaving: a process exiting with unflushed writes would lose messages.
    await inflight.wait_empty()
    await client.disconnect()
    done.set()


def publisher_main(
    port: int, robots: list[str], first: int, count: int, step: int, root: str, start: Any, done: Any
) -> None:
    messages = _payloads(robots, first, count, step, root)
    asyncio.run(_publish(port, messages, start, done))


class Publishers:
    """`n` processes publishing seq offset+1 .. offset+total between them, on `{root}/{robot}/telemetry`."""

    def __init__(
        self, port: int, robots: list[str], total: int, n: int, offset: int, root: str = "robots"
    ) -> None:
        ctx = mp.get_context("spawn")
        self.start = ctx.Event()
        self.done = [ctx.Event() for _ in range(n)]
        per = total // n
        self.processes = [
            ctx.Process(
                target=publisher_main,
                args=(port, robots, offset + 1 + k, per, n, root, self.start, self.done[k]),
                daemon=True,
            )
            for k in range(n)
        ]
        self.total = per * n

    def launch(self) -> None:
        for p in self.processes:
            p.start()

    def go(self) -> float:
        time.sleep(1.0)  # connected and payloads built (they wait on the event)
        began = time.perf_counter()
        self.start.set()
        return began

    def join(self) -> None:
        for p in self.processes:
            p.join(timeout=60)


# --- consumers ----------------------------------------------------------------------------------


async def baseline(port: int, robots: list[str], total: int, n: int) -> float:
    """Messages/s a bare gmqtt subscriber receives (acknowledged on receipt, nothing else)."""
    received = 0
    finished = asyncio.Event()

    def on_message(_client: Client, _topic: str, _payload: bytes, _qos: int, _props: Any) -> int:
        nonlocal received
        received += 1
        if received >= total:
            finished.set()
        return 0

    client = Client(f"bench-raw-{uuid.uuid4().hex[:8]}", clean_session=True)
    client.on_message = on_message
    subscribed = asyncio.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    await client.connect("127.0.0.1", port, version=MQTTv50)
    client.subscribe([Subscription(f"$share/bench-raw/{RAW_ROOT}/+/telemetry", qos=1)])
    await asyncio.wait_for(subscribed.wait(), 10)
    pubs = Publishers(port, robots, total, n, offset=0, root=RAW_ROOT)
    pubs.launch()
    began = await asyncio.to_thread(pubs.go)
    await asyncio.wait_for(finished.wait(), 300)
    elapsed = time.perf_counter() - began
    await asyncio.to_thread(pubs.join)
    await client.disconnect()
    return total / elapsed


class RssSampler:
    def __init__(self) -> None:
        self.process = psutil.Process(os.getpid())
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self.process.memory_info().rss)
            await asyncio.sleep(0.02)

    @contextlib.asynccontextmanager
    async def sampling(self) -> AsyncIterator[RssSampler]:
        self.peak = self.process.memory_info().rss
        self._task = asyncio.create_task(self._run())
        try:
            yield self
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def pipeline_total(metrics: IngestMetrics, target: int) -> None:
    """Returns once the pipeline has committed `target` messages in all (polled: the bench
    must not add work to the pipeline's hot path)."""
    while metrics.total() < target:  # noqa: ASYNC110
        await asyncio.sleep(0.005)


async def ingest_phase(
    pipeline: Pipeline, port: int, robots: list[str], total: int, n: int, offset: int
) -> tuple[float, int]:
    """Messages/s from the publishers' start until the pipeline has committed all of them, and the
    peak RSS (bytes) of this process meanwhile."""
    metrics = pipeline.metrics
    before = metrics.total()
    sampler = RssSampler()
    pubs = Publishers(port, robots, total, n, offset=offset)
    pubs.launch()
    async with sampler.sampling():
        began = await asyncio.to_thread(pubs.go)
        await pipeline_total(metrics, before + total)
        elapsed = time.perf_counter() - began
    await asyncio.to_thread(pubs.join)
    return total / elapsed, sampler.peak


async def main(args: argparse.Namespace) -> None:
    broker = MosquittoServer()
    broker.start()
    try:
        async with database() as dsn:
            await db.migrate(dsn)
            await seed.load(dsn, Passwords(Settings(argon2_time_cost=1, argon2_memory_kib=1024)))
            robots = [str(uuid.uuid4()) for _ in range(args.robots)]
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute(ADD_ROBOTS, robots, [FLEETS[i % 2] for i in range(len(robots))])
                await conn.execute("TRUNCATE telemetry, event_log, dead_letters")
            finally:
                await conn.close()
            total = args.messages
            settings = Settings(
                env="bench",
                database_url=dsn,
                mqtt_url=broker.url,
                mqtt_client_id="bench-ingest",
                ingest_batch_size=args.batch_size,
                ingest_batch_ms=args.batch_ms,
            )
            pool = await db.create_pool(dsn, min_size=1, max_size=4)
            # Events are published as in production (one bellows message per fleet per batch, one per
            # changed robot), on the in-process bus unless SEPULKI_REDIS_URL names a Redis.
            broadcast = Broadcast(os.environ.get("SEPULKI_REDIS_URL") or "memory://")
            events = Events(broadcast)
            try:
                async with (
                    broadcast,
                    Pipeline(pool, events, settings) as pipeline,
                    MqttIngest(settings, pipeline, persistent=True) as consumer,
                ):
                    await asyncio.wait_for(consumer.subscribed.wait(), 10)
                    # Rounds alternate baseline and ingest so that load from elsewhere on the machine
                    # hits both alike; the best round of each is reported.
                    raws: list[float] = []
                    rates: list[float] = []
                    peak = 0
                    for r in range(args.rounds):
                        raws.append(await baseline(broker.port, robots, total, args.publishers))
                        rate, round_peak = await ingest_phase(
                            pipeline, broker.port, robots, total, args.publishers, offset=r * total
                        )
                        rates.append(rate)
                        peak = max(peak, round_peak)
                    sent = total * args.rounds
                    stored = await pool.fetchval("SELECT count(*) FROM telemetry")
                    distinct = await pool.fetchval("SELECT count(DISTINCT (robot_id, seq)) FROM telemetry")
                    raw, best = max(raws), max(rates)
                    emit(
                        figure="mqtt_raw_subscriber_msgs_per_s",
                        value=round(raw),
                        unit="messages/s",
                        messages=total,
                        rounds=[round(x) for x in raws],
                    )
                    emit(
                        figure="ingest_committed_msgs_per_s",
                        value=round(best),
                        baseline=round(raw),
                        baseline_name="raw Mosquitto -> bare gmqtt subscriber, same run (best round of each)",
                        ratio=round(best / raw, 2),
                        unit="messages/s",
                        messages=total,
                        rounds=[round(x) for x in rates],
                        round_ratios=[round(a / b, 2) for a, b in zip(rates, raws, strict=True)],
                        lost=sent - distinct,
                        duplicated=stored - distinct,
                        duplicates_absorbed=pipeline.metrics.total("duplicate"),
                        batches=pipeline.metrics.batches,
                        mean_batch=round(pipeline.metrics.batch_items / max(1, pipeline.metrics.batches)),
                        peak_rss_mb=round(peak / 2**20, 1),
                        batch_size=args.batch_size,
                        batch_ms=args.batch_ms,
                    )
                    burst = total * args.burst
                    batches_before = pipeline.metrics.batches
                    rate, burst_peak = await ingest_phase(
                        pipeline, broker.port, robots, burst, args.publishers, offset=sent
                    )
                    stored = await pool.fetchval("SELECT count(*) FROM telemetry")
                    distinct = await pool.fetchval("SELECT count(DISTINCT (robot_id, seq)) FROM telemetry")
                    emit(
                        figure="ingest_burst_peak_rss_mb",
                        value=round(burst_peak / 2**20, 1),
                        baseline=round(peak / 2**20, 1),
                        baseline_name=f"peak RSS of the {total}-message rounds",
                        ratio=round(burst_peak / peak, 2),
                        unit="MiB",
                        messages=burst,
                        committed_msgs_per_s=round(rate),
                        lost=sent + burst - distinct,
                        duplicated=stored - distinct,
                        batches=pipeline.metrics.batches - batches_before,
                    )
            finally:
                await events.aclose()
                await pool.close()
    finally:
        broker.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=30000)
    parser.add_argument("--robots", type=int, default=100)
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--burst", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=Settings().ingest_batch_size)
    parser.add_argument("--batch-ms", type=int, default=Settings().ingest_batch_ms)
    # The event loop of `sepulki ingest` (and of uvicorn): uvloop.
    uvloop.run(main(parser.parse_args()))
