"""Fleet analytics from the telemetry rollups and robot_utilization_daily: performance KPIs,
robot health with predictive-maintenance indicators, battery usage and utilization. Every
function is a fixed number of SQL statements whatever the fleet's size (docs/telemetry.md has
the definitions)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

from app.bellows import DAY, HOUR, MINUTE, TABLES, WIDTHS
from app.context import Context
from app.core.errors import Invalid, NotFound

MAX_SPAN = timedelta(days=400)
# Health indicators: thresholds past which a factor counts as a warning.
MOTOR_TEMPERATURE_WARN_C = 70.0
VIBRATION_WARN_G = 1.5
BATTERY_LOW_PCT = 20.0
UPTIME_WARN = 0.9
ERROR_EVENTS_WARN = 3
HEALTH_MAINTENANCE = 60.0
# A robot whose health, at its trend, would reach HEALTH_MAINTENANCE within this many days is due.
MAINTENANCE_HORIZON_DAYS = 14.0

FLEET_EXISTS = "SELECT EXISTS (SELECT 1 FROM fleets WHERE id = $1 AND deleted_at IS NULL)"
ROBOT = "SELECT id, health_score FROM robots WHERE id = $1 AND deleted_at IS NULL"

# Per robot over the range, from the rollup the range's length picks.
PERFORMANCE = {
    res: """
SELECT robot_id,
       sum(n) FILTER (WHERE metric = 'uptime') AS samples,
       sum(sum) FILTER (WHERE metric = 'uptime') AS available,
       sum(sum) FILTER (WHERE metric = 'working') AS working,
       sum(sum) FILTER (WHERE metric = 'VELOCITY')
         / nullif(sum(n) FILTER (WHERE metric = 'VELOCITY'), 0) AS speed,
       sum(sum) FILTER (WHERE metric = 'batteryLevel')
         / nullif(sum(n) FILTER (WHERE metric = 'batteryLevel'), 0) AS battery,
       sum(sum) FILTER (WHERE metric = 'healthScore')
         / nullif(sum(n) FILTER (WHERE metric = 'healthScore'), 0) AS health
FROM ROLLUP
WHERE fleet_id = $1 AND bucket > $2::timestamptz - $4::interval AND bucket <= $3
  AND metric IN ('uptime', 'working', 'VELOCITY', 'batteryLevel', 'healthScore')
GROUP BY robot_id
ORDER BY robot_id
""".replace("ROLLUP", table)
    for res, table in TABLES.items()
}
# Daily health of the last 30 days and its least-squares trend over the last 14.
HEALTH_HISTORY = """
WITH d AS (
  SELECT bucket AS day, sum / n AS health, min FROM telemetry_1d
  WHERE robot_id = $1 AND metric = 'healthScore' AND bucket >= $2::timestamptz - interval '30 days'
)
SELECT day, health, min, (SELECT regr_slope(health, extract(epoch FROM day) / 86400) FROM d
                          WHERE day >= $2::timestamptz - interval '14 days') AS slope
FROM d ORDER BY day
"""
# The contributing factors over the last 24 hours (hourly rollups) and 7 days of robot events.
HEALTH_FACTORS = """
WITH h AS (
  SELECT metric, sum(sum) / nullif(sum(n), 0) AS avg, max(max) AS max, min(min) AS min
  FROM telemetry_1h
  WHERE robot_id = $1 AND bucket > $2::timestamptz - interval '24 hours'
    AND metric IN ('MOTOR_TEMPERATURE', 'VIBRATION', 'batteryLevel', 'uptime')
  GROUP BY metric
)
SELECT
  (SELECT avg FROM h WHERE metric = 'MOTOR_TEMPERATURE') AS temp_avg,
  (SELECT max FROM h WHERE metric = 'MOTOR_TEMPERATURE') AS temp_max,
  (SELECT max FROM h WHERE metric = 'VIBRATION') AS vibration_max,
  (SELECT min FROM h WHERE metric = 'batteryLevel') AS battery_min,
  (SELECT avg FROM h WHERE metric = 'uptime') AS uptime,
  (SELECT count(*) FROM robot_events
   WHERE robot_id = $1 AND severity IN ('ERROR', 'CRITICAL')
     AND ts > $2::timestamptz - interval '7 days') AS errors
"""
# Per robot of the fleet: hour-to-hour changes of the battery over the last 7 days, and how often
# it started charging in that time (its status messages).
BATTERY = """
WITH robots_of AS (
  SELECT id, battery_level FROM robots WHERE fleet_id = $1 AND deleted_at IS NULL
), hourly AS (
  SELECT h.robot_id, h.bucket, h.last - lag(h.last) OVER (PARTITION BY h.robot_id ORDER BY h.bucket) AS delta
  FROM telemetry_1h h JOIN robots_of r ON r.id = h.robot_id
  WHERE h.metric = 'batteryLevel' AND h.bucket > $2::timestamptz - interval '7 days'
), rates AS (
  SELECT robot_id, -avg(delta) FILTER (WHERE delta < 0) AS drain,
         avg(delta) FILTER (WHERE delta > 0) AS charge
  FROM hourly GROUP BY robot_id
), statuses AS (
  SELECT t.robot_id, t.status, lag(t.status) OVER (PARTITION BY t.robot_id ORDER BY t.ts, t.seq) AS before
  FROM telemetry t JOIN robots_of r ON r.id = t.robot_id
  WHERE t.is_status AND t.ts > $2::timestamptz - interval '7 days'
), cycles AS (
  SELECT robot_id,
         count(*) FILTER (WHERE status = 'CHARGING' AND before IS DISTINCT FROM 'CHARGING') AS cycles
  FROM statuses GROUP BY robot_id
)
SELECT r.id AS robot_id, r.battery_level, x.drain, x.charge, coalesce(c.cycles, 0) AS cycles
FROM robots_of r LEFT JOIN rates x ON x.robot_id = r.id LEFT JOIN cycles c ON c.robot_id = r.id
ORDER BY r.id
"""
UTILIZATION = """
SELECT robot_id, day, working_s, idle_s, charging_s, maintenance_s, error_s, offline_s
FROM robot_utilization_daily
WHERE fleet_id = $1
  AND day BETWEEN ($2::timestamptz AT TIME ZONE 'UTC')::date AND ($3::timestamptz AT TIME ZONE 'UTC')::date
ORDER BY day, robot_id
"""
STATES = ("working", "idle", "charging", "maintenance", "error", "offline")


def _resolution(span: timedelta) -> str:
    """Coarser than charts need: KPIs over a range read few, whole buckets (those overlapping it)."""
    if span <= timedelta(hours=6):
        return MINUTE
    return HOUR if span <= timedelta(days=7) else DAY


def _check(start: datetime, end: datetime) -> None:
    if start >= end:
        raise Invalid("timeRange.start must be before timeRange.end", field="timeRange")
    if end - start > MAX_SPAN:
        raise Invalid("timeRange must span at most 400 days", field="timeRange")


async def _fleet(ctx: Context, fleet_id: str) -> None:
    if not await ctx.db.fetchval(FLEET_EXISTS, fleet_id):
        raise NotFound.of("Fleet", fleet_id)


def _share(part: float | None, whole: float | None) -> float | None:
    return None if not whole or part is None else part / whole


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    """The sample-weighted mean of `key` over robots that have it."""
    weighted = [(r[key], r["samples"]) for r in rows if r[key] is not None and r["samples"]]
    total = sum(w for _, w in weighted)
    return sum(v * w for v, w in weighted) / total if total else None


async def fleet_performance(ctx: Context, fleet_id: str, start: datetime, end: datetime) -> dict[str, Any]:
    """KPIs of the fleet's robots over the range. uptime: the share of samples in which a robot
    was neither OFFLINE nor ERROR; efficiency: the share of those available samples in which it
    was WORKING. Two statements."""
    _check(start, end)
    await _fleet(ctx, fleet_id)
    resolution = _resolution(end - start)
    rows = [
        dict(r) for r in await ctx.db.fetch(PERFORMANCE[resolution], fleet_id, start, end, WIDTHS[resolution])
    ]
    robots = [
        {
            "robot_id": r["robot_id"],
            "samples": r["samples"] or 0,
            "uptime": _share(r["available"], r["samples"]),
            "efficiency": _share(r["working"], r["available"]),
            "average_speed": r["speed"],
            "average_battery_level": r["battery"],
            "average_health_score": r["health"],
        }
        for r in rows
    ]
    samples = sum(r["samples"] or 0 for r in rows)
    available = sum(r["available"] or 0 for r in rows)
    return {
        "fleet_id": fleet_id,
        "start": start,
        "end": end,
        "resolution": resolution,
        "robot_count": len(robots),
        "samples": samples,
        "uptime": _share(available, samples),
        "efficiency": _share(sum(r["working"] or 0 for r in rows), available),
        "average_speed": _mean(robots, "average_speed"),
        "average_battery_level": _mean(robots, "average_battery_level"),
        "average_health_score": _mean(robots, "average_health_score"),
        "robots": robots,
    }


def _factor(name: str, value: float | None, unit: str | None, warn: bool) -> dict[str, Any]:
    return {"name": name, "value": value, "unit": unit, "warning": bool(value is not None and warn)}


async def robot_health(ctx: Context, robot_id: str, now: datetime) -> dict[str, Any]:
    """Health history (daily, 30 days), contributing factors and predictive-maintenance
    indicators of one robot. Three statements."""
    robot = await ctx.db.fetchrow(ROBOT, robot_id)
    if robot is None:
        raise NotFound.of("Robot", robot_id)
    history = await ctx.db.fetch(HEALTH_HISTORY, robot_id, now)
    f = await ctx.db.fetchrow(HEALTH_FACTORS, robot_id, now)
    assert f is not None  # an aggregate row always comes back
    factors = [
        _factor("MOTOR_TEMPERATURE_AVG", f["temp_avg"], "C", (f["temp_avg"] or 0) > MOTOR_TEMPERATURE_WARN_C),
        _factor("MOTOR_TEMPERATURE_MAX", f["temp_max"], "C", (f["temp_max"] or 0) > MOTOR_TEMPERATURE_WARN_C),
        _factor("VIBRATION_MAX", f["vibration_max"], "g", (f["vibration_max"] or 0) > VIBRATION_WARN_G),
        _factor("BATTERY_MIN", f["battery_min"], "%", (f["battery_min"] or 100) < BATTERY_LOW_PCT),
        _factor("UPTIME", f["uptime"], None, (f["uptime"] if f["uptime"] is not None else 1) < UPTIME_WARN),
        _factor("ERROR_EVENTS_7D", float(f["errors"]), None, f["errors"] >= ERROR_EVENTS_WARN),
    ]
    current = robot["health_score"]
    slope = history[0]["slope"] if history else None
    days_left = None
    if current is not None and slope is not None and slope < 0:
        days_left = max(0.0, (current - HEALTH_MAINTENANCE) / -slope)
    warnings = sum(x["warning"] for x in factors)
    due = (current is not None and current < HEALTH_MAINTENANCE) or warnings >= 2
    due = due or (days_left is not None and days_left <= MAINTENANCE_HORIZON_DAYS)
    return {
        "robot_id": robot_id,
        "health_score": current,
        "history": [
            {"day": h["day"], "health_score": h["health"], "min_health_score": h["min"]} for h in history
        ],
        "factors": factors,
        "trend_per_day": slope,
        "days_until_maintenance_threshold": days_left,
        "maintenance_recommended": due,
    }


async def battery_analytics(ctx: Context, fleet_id: str, now: datetime) -> dict[str, Any]:
    """Per robot: drain and charge rates (percentage points per hour, from hour-to-hour changes
    of the last 7 days), charge cycles (times it started CHARGING in 7 days), hours to empty
    at its drain rate. Two statements."""
    await _fleet(ctx, fleet_id)
    robots = []
    for r in await ctx.db.fetch(BATTERY, fleet_id, now):
        level, drain = r["battery_level"], r["drain"]
        robots.append(
            {
                "robot_id": r["robot_id"],
                "battery_level": level,
                "drain_rate_per_hour": drain,
                "charge_rate_per_hour": r["charge"],
                "charge_cycles_last_week": r["cycles"],
                "hours_to_empty": level / drain if level is not None and drain else None,
            }
        )
    drains = [r["drain_rate_per_hour"] for r in robots if r["drain_rate_per_hour"] is not None]
    levels = [r["battery_level"] for r in robots if r["battery_level"] is not None]
    return {
        "fleet_id": fleet_id,
        "average_battery_level": sum(levels) / len(levels) if levels else None,
        "average_drain_rate_per_hour": sum(drains) / len(drains) if drains else None,
        "charge_cycles_last_week": sum(r["charge_cycles_last_week"] for r in robots),
        "robots": robots,
    }


def _shares(seconds: dict[str, float]) -> dict[str, Any]:
    total = sum(seconds.values())
    return {"tracked_seconds": total} | {s: (seconds[s] / total if total else None) for s in STATES}


async def utilization_report(ctx: Context, fleet_id: str, start: datetime, end: datetime) -> dict[str, Any]:
    """Working, idle, charging, maintenance, error and offline shares of the fleet's tracked time
    on the UTC days the range touches (robot_utilization_daily), per robot and per day. Two
    statements."""
    _check(start, end)
    await _fleet(ctx, fleet_id)
    rows = await ctx.db.fetch(UTILIZATION, fleet_id, start, end)
    zero = dict.fromkeys(STATES, 0.0)
    total = dict(zero)
    by_robot: dict[str, dict[str, float]] = {}
    by_day: dict[Any, dict[str, float]] = {}
    for row in rows:
        robot = by_robot.setdefault(row["robot_id"], dict(zero))
        day = by_day.setdefault(row["day"], dict(zero))
        for state in STATES:
            value = row[f"{state}_s"]
            total[state] += value
            robot[state] += value
            day[state] += value
    return {
        "fleet_id": fleet_id,
        "start": start,
        "end": end,
        **_shares(total),
        "robots": [{"robot_id": k, **_shares(v)} for k, v in by_robot.items()],
        "days": [{"day": datetime.combine(k, time(), UTC), **_shares(v)} for k, v in by_day.items()],
    }
