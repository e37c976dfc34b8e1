"""MQTT ingest throughput: QoS 1 telemetry, Mosquitto -> ingest pipeline -> committed rows, against
raw Mosquitto -> a bare gmqtt subscriber that only counts, in the same run.

    .venv/bin/python -m bench.ingest [--messages 30000] [--rounds 3] [--robots 100] [--burst 10]
                                     [--workers 1] [--gc-defaults]

Starts its own Mosquitto (MQTT 5, raised queue limits) and PostgreSQL (the embedded one, or
SEPULKI_DATABASE_URL), seeds the demo data plus `--robots` robots. Publishers are separate processes
(multiprocessing), one MQTT 5 connection each, writing pre-encoded QoS 1 PUBLISH packets as fast as
the broker's Receive Maximum allows (a bare protocol writer: the load generator shares the cores).
`--workers` ingest processes run as `sepulki ingest` does (`MqttIngest` + `Pipeline`, app/heap.py's
collector settings, uvloop), one `$share` group, each with its own client id and database
connections. Phases:

1. baseline: a bare gmqtt subscriber in this process (acknowledges on receipt, does nothing)
   counts N messages;
2. ingest: the workers (PUBACK after commit, events published) until N are committed between
   them; 1 and 2 alternate for `--rounds` rounds, best of each reported;
3. burst: 10 x N messages at once into the workers, sampling each worker's RSS.

Prints one JSON line per figure: value, baseline, ratio, lost, duplicated, peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import psutil
import uvloop
from broadcaster import Broadcast
from gmqtt import Client, Subscription
from gmqtt.mqtt.constants import MQTTv50

from app.infra import db, heap, seed
from app.infra.bus import Events
from app.infra.security import Passwords
from app.ingest.mqtt import MqttIngest
from app.ingest.pipeline import Pipeline
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


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes, i: int) -> tuple[int, int] | None:
    """The variable byte integer at data[i:] and the index after it; None if it is incomplete."""
    value, shift = 0, 0
    while i < len(data):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        shift += 7
        i += 1
        if not byte & 0x80:
            return value, i
    return None


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _varint(len(body)) + body


def _string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


class _Publisher(asyncio.Protocol):
    """A bare MQTT 5 publisher of pre-encoded QoS 1 PUBLISH packets, as many in flight as the
    broker's Receive Maximum allows, topped up as PUBACKs arrive. A robot fleet is many machines;
    here the load generator shares 2 cores with what it measures, so it should cost close to
    nothing: no per-message Python beyond counting acknowledgements."""

    def __init__(self, packets: list[bytes]) -> None:
        self.packets = packets
        self.sent = 0
        self.acked = 0
        self.window = 65535
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.connected: asyncio.Future[None] = loop.create_future()
        self.finished: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # CONNECT: MQTT 5, clean start, no keepalive, no properties.
        body = _string("MQTT") + bytes([5, 0x02, 0, 0, 0]) + _string(f"bench-pub-{uuid.uuid4().hex[:8]}")
        transport.write(_packet(0x10, body))

    def connection_lost(self, exc: Exception | None) -> None:
        for future in (self.connected, self.finished):
            if not future.done():
                future.set_exception(ConnectionError(f"the broker closed the connection: {exc}"))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        at, acked = 0, 0
        while len(buffer) - at >= 2:
            header = _read_varint(buffer, at + 1)
            if header is None or len(buffer) < header[1] + header[0]:
                break
            length, i = header
            kind = buffer[at] & 0xF0
            if kind == 0x40:  # PUBACK
                acked += 1
            elif kind == 0x20:  # CONNACK: read Receive Maximum (property 0x21) if announced
                self._connack(buffer[i : i + length])
            at = i + length
        self.buffer = buffer[at:]
        if acked:
            self.acked += acked
            self._send(acked)
            if self.acked == len(self.packets) and not self.finished.done():
                self.finished.set_result(None)

    def _connack(self, body: bytes) -> None:
        if body[1] != 0:
            self.connected.set_exception(ConnectionError(f"CONNACK reason code {body[1]}"))
            return
        props_len, i = _read_varint(body, 2) or (0, 2)
        props = body[i : i + props_len]
        j = 0
        while j < len(props):
            ident = props[j]
            if ident == 0x21:
                self.window = int.from_bytes(props[j + 1 : j + 3], "big")
                break
            # Every other property Mosquitto sends in CONNACK is a byte, a 2- or 4-byte integer
            # or a string; stop at anything unknown and keep the default window.
            if ident in (0x24, 0x25, 0x28, 0x29, 0x2A):
                j += 2
            elif ident in (0x13, 0x22):
                j += 3
            elif ident in (0x11, 0x27):
                j += 5
            elif ident in (0x12, 0x1A, 0x1C, 0x1F):
                j += 3 + int.from_bytes(props[j + 1 : j + 3], "big")
            else:
                break
        self.connected.set_result(None)

    def go(self) -> None:
        self._send(self.window)

    def _send(self, count: int) -> None:
        assert self.transport is not None
        end = min(len(self.packets), self.sent + count)
        if end > self.sent:
            self.transport.write(b"".join(self.packets[self.sent : end]))
            self.sent = end


async def _publish(port: int, messages: list[tuple[str, bytes]], start: Any, done: Any) -> None:
    # Packet ids 1..65535 in order: the broker acknowledges in order, and at most a window
    # (< 65535) is in flight, so an id is free again when it comes round.
    packets = [
        _packet(0x32, _string(topic) + ((n % 65535) + 1).to_bytes(2, "big") + b"\x00" + payload)
        for n, (topic, payload) in enumerate(messages)
    ]
    loop = asyncio.get_running_loop()
    transport, publisher = await loop.create_connection(lambda: _Publisher(packets), "127.0.0.1", port)
    await asyncio.wait_for(publisher.connected, 10)
    start.wait()
    publisher.go()
    await publisher.finished  # every PUBACK in: the broker holds each message
    transport.write(_packet(0xE0, b""))  # DISCONNECT, normal
    transport.close()
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


# --- ingest workers (child processes) -----------------------------------------------------------


async def _work(dsn: str, url: str, k: int, batch_size: int, batch_ms: int, state: Any, stop: Any) -> None:
    settings = Settings(
        env="development",
        database_url=dsn,
        mqtt_url=url,
        mqtt_client_id=f"bench-ingest-{k}",
        ingest_batch_size=batch_size,
        ingest_batch_ms=batch_ms,
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
            m = pipeline.metrics
            state[4] = 1  # subscribed
            # Polled, not pushed: the bench must not add work to the pipeline's hot path.
            while not stop.is_set():
                state[0], state[1], state[2], state[3] = (
                    m.total(),
                    m.total("duplicate"),
                    m.batches,
                    m.batch_items,
                )
                await asyncio.sleep(0.005)
    finally:
        await events.aclose()
        await pool.close()


def worker_main(
    dsn: str, url: str, k: int, batch_size: int, batch_ms: int, gc_defaults: bool, state: Any, stop: Any
) -> None:
    """One `sepulki ingest` worker: the same consumer, pipeline, collector settings and loop."""
    if not gc_defaults:
        heap.settle()
    uvloop.run(_work(dsn, url, k, batch_size, batch_ms, state, stop))


class Workers:
    """`n` ingest workers in one `$share` group; `state` of each: committed, duplicates, batches,
    batch items, subscribed."""

    def __init__(self, args: argparse.Namespace, dsn: str, url: str) -> None:
        ctx = mp.get_context("spawn")
        self.stop = ctx.Event()
        self.states = [ctx.Array("q", 5, lock=False) for _ in range(args.workers)]
        self.processes = [
            ctx.Process(
                target=worker_main,
                args=(
                    dsn,
                    url,
                    k,
                    args.batch_size,
                    args.batch_ms,
                    args.gc_defaults,
                    self.states[k],
                    self.stop,
                ),
                daemon=True,
            )
            for k in range(args.workers)
        ]

    async def __aenter__(self) -> Workers:
        for p in self.processes:
            p.start()
        deadline = time.monotonic() + 60
        while not all(state[4] for state in self.states):
            if time.monotonic() > deadline or any(p.exitcode is not None for p in self.processes):
                raise RuntimeError("the ingest workers did not start")
            await asyncio.sleep(0.05)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        for p in self.processes:
            await asyncio.to_thread(p.join, 30)
            if p.exitcode is None:
                p.kill()

    def total(self, field: int = 0) -> int:
        return sum(state[field] for state in self.states)

    def rss(self) -> list[int]:
        """Each worker's resident memory now (ingest_phase keeps the peak)."""
        return [psutil.Process(p.pid).memory_info().rss for p in self.processes]


async def ingest_phase(
    workers: Workers, port: int, robots: list[str], total: int, n: int, offset: int
) -> tuple[float, int]:
    """Messages/s from the publishers' start until the workers have committed all of them, and the
    peak RSS (bytes) of the largest worker meanwhile (sampled every 20 ms)."""
    before = workers.total()
    peak = max(workers.rss())
    pubs = Publishers(port, robots, total, n, offset=offset)
    pubs.launch()
    began = await asyncio.to_thread(pubs.go)
    polls = 0
    while workers.total() < before + total:
        polls += 1
        if polls % 4 == 0:
            peak = max(peak, *workers.rss())
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - began
    await asyncio.to_thread(pubs.join)
    return total / elapsed, peak


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
            async with Workers(args, dsn, broker.url) as workers:
                # Rounds alternate baseline and ingest so that load from elsewhere on the machine
                # hits both alike; the best round of each is reported.
                raws: list[float] = []
                rates: list[float] = []
                peak = 0
                for r in range(args.rounds):
                    raws.append(await baseline(broker.port, robots, total, args.publishers))
                    rate, round_peak = await ingest_phase(
                        workers, broker.port, robots, total, args.publishers, offset=r * total
                    )
                    rates.append(rate)
                    peak = max(peak, round_peak)
                sent = total * args.rounds
                conn = await asyncpg.connect(dsn)
                try:
                    stored = await conn.fetchval("SELECT count(*) FROM telemetry")
                    distinct = await conn.fetchval("SELECT count(DISTINCT (robot_id, seq)) FROM telemetry")
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
                        workers=args.workers,
                        rounds=[round(x) for x in rates],
                        round_ratios=[round(a / b, 2) for a, b in zip(rates, raws, strict=True)],
                        lost=sent - distinct,
                        duplicated=stored - distinct,
                        duplicates_absorbed=workers.total(1),
                        batches=workers.total(2),
                        mean_batch=round(workers.total(3) / max(1, workers.total(2))),
                        peak_rss_mb=round(peak / 2**20, 1),
                        batch_size=args.batch_size,
                        batch_ms=args.batch_ms,
                    )
                    burst = total * args.burst
                    batches_before = workers.total(2)
                    rate, burst_peak = await ingest_phase(
                        workers, broker.port, robots, burst, args.publishers, offset=sent
                    )
                    stored = await conn.fetchval("SELECT count(*) FROM telemetry")
                    distinct = await conn.fetchval("SELECT count(DISTINCT (robot_id, seq)) FROM telemetry")
                    emit(
                        figure="ingest_burst_peak_rss_mb",
                        value=round(burst_peak / 2**20, 1),
                        baseline=round(peak / 2**20, 1),
                        baseline_name=f"peak RSS of a worker in the {total}-message rounds",
                        ratio=round(burst_peak / peak, 2),
                        unit="MiB",
                        messages=burst,
                        workers=args.workers,
                        committed_msgs_per_s=round(rate),
                        lost=sent + burst - distinct,
                        duplicated=stored - distinct,
                        batches=workers.total(2) - batches_before,
                    )
                finally:
                    await conn.close()
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
    parser.add_argument(
        "--gc-defaults", action="store_true", help="CPython's default GC thresholds, not app/heap.py's"
    )
    parser.add_argument("--workers", type=int, default=1, help="ingest processes in one $share group")
    # Workers run as `sepulki ingest` does: app/heap.py's collector settings, the uvloop event loop.
    uvloop.run(main(parser.parse_args()))
