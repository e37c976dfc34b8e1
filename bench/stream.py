"""Publish -> websocket subscriber latency of robotStatus under fleet load, against raw Redis.

    .venv/bin/python -m bench.stream [--robots 100] [--hz 10] [--subscribers 1000] [--seconds 10]

One run, several processes on this machine:
- Redis (redis-server) and PostgreSQL (embedded, or SEPULKI_DATABASE_URL);
- the API, `sepulki serve` under uvicorn with SEPULKI_REDIS_URL (the Redis broadcast);
- a publisher process playing `--robots` robots at `--hz`: each tick it writes one status event
  per robot to event_log in one transaction and, after the commit, publishes them with
  app.infra.bus's `Events.publish` on `robot-status:{id}` and `robot-status:*`, as the ingest does
  once per batch. It publishes directly rather than through MQTT, to measure the delivery layer
  alone (bench/ingest.py measures the MQTT side);
- `--clients` processes holding `--subscribers` graphql-transport-ws sockets (picows
  client), each subscribed to `robotStatus(robotId)` of one robot, so every event goes to
  subscribers/robots sockets. Latency = arrival time - the `lastSeen` the publisher stamped just
  before publishing (one clock: same machine).

Baseline, measured first in the same run: the same message rate and size published with redis-py
straight to Redis and received by one redis-py subscriber process on the same channels.

Prints one JSON line per figure (value, baseline, ratio) after a warm-up of `--warmup` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import database, emit

FLEET = "40000000-0000-4000-8000-000000000003"
QUERY = "subscription($id: ID) { robotStatus(robotId: $id) { id status batteryLevel healthScore lastSeen } }"
LOGIN = (
    'mutation { login(credentials: {email: "admin@sepulki.com", password: "admin123"})'
    " { session { token } } }"
)


def robot_ids(count: int) -> list[str]:
    rng = random.Random(count)  # the same ids in every process
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]


def status(robot_id: str, n: int, stamp: float) -> dict[str, Any]:
    return {
        "id": robot_id,
        "name": f"Bench-{robot_id[:8]}",
        "fleet_id": FLEET,
        "status": "WORKING",
        "battery_level": 80.0 - (n % 50) / 10,
        "health_score": 97.5,
        "last_seen": datetime.fromtimestamp(stamp, UTC).isoformat(),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- roles run as subprocesses -------------------------------------------------------------------


async def run_publisher(args: argparse.Namespace) -> None:
    """Robots report at --hz, spread over the period; like the ingest, each --batch-ms window's
    reports are one transaction (one event_log row each), published after its commit."""
    from broadcaster import Broadcast

    from app.core.channels import channels
    from app.infra import db, eventlog
    from app.infra.bus import Events

    ids = robot_ids(args.robots)
    pool = await db.create_pool(args.dsn, min_size=1, max_size=2)
    published = 0
    async with Broadcast(args.redis) as broadcast:
        events = Events(broadcast)
        windows = max(1, round(1000 / args.hz / args.batch_ms))
        groups = [ids[w::windows] for w in range(windows)]
        window = 1 / args.hz / windows
        start = time.time()
        tick = time.monotonic()
        n = 0
        # Whole periods only: every robot reports as often as the others.
        while n % windows or time.time() - start < args.seconds:
            async with pool.acquire() as conn, conn.transaction():
                logged = []
                for robot_id in groups[n % windows]:
                    payload = status(robot_id, n, time.time())
                    logged.append((robot_id, await eventlog.append(conn, channels.robot(robot_id), payload)))
            for robot_id, event_id in logged:
                # Stamped now, after the commit: the figure is publish -> subscriber.
                await events.publish(channels.robot(robot_id), event_id, status(robot_id, n, time.time()))
                published += 1
            n += 1
            tick += window
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
        await events.aclose()
    await pool.close()
    print(json.dumps({"published": published, "start": start, "end": time.time()}), flush=True)


async def run_raw_publisher(args: argparse.Namespace) -> None:
    """The baseline publisher: redis-py PUBLISH of the same messages, no database, no app."""
    from redis.asyncio import Redis

    ids = robot_ids(args.robots)
    redis = Redis.from_url(args.redis)
    windows = max(1, round(1000 / args.hz / args.batch_ms))
    groups = [ids[w::windows] for w in range(windows)]
    window = 1 / args.hz / windows
    start = time.time()
    tick = time.monotonic()
    n = published = 0
    event_id = 0
    while n % windows or time.time() - start < args.seconds:
        for robot_id in groups[n % windows]:
            event_id += 1
            message = json.dumps({"id": event_id, "data": status(robot_id, n, time.time())})
            for channel in (f"robot-status:{robot_id}", "robot-status:*"):
                await redis.publish(channel, message)
            published += 1
        n += 1
        tick += window
        await asyncio.sleep(max(0.0, tick - time.monotonic()))
    await redis.aclose()
    print(json.dumps({"published": published, "start": start, "end": time.time()}), flush=True)


async def _until_stop() -> list[str]:
    """The words of the line the parent writes on our stdin, when it does."""
    loop = asyncio.get_running_loop()
    line: str = await loop.run_in_executor(None, sys.stdin.readline)
    return line.split()


async def run_raw_subscriber(args: argparse.Namespace) -> None:
    from redis.asyncio import Redis

    ids = robot_ids(args.robots)
    redis = Redis.from_url(args.redis)
    pubsub = redis.pubsub()
    await pubsub.subscribe(*(f"robot-status:{r}" for r in ids))
    samples: list[tuple[float, float]] = []

    async def receive() -> None:
        async for message in pubsub.listen():
            if message["type"] != "message":
                continue
            now = time.time()
            sent = datetime.fromisoformat(json.loads(message["data"])["data"]["last_seen"]).timestamp()
            samples.append((sent, now - sent))

    reader = asyncio.create_task(receive())
    print("ready", flush=True)
    await _until_stop()
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    await pubsub.aclose()
    await redis.aclose()
    print(json.dumps({"samples": samples, "duplicates": 0, "errors": 0}), flush=True)


async def run_subscribers(args: argparse.Namespace) -> None:
    """--count sockets, socket i watching robot (offset + i) % robots.

    picows clients: a callback per frame, no task per message, so that the load generator takes
    as little as possible of the cores it shares with the API."""
    import orjson
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    ids = robot_ids(args.robots)
    samples: list[tuple[float, float]] = []
    problems = {"duplicates": 0, "errors": 0}
    received = [0] * args.count
    expected: int | None = None
    lagging = 0
    caught_up = asyncio.Event()
    init = orjson.dumps({"type": "connection_init", "payload": {"authToken": args.token}})

    class Subscriber(WSListener):  # type: ignore[misc]
        def __init__(self, index: int) -> None:
            self.index = index
            self.robot_id = ids[(args.offset + index) % len(ids)]
            self.last_id = 0
            self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_ws_connected(self, transport: WSTransport) -> None:
            transport.send(WSMsgType.TEXT, init)

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            if not self.subscribed.done():
                self.subscribed.set_exception(ConnectionError("closed before subscribing"))

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            nonlocal lagging
            now = time.time()
            if frame.msg_type != WSMsgType.TEXT:
                if frame.msg_type == WSMsgType.CLOSE:
                    transport.disconnect()
                return
            message = orjson.loads(frame.get_payload_as_bytes())
            kind = message.get("type")
            if kind == "connection_ack":
                payload = {"query": QUERY, "variables": {"id": self.robot_id}}
                transport.send(
                    WSMsgType.TEXT, orjson.dumps({"id": "1", "type": "subscribe", "payload": payload})
                )
                self.subscribed.set_result(None)
                return
            if kind == "ping":
                transport.send(WSMsgType.TEXT, b'{"type":"pong"}')
                return
            if kind != "next" or "errors" in message["payload"]:
                problems["errors"] += 1
                return
            event_id = int(message["payload"]["extensions"]["eventId"])
            if event_id <= self.last_id:
                problems["duplicates"] += 1
            self.last_id = event_id
            received[self.index] += 1
            if received[self.index] == expected:
                lagging -= 1
                if lagging == 0:
                    caught_up.set()
            sent = datetime.fromisoformat(message["payload"]["data"]["robotStatus"]["lastSeen"]).timestamp()
            samples.append((sent, now - sent))

    gate = asyncio.Semaphore(50)
    headers = {"Sec-WebSocket-Protocol": "graphql-transport-ws"}

    async def connect(index: int) -> WSTransport:
        async with gate:
            transport, listener = await ws_connect(
                lambda: Subscriber(index), args.url, extra_headers=headers, websocket_handshake_timeout=30
            )
            await asyncio.wait_for(listener.subscribed, 30)
        return transport

    transports = await asyncio.wait_for(asyncio.gather(*(connect(i) for i in range(args.count))), 120)
    print("ready", flush=True)
    # "stop N T": N events per socket are on their way; wait for them at most T seconds.
    _, count, timeout = await _until_stop()
    expected = int(count)
    lagging = sum(1 for r in received if r < expected)
    if lagging:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(caught_up.wait(), float(timeout))
    for transport in transports:
        transport.disconnect()
    print(json.dumps({"samples": samples, **problems}), flush=True)


# -- the orchestrator ----------------------------------------------------------------------------


class Child:
    """A role of this script in its own process, talking JSON lines on stdout."""

    started: list[Child] = []

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        Child.started.append(self)

    @classmethod
    async def start(cls, role: str, *options: str) -> Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.stream",
            "--role",
            role,
            *options,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024,
        )
        return cls(process)

    async def line(self, timeout: float = 120) -> str:  # noqa: ASYNC109
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not raw:
            raise RuntimeError(f"child exited with {await self.process.wait()}")
        return raw.decode().strip()

    async def stop(self, *words: object) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(" ".join(map(str, ("stop", *words))).encode() + b"\n")
        await self.process.stdin.drain()
        result: dict[str, Any] = json.loads(await self.line())
        await self.process.wait()
        return result

    async def result(self, timeout: float = 120) -> dict[str, Any]:  # noqa: ASYNC109
        value: dict[str, Any] = json.loads(await self.line(timeout))
        await self.process.wait()
        return value


def rss_kib(pid: int) -> int:
    """The process's resident set (VmRSS, KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def api_server(
    dsn: str, redis_url: str, port: int, data_dir: Path, gc_defaults: bool = False
) -> AsyncIterator[int]:
    """`sepulki serve` with the Redis broadcast, until the block ends; yields its pid."""
    import httpx

    env = os.environ | {
        "SEPULKI_DATABASE_URL": dsn,
        "SEPULKI_REDIS_URL": redis_url,
        "SEPULKI_PORT": str(port),
        "SEPULKI_DATA_DIR": str(data_dir),
        "SEPULKI_SIMULATE_ROBOTS": "0",
        "SEPULKI_INGEST_IN_API": "false",
        "SEPULKI_DB_POOL_MAX": "20",
        # Every subscriber is one smith on loopback: the per-IP and per-smith socket caps
        # (docs/security.md) would refuse all but the first 50.
        "SEPULKI_WS_MAX_SOCKETS_PER_IP": "0",
        "SEPULKI_WS_MAX_SOCKETS_PER_SMITH": "0",
        "SEPULKI_WS_MAX_SUBSCRIPTIONS_PER_SMITH": "0",
    }
    env.pop("SEPULKI_MQTT_URL", None)
    log = (data_dir / "server.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        # --gc-defaults: CPython's own collector thresholds instead of app.infra.heap's, to compare.
        ("import gc, app.infra.heap; app.infra.heap.THRESHOLDS = gc.get_threshold(); " if gc_defaults else "")
        + "from app.cli import main; main(['serve'])",
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                        break
                if process.returncode is not None or time.monotonic() > deadline:
                    tail = (data_dir / "server.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"the API did not start:\n{tail}")
                await asyncio.sleep(0.2)
        yield process.pid
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()
        log.close()


def figures(samples: list[list[float]], start: float, end: float) -> dict[str, float]:
    """Latencies of the events published in [start, end]; deliveries that arrived in it per s."""
    window = [latency * 1000 for sent, latency in samples if start <= sent <= end]
    arrived = sum(1 for sent, latency in samples if start <= sent + latency <= end)
    return {
        "p50": percentile(window, 0.50),
        "p95": percentile(window, 0.95),
        "p99": percentile(window, 0.99),
        "max": max(window, default=float("nan")),
        "count": len(window),
        "per_s": arrived / (end - start),
    }


async def orchestrate(args: argparse.Namespace) -> None:
    import signal

    from tests.servers import RedisServer, free_port

    # Stopped from outside (timeout, Ctrl-C): unwind, so that no server outlives the run.
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, task.cancel)

    common = ["--robots", str(args.robots), "--hz", str(args.hz), "--batch-ms", str(args.batch_ms)]
    redis = RedisServer()
    redis.start()
    try:
        async with database() as dsn:
            with tempfile.TemporaryDirectory(prefix="sepulki-bench-stream-") as tmp:
                await measure(args, common, dsn, redis.url, Path(tmp), free_port())
    finally:
        for child in Child.started:
            if child.process.returncode is None:
                child.process.kill()
                await child.process.wait()
        redis.close()


async def measure(
    args: argparse.Namespace, common: list[str], dsn: str, redis_url: str, tmp: Path, port: int
) -> None:
    import httpx

    total = args.warmup + args.seconds
    # Baseline: raw Redis, same rate and messages, one redis-py subscriber process.
    raw_sub = await Child.start("raw-subscriber", *common, "--redis", redis_url)
    assert await raw_sub.line() == "ready"
    raw_pub = await Child.start("raw-publisher", *common, "--redis", redis_url, "--seconds", str(total))
    raw_published = await raw_pub.result(total + 60)
    await asyncio.sleep(0.5)
    raw = await raw_sub.stop()
    raw_start = raw_published["start"] + args.warmup
    baseline = figures(raw["samples"], raw_start, raw_published["end"])

    async with api_server(dsn, redis_url, port, tmp, args.gc_defaults) as pid:
        async with httpx.AsyncClient() as client:
            body = (await client.post(f"http://127.0.0.1:{port}/graphql", json={"query": LOGIN})).json()
        token = body["data"]["login"]["session"]["token"]
        per_client = -(-args.subscribers // args.clients)
        rss_before = rss_kib(pid)
        clients = []
        for c in range(args.clients):
            count = min(per_client, args.subscribers - c * per_client)
            options = ["--url", f"ws://127.0.0.1:{port}/graphql", "--token", token]
            options += ["--count", str(count), "--offset", str(c * per_client)]
            clients.append(await Child.start("subscribers", *common, *options))
        for child in clients:
            assert await child.line() == "ready"
        await asyncio.sleep(1)  # the last subscriptions reach the server's bus
        # Subscribed and idle (nothing published yet): what each socket holds in the API.
        rss_per_socket = (rss_kib(pid) - rss_before) * 1024 / max(1, args.subscribers)
        cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
        clients_before = sum(cpu_seconds(c.process.pid) for c in clients)
        publisher = await Child.start(
            "publisher", *common, "--redis", redis_url, "--dsn", dsn, "--seconds", str(total)
        )
        published = await publisher.result(total + 60)
        cpu = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - wall_before)
        clients_cpu = (sum(cpu_seconds(c.process.pid) for c in clients) - clients_before) / (
            time.monotonic() - wall_before
        )
        # Every socket should get every event of its robot: wait for stragglers, then count.
        per_socket = published["published"] // args.robots
        results = await asyncio.gather(*(child.stop(per_socket, args.drain) for child in clients))

    samples = [s for r in results for s in r["samples"]]
    start = published["start"] + args.warmup
    ours = figures(samples, start, published["end"])
    expected = (published["published"] / args.robots) * args.subscribers
    setup = {"robots": args.robots, "hz": args.hz, "subscribers": args.subscribers, "seconds": args.seconds}
    for q in ("p50", "p95", "p99"):
        emit(
            figure=f"stream_latency_{q}_ms",
            value=round(ours[q], 2),
            baseline=round(baseline[q], 2),
            ratio=round(ours[q] / baseline[q], 1) if baseline[q] else None,
            **({"target": 100} if q == "p99" else {}),
            **setup,
        )
    emit(
        figure="stream_deliveries_per_s",
        value=round(ours["per_s"]),
        baseline=round(baseline["per_s"]),
        ratio=round(ours["per_s"] / baseline["per_s"], 1) if baseline["per_s"] else None,
        note="baseline: one redis-py subscriber of the same messages (no fan-out to sockets)",
        **setup,
    )
    emit(
        figure="stream_delivered_fraction",
        value=round(sum(len(r["samples"]) for r in results) / expected, 4) if expected else None,
        baseline=1.0,
        duplicates=sum(r["duplicates"] for r in results),
        errors=sum(r["errors"] for r in results),
        max_ms=round(ours["max"], 1),
        api_cpu_cores=round(cpu, 2),
        client_processes_cpu_cores=round(clients_cpu, 2),
        **setup,
    )
    emit(figure="stream_rss_per_idle_socket_kb", value=round(rss_per_socket / 1000, 1), target=50, **setup)
    delivered = sum(len(r["samples"]) for r in results) / expected if expected else 0.0
    print(f"\nbench.stream: {args.subscribers} sockets, {args.robots} robots × {args.hz:g} Hz")
    print(f"{'figure':<34} {'value':>10} {'target':>10}  baseline (same run)")
    rows = [
        ("deliveries/s", ours["per_s"], "", f"redis-py subscriber {baseline['per_s']:,.0f}/s"),
        ("p50 ms", ours["p50"], "", f"{baseline['p50']:.2f}"),
        ("p99 ms", ours["p99"], "< 100 (≤ 10k/s), < 250", f"{baseline['p99']:.2f}"),
        ("delivered fraction", delivered, "1.0", ""),
        ("RSS per idle socket KB", rss_per_socket / 1000, "≤ 50", ""),
        ("API CPU cores", cpu, "", f"clients {clients_cpu:.2f}"),
    ]
    for name, value, target, note in rows:
        print(f"{name:<34} {value:>10,.2f} {target:>10}  {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", default="orchestrate")
    parser.add_argument("--robots", type=int, default=100)
    parser.add_argument("--hz", type=float, default=10)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4, help="subscriber processes")
    parser.add_argument("--seconds", type=float, default=10, help="measured, after the warm-up")
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--batch-ms", type=float, default=25, help="publisher batch window (ingest's)")
    parser.add_argument(
        "--gc-defaults", action="store_true", help="API with CPython's default GC thresholds (app/heap.py)"
    )
    parser.add_argument("--drain", type=float, default=20, help="seconds to wait for late deliveries")
    parser.add_argument("--redis")
    parser.add_argument("--dsn")
    parser.add_argument("--url")
    parser.add_argument("--token")
    parser.add_argument("--count", type=int)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few sockets for a second: the CI check")
    args = parser.parse_args()
    if args.smoke:
        args.robots, args.subscribers, args.clients = 5, 20, 1
        args.seconds, args.warmup, args.drain = 1.0, 0.5, 5.0
    roles = {
        "orchestrate": orchestrate,
        "publisher": run_publisher,
        "raw-publisher": run_raw_publisher,
        "raw-subscriber": run_raw_subscriber,
        "subscribers": run_subscribers,
    }
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        pass
    asyncio.run(roles[args.role](args))


if __name__ == "__main__":
    main()
