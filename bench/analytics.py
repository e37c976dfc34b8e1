"""Telemetry at scale: COPY a large history into partitioned telemetry, build the rollups, then
p50/p95 of each analytics query and of a 30-day `bellows` through the GraphQL app, each against
the same question answered from the raw table without rollups; bytes per stored sample; the
time to drop a month of data.

`python -m bench.analytics` (10 M samples, 200 robots, 60 days) or `--small` (a quick run for CI).
Every figure is one JSON line (bench/common.emit).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from app import telemetry
from app.infra import db
from app.settings import Settings
from app.web.app import create_app
from bench.common import call, database, emit

LOGIN = """
mutation { login(credentials: {email: "admin@sepulki.com", password: "admin123"}) { session { token } } }
"""
SEPULKA = "50000000-0000-4000-8000-000000000001"
INGOT = "60000000-0000-4000-8000-000000000001"
LOCUS = "30000000-0000-4000-8000-000000000002"
FLEET_SIZE = 50
STATUSES = ("WORKING", "WORKING", "IDLE", "CHARGING")

# Rollups built in one pass per day, as a backfill would (the worker's per-minute path is for
# the live trickle): minutes from raw, hours from minutes, days from hours.
BUILD_MINUTES = """
INSERT INTO telemetry_1m (robot_id, fleet_id, bucket, metric, n, sum, min, max, last, last_ts)
SELECT t.robot_id, (array_agg(t.fleet_id ORDER BY t.ts DESC))[1], date_trunc('minute', t.ts, 'UTC'),
       v.metric, count(*), sum(v.value), min(v.value), max(v.value),
       (array_agg(v.value ORDER BY t.ts DESC))[1], max(t.ts)
FROM telemetry t
CROSS JOIN LATERAL (
  SELECT m.key AS metric, m.value::double precision AS value FROM jsonb_each(t.metrics) AS m
  UNION ALL SELECT 'batteryLevel', t.battery_level WHERE t.battery_level IS NOT NULL
  UNION ALL SELECT 'healthScore', t.health_score WHERE t.health_score IS NOT NULL
  UNION ALL SELECT 'uptime', CASE WHEN t.status IN ('OFFLINE', 'ERROR') THEN 0 ELSE 1 END
  UNION ALL SELECT 'working', CASE WHEN t.status = 'WORKING' THEN 1 ELSE 0 END
) AS v
WHERE t.ts >= $1 AND t.ts < $2 AND NOT t.is_status
GROUP BY 1, 3, 4
"""
BUILD_UP = """
INSERT INTO DST (robot_id, fleet_id, bucket, metric, n, sum, min, max, last, last_ts)
SELECT robot_id, (array_agg(fleet_id ORDER BY last_ts DESC))[1], date_trunc(UNIT, bucket, 'UTC'), metric,
       sum(n), sum(sum), min(min), max(max), (array_agg(last ORDER BY last_ts DESC))[1], max(last_ts)
FROM SRC WHERE bucket >= $1 AND bucket < $2
GROUP BY 1, 3, 4
"""
BUILD_HOURS = BUILD_UP.replace("DST", "telemetry_1h").replace("SRC", "telemetry_1m").replace("UNIT", "'hour'")
# Hours straight from raw, for days older than MINUTE_DAYS (same sums as through the minutes).
BUILD_HOURS_FROM_RAW = BUILD_MINUTES.replace("telemetry_1m", "telemetry_1h").replace("'minute'", "'hour'")
# Minute rollups only for the last days (what a MINUTE-resolution query reads): at one sample per
# 104 s each sample is a minute of its own, 8 rows per sample, and building 60 days of them here
# takes most of an hour on 2 shared cores.
MINUTE_DAYS = 2
BUILD_DAYS = BUILD_UP.replace("DST", "telemetry_1d").replace("SRC", "telemetry_1h").replace("UNIT", "'day'")

# The same questions from the raw rows (the baselines).
RAW_PERFORMANCE = """
SELECT robot_id, count(*), avg(CASE WHEN status IN ('OFFLINE', 'ERROR') THEN 0 ELSE 1 END),
       sum(CASE WHEN status = 'WORKING' THEN 1 ELSE 0 END), avg((metrics ->> 'VELOCITY')::float8),
       avg(battery_level), avg(health_score)
FROM telemetry WHERE fleet_id = $1 AND ts BETWEEN $2 AND $3 AND NOT is_status GROUP BY robot_id
"""
RAW_HEALTH = """
SELECT date_trunc('day', ts, 'UTC'), avg(health_score), min(health_score),
       (SELECT max((metrics ->> 'MOTOR_TEMPERATURE')::float8) FROM telemetry
        WHERE robot_id = $1 AND ts > $2::timestamptz - interval '24 hours')
FROM telemetry WHERE robot_id = $1 AND ts > $2::timestamptz - interval '30 days' AND NOT is_status GROUP BY 1
"""
RAW_BATTERY = """
WITH h AS (
  SELECT DISTINCT ON (t.robot_id, date_trunc('hour', t.ts)) t.robot_id, t.battery_level AS last
  FROM telemetry t JOIN robots r ON r.id = t.robot_id
  WHERE r.fleet_id = $1 AND t.ts > $2::timestamptz - interval '7 days' AND NOT t.is_status
  ORDER BY t.robot_id, date_trunc('hour', t.ts), t.ts DESC
)
SELECT robot_id, count(*) FROM h GROUP BY robot_id
"""
RAW_UTILIZATION = """
WITH s AS (
  SELECT robot_id, ts, status, coalesce(lead(ts) OVER (PARTITION BY robot_id ORDER BY ts), now()) AS until
  FROM telemetry WHERE is_status AND fleet_id = $1 AND ts BETWEEN $2 AND $3
)
SELECT status, sum(extract(epoch FROM until - ts)) FROM s GROUP BY status
"""
QUERIES = {
    "fleetPerformance": """query($f: ID!, $r: TimeRange!) { fleetPerformance(fleetId: $f, timeRange: $r) {
        uptime efficiency averageSpeed robots { robotId uptime efficiency } } }""",
    "robotHealth": """query($robot: ID!) { robotHealth(robotId: $robot) {
        healthScore trendPerDay history { day healthScore } factors { name value warning } } }""",
    "batteryAnalytics": """query($f: ID!) { batteryAnalytics(fleetId: $f) {
        averageDrainRatePerHour robots { robotId drainRatePerHour chargeCyclesLastWeek hoursToEmpty } } }""",
    "utilizationReport": """query($f: ID!, $r: TimeRange!) { utilizationReport(fleetId: $f, timeRange: $r) {
        working idle charging robots { robotId working } } }""",
    "bellows": """query($f: ID!, $r: TimeRange!, $res: TelemetryResolution) {
        bellows(fleetId: $f, timeRange: $r, resolution: $res) {
          resolution metrics { name value timestamp } } }""",
}


def samples(
    robots: list[tuple[str, str]], rows: int, start: datetime, days: int
) -> Iterator[tuple[Any, ...]]:
    """`rows` samples spread evenly over the robots and the range, with a few metric payloads
    (rendering JSON is not what is measured)."""
    rng = random.Random(7)
    payloads = [
        json.dumps(
            {
                "CPU_USAGE": round(rng.uniform(10, 90), 1),
                "MOTOR_TEMPERATURE": round(rng.uniform(30, 75), 1),
                "VELOCITY": round(rng.uniform(0, 2), 2),
                "BATTERY_SOC": round(rng.uniform(10, 100), 1),
            }
        )
        for _ in range(512)
    ]
    per_robot = rows // len(robots)
    step = days * 86400 / per_robot
    for i in range(per_robot):
        at = start + timedelta(seconds=i * step)
        for k, (robot, fleet) in enumerate(robots):
            status = STATUSES[(i // 60 + k) % 4]
            yield (robot, fleet, i, at, status, 100 - (i % 97), 90 - (i % 13), payloads[(i + k) % 512], False)


def status_rows(robots: list[tuple[str, str]], start: datetime, days: int) -> Iterator[tuple[Any, ...]]:
    for n in range(days * 12):  # a status message every 2 hours
        at = start + timedelta(hours=2 * n)
        for k, (robot, fleet) in enumerate(robots):
            yield (robot, fleet, -1 - n, at, STATUSES[(n + k) % 4], None, None, "{}", True)


async def timed(fn: Any, runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return statistics.median(times), times[max(0, int(round(0.95 * len(times))) - 1)]


async def main(rows: int, robot_count: int, days: int, runs: int, keep_rollups: bool = False) -> None:
    async with database() as dsn:
        await db.migrate(dsn)
        settings = Settings(
            env="development",
            database_url=dsn,
            data_dir=Path(tempfile.mkdtemp(prefix="sepulki-bench-data-")),
            argon2_time_cost=1,
            argon2_memory_kib=1024,
            simulate_robots=0,
            telemetry_raw_retention_days=0,
            telemetry_1m_retention_days=0,
            telemetry_1h_retention_days=0,
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):  # migrations, the development seed, workers
            await _run(app, dsn, rows, robot_count, days, runs, keep_rollups)


async def _run(
    app: Any, dsn: str, rows: int, robot_count: int, days: int, runs: int, keep_rollups: bool
) -> None:
    conn = await asyncpg.connect(dsn)
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(days=days)
    fleets = [
        f"4b000000-0000-4000-8000-{i:012d}" for i in range((robot_count + FLEET_SIZE - 1) // FLEET_SIZE)
    ]
    await conn.executemany(
        "INSERT INTO fleets (id, name, locus_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        [(f, f"Bench {i}", LOCUS) for i, f in enumerate(fleets)],
    )
    robots = [(f"7b000000-0000-4000-8000-{i:012d}", fleets[i // FLEET_SIZE]) for i in range(robot_count)]
    await conn.executemany(
        "INSERT INTO robots (id, name, sepulka_id, fleet_id, current_ingot_id, status, battery_level, "
        "health_score) VALUES ($1, $2, $3, $4, $5, 'WORKING', 80, 90) ON CONFLICT DO NOTHING",
        [(r, f"Bench {i}", SEPULKA, f, INGOT) for i, (r, f) in enumerate(robots)],
    )
    month = telemetry.floor(start, "month")
    while month < now:
        nxt = telemetry.following(month, "month")
        for table, key in (
            ("telemetry", "ts"),
            ("telemetry_1m", "bucket"),
            ("telemetry_1h", "bucket"),
            ("telemetry_1d", "bucket"),
        ):
            await conn.fetchval("SELECT partition_create($1::regclass, $2, $3, $4)", table, month, nxt, key)
        month = nxt
    loaded = await conn.fetchval("SELECT count(*) FROM telemetry WHERE robot_id = $1", robots[0][0])
    if loaded:  # --reuse: the samples of an earlier run are still there
        stored = await conn.fetchval("SELECT count(*) FROM telemetry WHERE NOT is_status")
    else:
        columns = [
            "robot_id",
            "fleet_id",
            "seq",
            "ts",
            "status",
            "battery_level",
            "health_score",
            "metrics",
            "is_status",
        ]
        t = time.perf_counter()
        await conn.copy_records_to_table(
            "telemetry", records=samples(robots, rows, start, days), columns=columns
        )
        copy_s = time.perf_counter() - t
        await conn.copy_records_to_table(
            "telemetry", records=status_rows(robots, start, days), columns=columns
        )
        stored = await conn.fetchval("SELECT count(*) FROM telemetry WHERE NOT is_status")
        emit(
            figure="telemetry_copy_rows_per_s",
            value=round(stored / copy_s),
            unit="rows/s",
            rows=stored,
            robots=robot_count,
            days=days,
            seconds=round(copy_s, 1),
        )
    built = loaded and await conn.fetchval(
        "SELECT EXISTS (SELECT FROM telemetry_1d WHERE robot_id = $1)", robots[0][0]
    )
    if keep_rollups and built:
        # --keep-rollups with an earlier run's samples and rollups still there: measure them as
        # they are (the ~10 minute build is not repeated; windows end a little later than then).
        await conn.execute("REFRESH MATERIALIZED VIEW robot_utilization_daily")
    else:
        t = time.perf_counter()
        await conn.execute("TRUNCATE telemetry_1m, telemetry_1h, telemetry_1d, telemetry_rollup_pending")
        day = telemetry.floor(start, "day")
        while day <= now:
            if day >= now - timedelta(days=MINUTE_DAYS + 1):
                await conn.execute(BUILD_MINUTES, day, day + timedelta(days=1))
                await conn.execute(BUILD_HOURS, day, day + timedelta(days=1))
            else:
                await conn.execute(BUILD_HOURS_FROM_RAW, day, day + timedelta(days=1))
            await conn.execute(BUILD_DAYS, day, day + timedelta(days=1))
            day += timedelta(days=1)
        await conn.execute("REFRESH MATERIALIZED VIEW robot_utilization_daily")
        await conn.execute("ANALYZE")
        emit(figure="rollup_build_s", value=round(time.perf_counter() - t, 1), unit="s", rows=stored)

    sizes = {}
    for table in ("telemetry", "telemetry_1m", "telemetry_1h", "telemetry_1d"):
        sizes[table] = int(
            await conn.fetchval(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_inherits i "
                "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = $1::regclass",
                table,
            )
            or 0
        )
    emit(
        figure="bytes_per_raw_sample",
        value=round(sizes["telemetry"] / stored, 1),
        unit="bytes",
        note="heap + TOAST + primary key, (robot_id, ts), (fleet_id, ts), BRIN ts, status partial index",
    )
    emit(
        figure="rollup_bytes_per_raw_sample",
        value=round(sum(sizes[t] for t in sizes if t != "telemetry") / stored, 1),
        unit="bytes",
        tables={k: v for k, v in sizes.items() if k != "telemetry"},
    )

    _, payload = await call(app, json.dumps({"query": LOGIN}).encode(), [])
    token = json.loads(payload)["data"]["login"]["session"]["token"]
    auth = [(b"authorization", f"Bearer {token}".encode())]
    fleet, robot = fleets[0], robots[0][0]
    month_range = {"start": (now - timedelta(days=30)).isoformat(), "end": now.isoformat()}
    week_range = {"start": (now - timedelta(days=7)).isoformat(), "end": now.isoformat()}

    async def gql(name: str, variables: dict[str, Any]) -> dict[str, Any]:
        status, body = await call(
            app, json.dumps({"query": QUERIES[name], "variables": variables}).encode(), auth
        )
        assert status == 200 and b'"errors"' not in body, body[:500]
        data: dict[str, Any] = json.loads(body)["data"][name]
        return data

    cases = [
        (
            "fleetPerformance",
            {"f": fleet, "r": month_range},
            RAW_PERFORMANCE,
            (fleet, now - timedelta(days=30), now),
        ),
        ("robotHealth", {"robot": robot}, RAW_HEALTH, (robot, now)),
        ("batteryAnalytics", {"f": fleet}, RAW_BATTERY, (fleet, now)),
        (
            "utilizationReport",
            {"f": fleet, "r": week_range},
            RAW_UTILIZATION,
            (fleet, now - timedelta(days=7), now),
        ),
    ]
    for name, variables, raw_sql, raw_args in cases:
        await gql(name, variables)
        p50, p95 = await timed(lambda n=name, v=variables: gql(n, v), runs)
        r50, r95 = await timed(lambda s=raw_sql, a=raw_args: conn.fetch(s, *a), max(3, runs // 4))
        emit(
            figure=f"{name}_ms",
            p50=round(p50, 1),
            p95=round(p95, 1),
            baseline_p50=round(r50, 1),
            baseline_p95=round(r95, 1),
            baseline_name="the same question from the raw table (SQL only)",
            ratio_p95=round(r95 / p95, 1),
            unit="ms",
            runs=runs,
        )
    # bellows over 30 days: the resolution the window and the fleet pick, then HOUR asked for
    # explicitly (the rolled-up cap), each against RAW asked for (the raw table, its own cap).
    raw = {"f": fleet, "r": month_range, "res": "RAW"}
    raw_answer = await gql("bellows", raw)
    r50, r95 = await timed(lambda: gql("bellows", raw), max(3, runs // 4))
    for figure, resolution in (("bellows_30d_ms", None), ("bellows_30d_hour_ms", "HOUR")):
        variables = {"f": fleet, "r": month_range, "res": resolution}
        answer = await gql("bellows", variables)
        p50, p95 = await timed(lambda v=variables: gql("bellows", v), runs)
        emit(
            figure=figure,
            p50=round(p50, 1),
            p95=round(p95, 1),
            baseline_p50=round(r50, 1),
            baseline_p95=round(r95, 1),
            baseline_name="bellows(resolution: RAW), the raw table",
            ratio_p95=round(r95 / p95, 1),
            unit="ms",
            runs=runs,
            resolution=answer["resolution"],
            entries=len(answer["metrics"]),
            baseline_entries=len(raw_answer["metrics"]),
        )

    oldest = (await telemetry.partitions(conn, "telemetry"))[0]
    rows_in = await conn.fetchval(
        "SELECT count(*) FROM telemetry WHERE ts >= $1 AND ts < $2", oldest[1], oldest[2]
    )
    # With --keep-rollups the drop is rolled back, so the data stays for the next run.
    transaction = conn.transaction()
    await transaction.start()
    t = time.perf_counter()
    await conn.fetchval(telemetry.DROP_PARTITION, "telemetry", oldest[0])
    drop_ms = (time.perf_counter() - t) * 1000
    await (transaction.rollback() if keep_rollups else transaction.commit())
    emit(
        figure="drop_month_ms",
        value=round(drop_ms, 1),
        unit="ms",
        partition=oldest[0],
        rows=rows_in,
        rolled_back=keep_rollups,
    )
    await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--robots", type=int, default=200)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--runs", type=int, help="timed runs of each query (40; 8 with --small)")
    parser.add_argument("--small", action="store_true", help="20,000 samples, 20 robots, 40 days")
    parser.add_argument(
        "--keep-rollups",
        action="store_true",
        help="with SEPULKI_DATABASE_URL holding an earlier run's samples and rollups, skip the rollup build",
    )
    args = parser.parse_args()
    if args.small:
        args.rows, args.robots, args.days = 20_000, 20, 40
    args.runs = args.runs or (8 if args.small else 40)
    asyncio.run(main(args.rows, args.robots, args.days, args.runs, args.keep_rollups))
