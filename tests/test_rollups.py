"""An operator's charts stay right when robots resend or send late: rollups at 1 minute, 1 hour
and 1 day are recomputed from what is stored, never added up blindly."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from app.settings import Settings
from tests.seed_ids import ALPHA, BETA, DEV_FLEET
from tests.support import Api, eventually, request_work
from tests.telemetry_support import iso, quiet_minute, send

ROLLUP_ROW = """
SELECT n, sum / n AS avg, min, max, last FROM telemetry_1m WHERE robot_id = $1 AND bucket = $2 AND metric = $3
"""
SERIES = """
query($robots: [ID!]!, $metrics: [String!]!, $range: TimeRange!, $resolution: TelemetryResolution) {
  telemetrySeries(robotIds: $robots, metrics: $metrics, timeRange: $range, resolution: $resolution) {
    robotId metric unit resolution truncated
    points { timestamp avg min max count last }
  }
}
"""


def sample(seq: int | None, at: datetime, cpu: float, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"ts": iso(at), "metrics": {"CPU_USAGE": cpu}} | fields
    if seq is not None:
        body["seq"] = seq
    return body


async def rollup(api: Api, bucket: datetime, metric: str = "CPU_USAGE", table: str = "telemetry_1m") -> Any:
    sql = ROLLUP_ROW.replace("telemetry_1m", table)
    return await api.resources.db.fetchrow(sql, ALPHA, bucket, metric)


async def test_late_and_duplicate_samples_keep_every_rollup_level_right(api: Api) -> None:
    worker = api.components.telemetry
    minute = quiet_minute()
    hour = minute.replace(minute=0)
    day = minute.replace(hour=0, minute=0)
    before_hour = await rollup(api, hour, table="telemetry_1h")
    before_day = await rollup(api, day, table="telemetry_1d")

    # Given five samples of one minute, rolled up
    first = [sample(100 + i, minute + timedelta(seconds=10 + i), 10.0 * (i + 1)) for i in range(5)]
    assert await send(api, ALPHA, "telemetry", *first) == ["stored"] * 5
    await worker.roll_up()
    row = await rollup(api, minute)
    assert (row["n"], row["avg"], row["min"], row["max"], row["last"]) == (5, 30.0, 10.0, 50.0, 50.0)

    # When the robot resends them all (a redelivery), nothing changes
    assert await send(api, ALPHA, "telemetry", *first) == ["duplicate"] * 5
    await worker.roll_up()
    assert (await rollup(api, minute))["n"] == 5

    # When a sample taken before them arrives late, it joins its own minute: counted, in min/max,
    # but not the minute's last value (that is the newest by the robot's clock)
    late = sample(99, minute + timedelta(seconds=1), 100.0)
    assert await send(api, ALPHA, "telemetry", late) == ["stored"]
    await worker.roll_up()
    row = await rollup(api, minute)
    assert (row["n"], row["max"], row["last"]) == (6, 100.0, 50.0)
    assert row["avg"] == (10 + 20 + 30 + 40 + 50 + 100) / 6

    # Then the hour and the day include exactly the six new samples on top of what they held
    hour_row = await rollup(api, hour, table="telemetry_1h")
    day_row = await rollup(api, day, table="telemetry_1d")
    assert hour_row["n"] == (before_hour["n"] if before_hour else 0) + 6
    assert day_row["n"] == (before_day["n"] if before_day else 0) + 6
    assert hour_row["max"] >= 100.0 and day_row["max"] >= 100.0

    # And a chart at one-minute resolution shows that minute as the rollup has it
    body = await api.data(
        SERIES,
        {
            "robots": [ALPHA],
            "metrics": ["CPU_USAGE"],
            "range": {"start": iso(minute - timedelta(minutes=5)), "end": iso(minute + timedelta(minutes=5))},
            "resolution": "MINUTE",
        },
    )
    [series] = body["telemetrySeries"]
    point = next(p for p in series["points"] if datetime.fromisoformat(p["timestamp"]) == minute)
    assert (point["count"], point["max"], point["last"]) == (6, 100.0, 50.0)
    assert series["resolution"] == "MINUTE" and series["unit"] == "%" and series["truncated"] is False


async def test_the_worker_rolls_up_by_itself_on_its_interval(settings: Settings) -> None:
    minute = quiet_minute(4)
    async with Api.running(settings.replace(telemetry_rollup_interval_s=0.1)) as api:
        await send(api, ALPHA, "telemetry", sample(500, minute + timedelta(seconds=5), 42.0))

        async def rolled() -> Any:
            return await rollup(api, minute)

        row = await eventually(rolled, what="the minute rolled up")
        assert (row["n"], row["avg"]) == (1, 42.0)


async def test_a_minute_is_not_rolled_up_while_a_transaction_adding_to_it_is_open(
    api: Api, database_url: str
) -> None:
    # The ingest's mark of a minute is taken under the mark's row lock (as app/ingest/writer.py
    # does) in the same transaction as its rows; the worker must leave it for later.
    minute = quiet_minute(5)
    await send(api, ALPHA, "telemetry", sample(600, minute + timedelta(seconds=1), 1.0))
    await api.components.telemetry.roll_up()
    conn = await asyncpg.connect(database_url)
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute(
            "INSERT INTO telemetry (robot_id, fleet_id, seq, ts, metrics) VALUES ($1, $2, 601, $3, $4)",
            ALPHA,
            DEV_FLEET,
            minute + timedelta(seconds=2),
            '{"CPU_USAGE": 3.0}',
        )
        await conn.execute(
            "INSERT INTO telemetry_rollup_pending VALUES ($1, $2) "
            "ON CONFLICT (robot_id, bucket) DO UPDATE SET robot_id = excluded.robot_id WHERE false",
            ALPHA,
            minute,
        )
        await api.components.telemetry.roll_up()
        assert (await rollup(api, minute))["n"] == 1
        await tx.commit()
    finally:
        await conn.close()
    await api.components.telemetry.roll_up()
    row = await rollup(api, minute)
    assert (row["n"], row["avg"]) == (2, 2.0)


async def test_series_pick_their_resolution_by_range_and_accept_an_override(api: Api) -> None:
    now = datetime.now(UTC)

    async def series(hours: float, resolution: str | None = None) -> dict[str, Any]:
        variables = {
            "robots": [ALPHA, BETA],
            "metrics": ["batteryLevel", "VELOCITY"],
            "range": {"start": iso(now - timedelta(hours=hours)), "end": iso(now)},
            "resolution": resolution,
        }
        return await api.data(SERIES, variables)

    half_hour = (await series(0.5))["telemetrySeries"]
    assert [(s["robotId"], s["metric"]) for s in half_hour] == [
        (ALPHA, "batteryLevel"),
        (ALPHA, "VELOCITY"),
        (BETA, "batteryLevel"),
        (BETA, "VELOCITY"),
    ]
    assert {s["resolution"] for s in half_hour} == {"RAW"}
    raw = half_hour[0]["points"]
    stored = await api.resources.db.fetchval(
        "SELECT count(*) FROM telemetry WHERE robot_id = $1 AND ts >= $2 AND NOT is_status",
        ALPHA,
        now - timedelta(hours=0.5),
    )
    assert len(raw) == stored > 0
    assert all(p["count"] == 1 and p["min"] == p["max"] == p["avg"] for p in raw)
    assert [p["timestamp"] for p in raw] == sorted(p["timestamp"] for p in raw)

    week = (await series(24 * 7))["telemetrySeries"]
    assert {s["resolution"] for s in week} == {"HOUR"}
    # The seed's week of history: a sample every 20 minutes, three to an hour.
    assert [p["count"] for p in week[0]["points"]].count(3) > 100

    days = (await series(24 * 7, "DAY"))["telemetrySeries"]
    assert {s["resolution"] for s in days} == {"DAY"} and 6 <= len(days[0]["points"]) <= 9

    bad = {"robots": [], "metrics": ["x"], "range": {"start": iso(now - timedelta(hours=1)), "end": iso(now)}}
    assert await api.error_codes(SERIES, bad) == ["BAD_USER_INPUT"]
    unknown = bad | {"robots": ["70000000-0000-4000-8000-000000000099"]}
    assert await api.error_codes(SERIES, unknown) == ["NOT_FOUND"]


async def test_series_statement_count_does_not_grow_with_robots(api: Api) -> None:
    now = datetime.now(UTC)
    variables = {
        "metrics": ["CPU_USAGE"],
        "range": {"start": iso(now - timedelta(days=3)), "end": iso(now)},
    }
    await api.data(SERIES, variables | {"robots": [ALPHA]})  # sign-in outside the counts
    with api.count_statements() as one:
        await api.data(SERIES, variables | {"robots": [ALPHA]})
    with api.count_statements() as four:
        robots = [ALPHA, BETA, "70000000-0000-4000-8000-000000000003", "70000000-0000-4000-8000-000000000004"]
        body = await api.data(SERIES, variables | {"robots": robots})
    assert len(body["telemetrySeries"]) == 4
    assert len(request_work(one)) == len(request_work(four))


async def test_utilization_view_is_refreshed_without_blocking_readers(api: Api) -> None:
    worker = api.components.telemetry
    now = datetime.now(UTC)
    await send(
        api,
        BETA,
        "status",
        {"status": "ERROR", "ts": iso(now - timedelta(minutes=30))},
    )
    # A reader holding the view open does not keep the concurrent refresh from finishing.
    async with api.resources.db.acquire() as reader, reader.transaction():
        await reader.fetchval("SELECT count(*) FROM robot_utilization_daily")
        assert await asyncio.wait_for(worker.refresh_utilization(), 60)
    error_s = await api.resources.db.fetchval(
        "SELECT sum(error_s) FROM robot_utilization_daily WHERE robot_id = $1", BETA
    )
    assert error_s >= 29 * 60
