"""Edicts that act, measured: ingest throughput with 100 active edicts against none, in the same
run, and the latency from a breaching sample to a `policyBreaches` subscriber.

    .venv/bin/python -m bench.edicts [--messages 30000] [--robots 100] [--rounds 3] [--breaches 200]

Starts PostgreSQL (the embedded one, or SEPULKI_DATABASE_URL), migrates, seeds the demo data plus
`--robots` robots, and runs the service in this process as `sepulki serve` does (uvicorn, the
ingest pipeline with the rule evaluator hooked after each commit, the notification worker).

1. throughput: `--messages` telemetry samples of the robots (battery, health, CPU_USAGE,
   MOTOR_TEMPERATURE, VELOCITY, FORCE) submitted to the pipeline with at most 2,000 in flight
   (the MQTT consumer's window), timed until every sample is committed *and* the evaluator has
   nothing left to do. Rounds alternate: no active edict, then the 100 bench edicts (thresholds
   of every operator, debounce, hysteresis, cooldown, per-robot overrides, rate-of-change,
   EWMA anomaly and missing-data rules, over all robots); best round of each.
2. latency: a websocket client subscribes to `policyBreaches`; `--breaches` times a robot's
   battery drops under an edict's threshold (and recovers in between), one sample each, while
   the other robots keep sending at 10 Hz; latency = subscriber's receipt - submit of the sample
   (and, `from_commit_*`, - the moment the sample's batch had committed).

Prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import uvicorn
from broadcaster import Broadcast
from websockets.asyncio.client import connect

from app import alerts
from app.infra import db, seed
from app.infra.bus import Events
from app.infra.security import Passwords
from app.ingest.messages import RawMessage
from app.ingest.pipeline import Pipeline
from app.ingest.rules import RuleEngine
from app.settings import Settings
from app.web.app import create_app
from bench.common import database, emit
from tests.servers import free_port

FLEETS = ("40000000-0000-4000-8000-000000000002", "40000000-0000-4000-8000-000000000003")
ADMIN_ID = "00000000-0000-4000-8000-000000000001"
ADD_ROBOTS = """
INSERT INTO robots (id, name, sepulka_id, fleet_id, current_ingot_id, status, battery_level, health_score,
                    last_seen)
SELECT u.id, 'bench-' || u.n, r.sepulka_id, u.fleet_id, r.current_ingot_id, 'WORKING', 100, 100, now()
FROM unnest($1::uuid[], $2::uuid[]) WITH ORDINALITY AS u(id, fleet_id, n)
CROSS JOIN (SELECT sepulka_id, current_ingot_id FROM robots ORDER BY id LIMIT 1) r
"""
ADD_EDICT = """
INSERT INTO edicts (name, type, rules, severity, active, applies_to, created_by)
VALUES ($1, 'OPERATIONAL', $2, 'WARNING', $3, '{}', $4) RETURNING id
"""
WINDOW = 2000


def bench_edicts(robots: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """100 edicts over all robots; the bench's telemetry breaches none of them."""
    metrics = [
        ("battery_level", "lt", 5),
        ("health_score", "lte", 10),
        ("CPU_USAGE", "gt", 99),
        ("MOTOR_TEMPERATURE", "gte", 95),
        ("VELOCITY", "gt", 3),
        ("FORCE", "gt", 150),
        ("VELOCITY", "eq", 9.5),
        ("CPU_USAGE", "neq", 35.2),
    ]
    found: list[tuple[str, dict[str, Any]]] = []
    for i in range(92):
        metric, op, value = metrics[i % len(metrics)]
        if op == "neq":  # a neq that never matches: AND with an impossible partner
            rules = [
                {"metric": metric, "op": op, "value": value},
                {"metric": "FORCE", "op": "gt", "value": 1e6},
            ]
        else:
            rules = [{"metric": metric, "op": op, "value": value + i / 1000}]
        extra: dict[str, Any] = {}
        if i % 3 == 0:
            extra["hysteresis"] = 2
        if i % 4 == 0:
            extra["debounce"] = {"samples": 3, "seconds": 1}
        if i % 5 == 0:
            extra["cooldownSeconds"] = 60
        if i % 7 == 0:
            rules[0]["overrides"] = {robots[0]: value}
        found.append((f"bench threshold {i}", {"operator": "AND", "rules": rules, **extra}))
    for i in range(2):
        rate = {"kind": "rate", "metric": "MOTOR_TEMPERATURE", "op": "gt", "value": 50 + i}
        found.append((f"bench rate {i}", {"operator": "AND", "rules": [rate]}))
    for i in range(2):
        anomaly = {
            "kind": "anomaly",
            "metric": "CPU_USAGE",
            "alpha": 0.05,
            "tiers": [{"z": 50 + i, "severity": "WARNING"}],
        }
        found.append((f"bench anomaly {i}", {"operator": "AND", "rules": [anomaly]}))
    for i in range(4):
        found.append(
            (f"bench missing {i}", {"operator": "OR", "rules": [{"kind": "missing", "seconds": 3600 + i}]})
        )
    return [
        (
            name,
            {
                "condition": {"type": "metric", "operator": c["operator"], "rules": c["rules"]},
                "actions": [{"type": "ALERT"}],
                **{k: v for k, v in c.items() if k not in ("operator", "rules")},
            },
        )
        for name, c in found
    ]


def samples(robots: list[str], first: int, count: int, base: datetime) -> list[RawMessage]:
    out = []
    for i in range(first, first + count):
        robot = robots[i % len(robots)]
        body = {
            "seq": i,
            "ts": (base + timedelta(milliseconds=i)).isoformat(),
            "batteryLevel": 100 - (i % 1000) / 20,
            "healthScore": 97.5,
            "metrics": {"CPU_USAGE": 35.2 + i % 7, "MOTOR_TEMPERATURE": 48.1, "VELOCITY": 0.8, "FORCE": 20.0},
        }
        out.append(RawMessage("mqtt", f"robots/{robot}/telemetry", robot, "telemetry", orjson.dumps(body)))
    return out


async def throughput(pipeline: Pipeline, engine: RuleEngine, messages: list[RawMessage]) -> float:
    started = time.perf_counter()
    pending: set[asyncio.Future[Any]] = set()
    for i in range(0, len(messages), 100):
        while sum(1 for _ in pending) * 100 >= WINDOW:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        pending.add(pipeline.enqueue(messages[i : i + 100]))
    await asyncio.gather(*pending)
    while not engine.idle:  # noqa: ASYNC110 - polled: the bench adds nothing to the evaluator's path
        await asyncio.sleep(0.001)
    return len(messages) / (time.perf_counter() - started)


async def throughputs(
    dsn: str, ids: list[str], robots: list[str], args: argparse.Namespace
) -> tuple[list[float], list[float]]:
    """Rounds alternating no active edict and the 100 bench edicts, through the pipeline and the
    evaluator wired as `sepulki ingest` wires them (app/ingest/service.py)."""
    settings = Settings(env="development", database_url=dsn, edict_reload_s=0.2)
    pool = await db.create_pool(dsn, min_size=1, max_size=4)
    broadcast = Broadcast("memory://")
    events = Events(broadcast)
    engine = RuleEngine(pool, events, settings)
    base = datetime(2026, 11, 15, tzinfo=UTC)
    without: list[float] = []
    with_edicts: list[float] = []
    try:
        async with broadcast:
            await engine.start()
            async with Pipeline(pool, events, settings, after_commit=engine.offer) as pipeline:
                for r in range(args.rounds):
                    for active, rates in ((False, without), (True, with_edicts)):
                        await pool.execute(
                            "UPDATE edicts SET active = $2 WHERE id = ANY($1::uuid[])", ids, active
                        )
                        await asyncio.sleep(0.5)  # the evaluator reloads
                        first = (2 * r + int(active)) * args.messages
                        rates.append(
                            await throughput(pipeline, engine, samples(robots, first, args.messages, base))
                        )
            await engine.stop()
    finally:
        await events.aclose()
        await pool.close()
    return without, with_edicts


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def latency(
    running: Any, port: int, token: str, robots: list[str], count: int
) -> tuple[list[float], list[float]]:
    """Per breach: submit -> subscriber, and the sample's commit -> subscriber."""
    pipeline = running.pipeline
    subscription = {
        "id": "1",
        "type": "subscribe",
        "payload": {"query": "subscription { policyBreaches { id robotId data } }"},
    }
    sent_at: dict[int, float] = {}
    committed_at: dict[int, float] = {}
    got: list[float] = []
    after_commit: list[float] = []
    # Stages of each breach: the evaluator's transaction committed (its events about to be
    # published), then the subscriber's receipt.
    evaluated_at: dict[int, float] = {}
    stages: dict[str, list[float]] = {
        "submit_to_commit": [],
        "commit_to_evaluated": [],
        "evaluated_to_subscriber": [],
    }
    publish = alerts.publish

    async def timed_publish(events: Any, recorded: alerts.Recorded) -> None:
        now = time.perf_counter()
        for event in recorded.events:
            values = (event.payload.get("data") or {}).get("values") or {}
            if "battery_level" in values and any(c.startswith("breaches") for c in event.channels):
                evaluated_at[int(round(values["battery_level"] * 1000))] = now
        await publish(events, recorded)

    alerts.publish = timed_publish  # type: ignore[assignment]
    stop = asyncio.Event()
    seq = iter(range(10_000_000, 20_000_000))
    clock = datetime.now(UTC) - timedelta(minutes=30)

    def message(robot: str, battery: float) -> RawMessage:
        nonlocal clock
        clock += timedelta(milliseconds=5)
        body = {
            "seq": next(seq),
            "ts": clock.isoformat(),
            "batteryLevel": battery,
            "metrics": {"CPU_USAGE": 30.0},
        }
        return RawMessage("mqtt", f"robots/{robot}/telemetry", robot, "telemetry", orjson.dumps(body))

    async def background() -> None:
        # The other robots at 10 Hz each, as a live fleet sends.
        while not stop.is_set():
            await pipeline.submit([message(r, 80.0) for r in robots[1:]])
            await asyncio.sleep(0.1)

    async with connect(f"ws://127.0.0.1:{port}/graphql", subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(
            json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
        )
        await ws.recv()
        await ws.send(json.dumps(subscription))
        await asyncio.sleep(0.5)
        load = asyncio.create_task(background())

        async def read() -> None:
            async for raw in ws:
                msg = json.loads(raw)
                if msg.get("type") == "next":
                    n = msg["payload"]["data"]["policyBreaches"]["data"]["values"]["battery_level"]
                    key = int(round(n * 1000))
                    now = time.perf_counter()
                    got.append(now - sent_at[key])
                    after_commit.append(now - committed_at.get(key, now))
                    if key in evaluated_at and key in committed_at:
                        stages["submit_to_commit"].append(committed_at[key] - sent_at[key])
                        stages["commit_to_evaluated"].append(evaluated_at[key] - committed_at[key])
                        stages["evaluated_to_subscriber"].append(now - evaluated_at[key])
                    if len(got) >= count:
                        return

        reader = asyncio.create_task(read())
        robot = robots[0]
        for i in range(count):
            low = 10 + (i % 1000) / 1000  # a distinct value names each breach
            key = int(round(low * 1000))
            sent_at[key] = time.perf_counter()
            await pipeline.submit([message(robot, low)])
            committed_at[key] = time.perf_counter()
            await asyncio.sleep(0.03)
            await pipeline.submit([message(robot, 90.0)])  # recovers: the next drop breaches anew
            await asyncio.sleep(0.03)
        await asyncio.wait_for(reader, 30)
        stop.set()
        await load
    alerts.publish = publish  # type: ignore[assignment]
    for stage, values in stages.items():
        ms = [v * 1000 for v in values]
        emit(
            figure=f"breach_stage_{stage}_ms",
            p50=round(percentile(ms, 0.5), 1),
            p99=round(percentile(ms, 0.99), 1),
        )
    return got, after_commit


async def main(args: argparse.Namespace) -> None:
    async with database() as dsn:
        await db.migrate(dsn)
        passwords = Passwords(Settings(argon2_time_cost=1, argon2_memory_kib=1024))
        await seed.load(dsn, passwords)
        robots = [str(uuid.uuid4()) for _ in range(args.robots)]
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(ADD_ROBOTS, robots, [FLEETS[i % 2] for i in range(len(robots))])
            await conn.execute("UPDATE edicts SET active = false")
            ids = []
            for name, rules in bench_edicts(robots):
                ids.append(await conn.fetchval(ADD_EDICT, name, json.dumps(rules), False, ADMIN_ID))
        finally:
            await conn.close()
        without, with_edicts = await throughputs(dsn, ids, robots, args)
        best_without, best_with = max(without), max(with_edicts)
        emit(
            figure="ingest_msgs_per_s_no_edicts",
            value=round(best_without),
            rounds=[round(x) for x in without],
        )
        emit(
            figure="ingest_msgs_per_s_100_edicts",
            value=round(best_with),
            baseline=round(best_without),
            ratio=round(best_with / best_without, 3),
            rounds=[round(x) for x in with_edicts],
            robots=args.robots,
        )
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("UPDATE edicts SET active = true WHERE id = ANY($1::uuid[])", ids)
        finally:
            await conn.close()
        port = free_port()
        settings = Settings(
            env="development",
            database_url=dsn,
            port=port,
            seed_on_start=False,
            simulate_robots=0,
            edict_reload_s=0.2,
            argon2_time_cost=1,
            argon2_memory_kib=1024,
        )
        app = create_app(settings, owns_process=True)  # as `sepulki serve` runs it (app.infra.heap)
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        )
        serve = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
            await asyncio.sleep(0.05)
        try:
            running = app.state.resources_holder.running
            pool = app.state.resources_holder.resources.db
            # Latency: one more edict that does breach, the bench edicts stay active.
            breach_rules = {
                "condition": {
                    "type": "metric",
                    "operator": "AND",
                    "rules": [{"metric": "battery_level", "op": "lt", "value": 20}],
                },
                "actions": [{"type": "ALERT"}],
            }
            await pool.execute(ADD_EDICT, "bench battery", breach_rules, True, ADMIN_ID)
            await asyncio.sleep(0.5)
            token = await _token(app, port)
            got, after_commit = await latency(running, port, token, robots, args.breaches)
            ms = [x * 1000 for x in got]
            ms_commit = [x * 1000 for x in after_commit]
            emit(
                figure="breach_to_subscriber_ms",
                p50=round(percentile(ms, 0.5), 1),
                p99=round(percentile(ms, 0.99), 1),
                max=round(max(ms), 1),
                breaches=len(ms),
                from_commit_p50=round(percentile(ms_commit, 0.5), 1),
                from_commit_p99=round(percentile(ms_commit, 0.99), 1),
                background_msgs_per_s=(args.robots - 1) * 10,
            )
        finally:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await serve


async def _token(app: Any, port: int) -> str:
    login = (
        'mutation { login(credentials: {email: "admin@sepulki.com", password: "admin123"}) '
        "{ session { token } } }"
    )
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        body = (await client.post("/graphql", json={"query": login})).json()
    token: str = body["data"]["login"]["session"]["token"]
    return token


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=30000)
    parser.add_argument("--robots", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--breaches", type=int, default=200)
    asyncio.run(main(parser.parse_args()))
