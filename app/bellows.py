"""Bellows: stored telemetry read back per fleet and time window, and one robot's recent samples,
from the raw rows or a rollup depending on the range's length (docs/telemetry.md)."""

from __future__ import annotations

import re
from collections.abc import Hashable
from datetime import datetime, timedelta
from typing import Any

from app.context import Context
from app.core.errors import Invalid, NotFound
from app.core.validation import parse_id
from app.infra.db import Pool

MAX_WINDOW = timedelta(days=31)
DEFAULT_DURATION = "1h"
# Per fleet and window, newest first: a month of one-a-second samples would not fit in a response,
# so the cap keeps the latest points and a client narrows the window to see older ones.
MAX_METRIC_POINTS = 5000
MAX_EVENTS = 5000
UNITS: dict[str, str] = {
    "BATTERY_SOC": "%",
    "BATTERY_VOLTAGE": "V",
    "BATTERY_CURRENT": "A",
    "MOTOR_TEMPERATURE": "C",
    "AMBIENT_TEMPERATURE": "C",
    "CPU_USAGE": "%",
    "MEMORY_USAGE": "%",
    "SIGNAL_STRENGTH": "dBm",
    "VELOCITY": "m/s",
    "VIBRATION": "g",
}
# ASCII digits only (`\d` also takes other scripts' digits), and few of them: 9 digits of seconds
# already exceed the 31-day cap, and more would overflow timedelta (OverflowError) or int().
_DURATION = re.compile(r"([0-9]{1,9})([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

Window = tuple[str, datetime, datetime]
RolledWindow = tuple[str, datetime, datetime, str]

# Resolutions and their rollup tables (an allowlist: the only names pasted into SQL below).
RAW, MINUTE, HOUR, DAY = "RAW", "MINUTE", "HOUR", "DAY"
TABLES = {MINUTE: "telemetry_1m", HOUR: "telemetry_1h", DAY: "telemetry_1d"}
WIDTHS = {MINUTE: timedelta(minutes=1), HOUR: timedelta(hours=1), DAY: timedelta(days=1)}
# Rollup-only names (app/telemetry.py): the sample's fields, and 1/0 status indicators.
DERIVED = ("batteryLevel", "healthScore", "uptime", "working")
# bellows and robotTelemetry read raw rows up to a day: both cap what they return, and a capped
# raw read walks (robot_id, ts) or (fleet_id, ts) from the newest row, whatever the range.
RAW_MAX = timedelta(days=1)


# A window served from a rollup stops at far fewer entries than a raw one: each entry is a GraphQL
# object to build and serialize, and at 5,000 of them that cost alone passes 400 ms; a rolled-up
# window is an overview, and charts that need more points have telemetrySeries.
MAX_ROLLED_METRIC_POINTS = 1000
# Without an explicit resolution, a window longer than RAW_MAX is read hourly when its hours times
# the fleet's robots stay within this budget, else daily: with the ten metrics of the contract
# (UNITS) per sample, the whole window then fits in MAX_ROLLED_METRIC_POINTS. Daily entries can
# still pass the cap (31 days of more than 3 robots): the newest are kept, as for raw windows.
# MINUTE is never picked: a window past RAW_MAX holds more than 1,440 minutes.
ROLLED_ROBOT_BUCKETS = MAX_ROLLED_METRIC_POINTS // len(UNITS)


def pick_resolution(span: timedelta, raw_max: timedelta = RAW_MAX) -> str:
    """RAW up to `raw_max`, then 1-minute buckets up to 2 days, hourly up to 90 days, daily beyond."""
    if span <= raw_max:
        return RAW
    if span <= timedelta(days=2):
        return MINUTE
    return HOUR if span <= timedelta(days=90) else DAY


def buckets_in(start: datetime, end: datetime, resolution: str) -> int:
    """How many buckets of `resolution` overlap [start, end]: those starting in (start - width,
    end], as the rolled-up statements read them (buckets are aligned to the epoch, UTC)."""
    width = WIDTHS[resolution].total_seconds()
    return int(end.timestamp() // width) - int(start.timestamp() // width) + 1


def pick_window_resolution(start: datetime, end: datetime, robots: int) -> str:
    """The resolution of a fleet's window (bellows): RAW up to RAW_MAX, else HOUR when the
    window's hours x `robots` fit ROLLED_ROBOT_BUCKETS, else DAY."""
    if end - start <= RAW_MAX:
        return RAW
    return HOUR if buckets_in(start, end, HOUR) * max(robots, 1) <= ROLLED_ROBOT_BUCKETS else DAY


def _per_table(template: str) -> dict[str, str]:
    return {res: template.replace("ROLLUP", table) for res, table in TABLES.items()}


# The fleet's robots (the default resolution depends on them); no row for an unknown fleet.
FLEET_ROBOTS = """
SELECT (SELECT count(*) FROM robots r WHERE r.fleet_id = f.id AND r.deleted_at IS NULL)
FROM fleets f WHERE f.id = $1 AND f.deleted_at IS NULL
"""
ROBOT_EXISTS = "SELECT EXISTS (SELECT 1 FROM robots WHERE id = $1 AND deleted_at IS NULL)"
# One row per (sample, numeric metric); the lateral LIMIT caps each fleet separately.
METRICS_BY_FLEET = """
SELECT f.id AS fleet_id, p.*
FROM unnest($1::uuid[]) AS f(id)
CROSS JOIN LATERAL (
  SELECT m.key AS name, m.value::double precision AS value, t.ts AS timestamp, t.robot_id,
         t.battery_level, t.health_score, t.pose
  FROM telemetry t CROSS JOIN LATERAL jsonb_each(t.metrics) AS m
  WHERE t.fleet_id = f.id AND t.ts BETWEEN $2 AND $3 AND jsonb_typeof(m.value) = 'number'
  ORDER BY t.ts DESC, t.robot_id, m.key
  LIMIT $4
) AS p
"""
EVENTS_BY_FLEET = """
SELECT f.id AS fleet_id, e.*
FROM unnest($1::uuid[]) AS f(id)
CROSS JOIN LATERAL (
  SELECT re.id::text AS id, re.robot_id, re.type, re.data, re.ts AS timestamp, re.message, re.severity
  FROM robot_events re
  WHERE re.fleet_id = f.id AND re.ts BETWEEN $2 AND $3
  ORDER BY re.ts DESC, re.id DESC
  LIMIT $4
) AS e
"""
# Rolled up: one entry per bucket and metric, the bucket's average, newest first straight off the
# (fleet_id, bucket, robot_id, metric) index and stopped at the cap. Each entry's bucket average
# battery and health are the bucket's derived rows (not entries themselves), read by primary-key
# probes in the same statement; entries of one bucket share them (PostgreSQL memoizes the probe).
ROLLED_METRICS_BY_FLEET = _per_table("""
SELECT f.id AS fleet_id, p.name, p.value, p.timestamp, p.robot_id, d.battery_level, d.health_score
FROM unnest($1::uuid[]) AS f(id)
CROSS JOIN LATERAL (
  SELECT r.metric AS name, r.sum / r.n AS value, r.bucket AS timestamp, r.robot_id
  FROM ROLLUP r
  WHERE r.fleet_id = f.id AND r.bucket > $2::timestamptz - $5::interval AND r.bucket <= $3
    AND r.metric <> ALL($6::text[])
  ORDER BY r.fleet_id DESC, r.bucket DESC, r.robot_id DESC, r.metric DESC
  LIMIT $4
) AS p
CROSS JOIN LATERAL (
  SELECT max(x.sum / x.n) FILTER (WHERE x.metric = 'batteryLevel') AS battery_level,
         max(x.sum / x.n) FILTER (WHERE x.metric = 'healthScore') AS health_score
  FROM ROLLUP x
  WHERE x.robot_id = p.robot_id AND x.bucket = p.timestamp AND x.metric IN ('batteryLevel', 'healthScore')
) AS d
ORDER BY f.id, p.timestamp DESC, p.robot_id DESC, p.name DESC
""")
# `uptime` and `efficiency` are computed over every sample of the window (the window functions
# run before LIMIT). Status messages are rows of their own (is_status), not samples.
ROBOT_TELEMETRY = """
SELECT ts, status::text AS status, battery_level, health_score, metrics,
       (avg(CASE WHEN status IN ('OFFLINE', 'ERROR') THEN 0 ELSE 1 END) OVER ())::double precision AS uptime,
       (sum(CASE WHEN status = 'WORKING' THEN 1 ELSE 0 END) OVER ()
        / nullif(sum(CASE WHEN status IN ('OFFLINE', 'ERROR') THEN 0 ELSE 1 END) OVER (), 0))
         ::double precision AS efficiency
FROM telemetry
WHERE robot_id = $1 AND ts >= now() - $2::interval AND NOT is_status
ORDER BY ts DESC, seq DESC
LIMIT $3
"""
# One point per bucket: the averages of its metrics; uptime and efficiency over the whole range.
ROLLED_ROBOT_TELEMETRY = _per_table("""
SELECT bucket AS ts, NULL::text AS status,
       max(sum / n) FILTER (WHERE metric = 'batteryLevel') AS battery_level,
       max(sum / n) FILTER (WHERE metric = 'healthScore') AS health_score,
       jsonb_object_agg(metric, sum / n) AS metrics,
       (sum(sum(sum) FILTER (WHERE metric = 'uptime')) OVER ()
        / nullif(sum(sum(n) FILTER (WHERE metric = 'uptime')) OVER (), 0)) AS uptime,
       (sum(sum(sum) FILTER (WHERE metric = 'working')) OVER ()
        / nullif(sum(sum(sum) FILTER (WHERE metric = 'uptime')) OVER (), 0)) AS efficiency
FROM ROLLUP
WHERE robot_id = $1 AND bucket > now() - $2::interval - $4::interval
GROUP BY bucket
ORDER BY bucket DESC
LIMIT $3
""")


def check_window(start: datetime, end: datetime) -> None:
    if start >= end:
        raise Invalid("timeRange.start must be before timeRange.end", field="timeRange")
    if end - start > MAX_WINDOW:
        raise Invalid("timeRange must span at most 31 days", field="timeRange")


def parse_duration(value: str | None) -> timedelta:
    """ "15m", "1h", "24h", "7d": 1 to 9 ASCII digits and a unit, at most 31 days."""
    match = _DURATION.fullmatch(value if value is not None else DEFAULT_DURATION)
    if match is None:
        shown = value if value is None or len(value) <= 40 else value[:40] + "..."
        raise Invalid(f'timeRange must look like "15m", "1h" or "7d", got {shown!r}', field="timeRange")
    duration = timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])
    if duration <= timedelta(0) or duration > MAX_WINDOW:
        raise Invalid("timeRange must be between 1s and 31d", field="timeRange")
    return duration


async def stream(
    ctx: Context, fleet_id: str, start: datetime, end: datetime, resolution: str | None = None
) -> dict[str, Any]:
    """The BellowsStream of stored data; its metrics and events resolve lazily through loaders."""
    check_window(start, end)
    robots = await ctx.db.fetchval(FLEET_ROBOTS, fleet_id)
    if robots is None:
        raise NotFound.of("Fleet", fleet_id)
    chosen = resolution or pick_window_resolution(start, end, robots)
    return {"fleet_id": fleet_id, "start": start, "end": end, "real_time": False, "resolution": chosen}


async def _by_window(pool: Pool, sql: str, cap: int, keys: list[Window], build: Any) -> list[list[Any]]:
    # Keys of one window share one query (the usual case: every fleet of a request asks for the
    # same range); distinct windows each get their own.
    windows: dict[tuple[datetime, datetime], list[str]] = {}
    for fleet_id, start, end in keys:
        windows.setdefault((start, end), []).append(fleet_id)
    found: dict[Hashable, list[Any]] = {}
    for (start, end), fleet_ids in windows.items():
        for row in await pool.fetch(sql, list(dict.fromkeys(fleet_ids)), start, end, cap):
            found.setdefault((row["fleet_id"], start, end), []).append(build(row))
    return [found.get(key, []) for key in keys]


def _metric(row: Any) -> dict[str, Any]:
    metric = dict(row)
    del metric["fleet_id"]
    metric["unit"] = UNITS.get(metric["name"])
    return metric


def live_metrics(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The TelemetryMetric entries of a live bellows event's compact `samples` (one per sample,
    app/ingest/writer.py): one per metric of each sample, in the samples' order. The GraphQL
    subscription and the SSE stream both show the event this way."""
    return [
        {
            "name": name,
            "value": value,
            "unit": UNITS.get(name),
            "timestamp": sample["timestamp"],
            "robot_id": sample["robot_id"],
            "battery_level": sample["battery_level"],
            "health_score": sample["health_score"],
            "pose": sample["pose"],
        }
        for sample in samples
        for name, value in sample["metrics"].items()
    ]


def _event(row: Any) -> dict[str, Any]:
    event = dict(row)
    del event["fleet_id"]
    return event


async def metrics_by_window(pool: Pool, keys: list[Window]) -> list[list[dict[str, Any]]]:
    return await _by_window(pool, METRICS_BY_FLEET, MAX_METRIC_POINTS, keys, _metric)


async def rolled_metrics_by_window(pool: Pool, keys: list[RolledWindow]) -> list[list[dict[str, Any]]]:
    """Like `metrics_by_window`, from the rollup of each key's resolution, at most
    MAX_ROLLED_METRIC_POINTS per key: one statement per distinct (window, resolution)."""
    groups: dict[tuple[datetime, datetime, str], list[str]] = {}
    for fleet_id, start, end, resolution in keys:
        groups.setdefault((start, end, resolution), []).append(fleet_id)
    found: dict[Hashable, list[Any]] = {}
    # Entries share few buckets: each bucket's start is rendered once (as live entries carry it).
    stamps: dict[datetime, str] = {}
    for (start, end, resolution), fleet_ids in groups.items():
        rows = await pool.fetch(
            ROLLED_METRICS_BY_FLEET[resolution],
            list(dict.fromkeys(fleet_ids)),
            start,
            end,
            MAX_ROLLED_METRIC_POINTS,
            WIDTHS[resolution],
            list(DERIVED),
        )
        for row in rows:
            bucket = row["timestamp"]
            stamp = stamps.get(bucket) or stamps.setdefault(bucket, bucket.isoformat())
            # Plain dicts with the fields' own (snake_case) keys: the default resolvers read them.
            entry = {
                "name": row["name"],
                "value": row["value"],
                "unit": UNITS.get(row["name"]),
                "timestamp": stamp,
                "robot_id": row["robot_id"],
                "battery_level": row["battery_level"],
                "health_score": row["health_score"],
                "pose": None,
            }
            found.setdefault((row["fleet_id"], start, end, resolution), []).append(entry)
    return [found.get(key, []) for key in keys]


async def events_by_window(pool: Pool, keys: list[Window]) -> list[list[dict[str, Any]]]:
    return await _by_window(pool, EVENTS_BY_FLEET, MAX_EVENTS, keys, _event)


def _point(row: Any) -> dict[str, Any]:
    metrics = row["metrics"] if isinstance(row["metrics"], dict) else {}
    return {
        "timestamp": row["ts"],
        "battery_level": row["battery_level"],
        "health_score": row["health_score"],
        "status": row["status"],
        "performance": {
            "speed": metrics.get("VELOCITY"),
            "efficiency": row["efficiency"],
            "uptime": row["uptime"],
        },
        "metrics": {
            "cpu": metrics.get("CPU_USAGE"),
            "memory": metrics.get("MEMORY_USAGE"),
            "temperature": metrics.get("MOTOR_TEMPERATURE"),
        },
    }


async def robot_telemetry(
    ctx: Context, robot_id: str, time_range: str | None, limit: int, resolution: str | None = None
) -> list[dict]:
    robot_id = parse_id(robot_id, "robotId")
    duration = parse_duration(time_range)
    if not await ctx.db.fetchval(ROBOT_EXISTS, robot_id):
        raise NotFound.of("Robot", robot_id)
    chosen = resolution or pick_resolution(duration)
    if chosen == RAW:
        rows = await ctx.db.fetch(ROBOT_TELEMETRY, robot_id, duration, limit)
    else:
        rows = await ctx.db.fetch(ROLLED_ROBOT_TELEMETRY[chosen], robot_id, duration, limit, WIDTHS[chosen])
    return [_point(r) for r in rows]
