"""An operator reads a fleet's stored telemetry over days: the window is served from a rollup
chosen so that the answer stays small, newest entries first, and an explicit resolution still
wins (within the rolled-up cap)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from app.bellows import (
    DAY,
    HOUR,
    MAX_ROLLED_METRIC_POINTS,
    RAW,
    ROLLED_ROBOT_BUCKETS,
    buckets_in,
    pick_window_resolution,
)
from tests.seed_ids import ALPHA, BETA, DEV_FLEET
from tests.support import Api, request_work

BELLOWS = """
query($fleetId: ID!, $range: TimeRange!, $resolution: TelemetryResolution) {
  bellows(fleetId: $fleetId, timeRange: $range, resolution: $resolution) {
    fleetId resolution
    metrics { name value unit timestamp robotId batteryLevel healthScore pose }
  }
}
"""
# What a rolled-up window holds, newest first, as the rollup tables have it.
STORED = """
SELECT robot_id::text, bucket, metric, sum / n AS avg FROM ROLLUP
WHERE fleet_id = $1 AND bucket > $2::timestamptz - $4::interval AND bucket <= $3
ORDER BY bucket DESC, robot_id DESC, metric DESC
"""
DERIVED = ("batteryLevel", "healthScore", "uptime", "working")


def window(days: float) -> tuple[datetime, datetime]:
    end = datetime.now(UTC)
    return end - timedelta(days=days), end


def as_range(start: datetime, end: datetime) -> dict[str, str]:
    return {"start": start.isoformat(), "end": end.isoformat()}


async def stored(api: Api, resolution: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    table = {HOUR: "telemetry_1h", DAY: "telemetry_1d"}[resolution]
    width = timedelta(hours=1) if resolution == HOUR else timedelta(days=1)
    rows = await api.resources.db.fetch(STORED.replace("ROLLUP", table), DEV_FLEET, start, end, width)
    return [dict(r) for r in rows]


def key(entry: dict[str, Any]) -> tuple[str, datetime, str]:
    return (entry["robotId"], datetime.fromisoformat(entry["timestamp"]), entry["name"])


def test_the_window_resolution_follows_the_fleet_size() -> None:
    start, end = datetime(2026, 11, 1, 0, 30, tzinfo=UTC), datetime(2026, 11, 3, 0, 30, tzinfo=UTC)
    assert buckets_in(start, end, HOUR) == 49 and buckets_in(start, end, DAY) == 3
    assert pick_window_resolution(end - timedelta(hours=24), end, 500) == RAW
    assert pick_window_resolution(start, end, 2) == HOUR  # 98 robot-hours
    assert pick_window_resolution(start, end, 3) == DAY
    # A big fleet over a month: daily, 31 buckets a robot.
    assert pick_window_resolution(end - timedelta(days=30), end, 50) == DAY
    # A fleet with no robot (yet) is read as one robot's.
    assert pick_window_resolution(start, end, 0) == HOUR
    assert ROLLED_ROBOT_BUCKETS * 10 == MAX_ROLLED_METRIC_POINTS


async def test_a_two_day_window_of_two_robots_is_every_hourly_entry(api: Api) -> None:
    start, end = window(2)
    with api.count_statements() as statements:
        body = await api.data(BELLOWS, {"fleetId": DEV_FLEET, "range": as_range(start, end)})
    stream = body["bellows"]
    assert stream["resolution"] == HOUR
    expected = [r for r in await stored(api, HOUR, start, end) if r["metric"] not in DERIVED]
    metrics = stream["metrics"]
    # The whole window: the seed's hourly history of the day before plus the last hour's buckets.
    assert 0 < len(expected) < MAX_ROLLED_METRIC_POINTS
    assert [key(m) for m in metrics] == [(r["robot_id"], r["bucket"], r["metric"]) for r in expected]
    assert [m["value"] for m in metrics] == [r["avg"] for r in expected]
    assert {m["robotId"] for m in metrics} == {ALPHA, BETA}
    # Each entry carries its bucket's average battery and health, not its own; no pose.
    levels = {
        (r["robot_id"], r["bucket"], r["metric"]): r["avg"]
        for r in await stored(api, HOUR, start, end)
        if r["metric"] in ("batteryLevel", "healthScore")
    }
    for m in metrics:
        robot, bucket, _ = key(m)
        assert m["batteryLevel"] == levels[(robot, bucket, "batteryLevel")]
        assert m["healthScore"] == levels[(robot, bucket, "healthScore")]
        assert m["pose"] is None
    assert next(m for m in metrics if m["name"] == "CPU_USAGE")["unit"] == "%"
    # One statement for the metrics (the entries and their buckets' battery and health).
    assert sum("telemetry_1h" in s for s in request_work(statements)) == 1


async def test_a_longer_window_is_read_daily_and_an_override_is_capped(api: Api) -> None:
    start, end = window(9)
    body = await api.data(BELLOWS, {"fleetId": DEV_FLEET, "range": as_range(start, end)})
    assert body["bellows"]["resolution"] == DAY
    daily = [r for r in await stored(api, DAY, start, end) if r["metric"] not in DERIVED]
    # 8 or 9 days of 2 robots and 7 metrics: far below the cap, all of them.
    assert 2 * 7 * 8 <= len(daily) <= 2 * 7 * 10
    assert [key(m) for m in body["bellows"]["metrics"]] == [
        (r["robot_id"], r["bucket"], r["metric"]) for r in daily
    ]

    # Asked for hourly over the same window: more hourly entries than the cap; the newest are kept.
    variables = {"fleetId": DEV_FLEET, "range": as_range(start, end), "resolution": HOUR}
    hourly = (await api.data(BELLOWS, variables))["bellows"]
    assert hourly["resolution"] == HOUR
    expected = [r for r in await stored(api, HOUR, start, end) if r["metric"] not in DERIVED]
    assert len(expected) > MAX_ROLLED_METRIC_POINTS
    assert len(hourly["metrics"]) == MAX_ROLLED_METRIC_POINTS
    assert [key(m) for m in hourly["metrics"]] == [
        (r["robot_id"], r["bucket"], r["metric"]) for r in expected[:MAX_ROLLED_METRIC_POINTS]
    ]

    # A day's window stays raw, with the samples' own battery, health and pose.
    start, end = window(1)
    raw = (await api.data(BELLOWS, {"fleetId": DEV_FLEET, "range": as_range(start, end)}))["bellows"]
    assert raw["resolution"] == RAW and raw["metrics"][0]["pose"] is not None
