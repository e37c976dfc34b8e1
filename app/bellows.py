"""Bellows: stored telemetry read back per fleet and time window, and one robot's recent samples."""

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

FLEET_EXISTS = "SELECT EXISTS (SELECT 1 FROM fleets WHERE id = $1 AND deleted_at IS NULL)"
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
# `uptime` is computed over every sample of the window (the window function runs before LIMIT).
# Status messages are stored with a negative seq (see app/ingest/messages.py): not samples.
ROBOT_TELEMETRY = """
SELECT ts, status::text AS status, battery_level, health_score, metrics,
       (avg(CASE WHEN status IN ('OFFLINE', 'ERROR') THEN 0 ELSE 1 END) OVER ())::double precision AS uptime
FROM telemetry
WHERE robot_id = $1 AND ts >= now() - $2::interval AND seq >= 0
ORDER BY ts DESC, seq DESC
LIMIT $3
"""


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


async def stream(ctx: Context, fleet_id: str, start: datetime, end: datetime) -> dict[str, Any]:
    """The BellowsStream of stored data; its metrics and events resolve lazily through loaders."""
    check_window(start, end)
    if not await ctx.db.fetchval(FLEET_EXISTS, fleet_id):
        raise NotFound.of("Fleet", fleet_id)
    return {"fleet_id": fleet_id, "start": start, "end": end, "real_time": False}


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


def _event(row: Any) -> dict[str, Any]:
    event = dict(row)
    del event["fleet_id"]
    return event


async def metrics_by_window(pool: Pool, keys: list[Window]) -> list[list[dict[str, Any]]]:
    return await _by_window(pool, METRICS_BY_FLEET, MAX_METRIC_POINTS, keys, _metric)


async def events_by_window(pool: Pool, keys: list[Window]) -> list[list[dict[str, Any]]]:
    return await _by_window(pool, EVENTS_BY_FLEET, MAX_EVENTS, keys, _event)


def _point(row: Any) -> dict[str, Any]:
    metrics = row["metrics"] if isinstance(row["metrics"], dict) else {}
    return {
        "timestamp": row["ts"],
        "battery_level": row["battery_level"],
        "health_score": row["health_score"],
        "status": row["status"],
        # No stored quantity measures efficiency; null is honest where the reference invented one.
        "performance": {"speed": metrics.get("VELOCITY"), "efficiency": None, "uptime": row["uptime"]},
        "metrics": {
            "cpu": metrics.get("CPU_USAGE"),
            "memory": metrics.get("MEMORY_USAGE"),
            "temperature": metrics.get("MOTOR_TEMPERATURE"),
        },
    }


async def robot_telemetry(ctx: Context, robot_id: str, time_range: str | None, limit: int) -> list[dict]:
    robot_id = parse_id(robot_id, "robotId")
    duration = parse_duration(time_range)
    if not await ctx.db.fetchval(ROBOT_EXISTS, robot_id):
        raise NotFound.of("Robot", robot_id)
    return [_point(r) for r in await ctx.db.fetch(ROBOT_TELEMETRY, robot_id, duration, limit)]
