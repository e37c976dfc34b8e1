"""Telemetry series for charts: chosen robots and metrics over a range, from the raw samples or
a rollup by the range's length, each series capped (docs/telemetry.md)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from app.bellows import RAW, TABLES, UNITS, WIDTHS, pick_resolution
from app.context import Context
from app.core.errors import Invalid, NotFound

MAX_ROBOTS = 100
MAX_METRICS = 20
MAX_SPAN = timedelta(days=400)
# Points per series: the newest are kept and `truncated` says some were left out.
MAX_POINTS = 2000
# Raw points only for short ranges: at 10 Hz an hour is already 36,000 samples.
RAW_MAX = timedelta(hours=1)

ROBOTS_FOUND = "SELECT array_agg(id) FROM robots WHERE id = ANY($1::uuid[]) AND deleted_at IS NULL"
# One statement whatever the number of robots and metrics: a capped index walk per pair.
RAW_SERIES = """
SELECT k.id AS robot_id, m.name AS metric, p.ts AS timestamp, p.value
FROM unnest($1::uuid[]) AS k(id) CROSS JOIN unnest($2::text[]) AS m(name)
CROSS JOIN LATERAL (
  SELECT t.ts, v.value
  FROM telemetry t
  CROSS JOIN LATERAL (
    SELECT CASE m.name
      WHEN 'batteryLevel' THEN t.battery_level
      WHEN 'healthScore' THEN t.health_score
      WHEN 'uptime' THEN CASE WHEN t.status IN ('OFFLINE', 'ERROR') THEN 0 ELSE 1 END
      WHEN 'working' THEN CASE WHEN t.status = 'WORKING' THEN 1 ELSE 0 END
      ELSE CASE WHEN jsonb_typeof(t.metrics -> m.name) = 'number'
                THEN (t.metrics ->> m.name)::double precision END
    END AS value
  ) AS v
  WHERE t.robot_id = k.id AND t.ts BETWEEN $3 AND $4 AND NOT t.is_status AND v.value IS NOT NULL
  ORDER BY t.ts DESC
  LIMIT $5
) AS p
"""
ROLLED_SERIES = {
    res: """
SELECT k.id AS robot_id, m.name AS metric, r.bucket AS timestamp, r.sum / r.n AS avg, r.min, r.max,
       r.n AS count, r.last
FROM unnest($1::uuid[]) AS k(id) CROSS JOIN unnest($2::text[]) AS m(name)
CROSS JOIN LATERAL (
  SELECT * FROM ROLLUP r
  WHERE r.robot_id = k.id AND r.metric = m.name
    AND r.bucket > $3::timestamptz - $6::interval AND r.bucket <= $4
  ORDER BY r.bucket DESC
  LIMIT $5
) AS r
""".replace("ROLLUP", table)
    for res, table in TABLES.items()
}


def _check(robot_ids: list[str], metrics: list[str], start: datetime, end: datetime) -> None:
    if not robot_ids or len(robot_ids) > MAX_ROBOTS:
        raise Invalid(f"robotIds must name 1 to {MAX_ROBOTS} robots", field="robotIds")
    if not metrics or len(metrics) > MAX_METRICS or any(not 1 <= len(m) <= 100 for m in metrics):
        raise Invalid(f"metrics must name 1 to {MAX_METRICS} metrics of 1 to 100 characters", field="metrics")
    if start >= end:
        raise Invalid("timeRange.start must be before timeRange.end", field="timeRange")
    if end - start > MAX_SPAN:
        raise Invalid("timeRange must span at most 400 days", field="timeRange")


async def telemetry_series(
    ctx: Context,
    robot_ids: list[str],
    metrics: list[str],
    start: datetime,
    end: datetime,
    resolution: str | None,
) -> list[dict[str, Any]]:
    """One series per (robot, metric), in the order asked, points oldest first; two statements."""
    robot_ids, metrics = list(dict.fromkeys(robot_ids)), list(dict.fromkeys(metrics))
    _check(robot_ids, metrics, start, end)
    found = set(await ctx.db.fetchval(ROBOTS_FOUND, robot_ids) or [])
    missing = [r for r in robot_ids if r not in found]
    if missing:
        raise NotFound.of("Robot", missing[0])
    chosen = resolution or pick_resolution(end - start, RAW_MAX)
    # One more than the cap tells whether anything was left out.
    if chosen == RAW:
        rows = await ctx.db.fetch(RAW_SERIES, robot_ids, metrics, start, end, MAX_POINTS + 1)
    else:
        rows = await ctx.db.fetch(
            ROLLED_SERIES[chosen], robot_ids, metrics, start, end, MAX_POINTS + 1, WIDTHS[chosen]
        )
    points: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        point = dict(row)
        if chosen == RAW:
            value = point.pop("value")
            point |= {"avg": value, "min": value, "max": value, "count": 1, "last": value}
        points.setdefault((point.pop("robot_id"), point.pop("metric")), []).append(point)
    result = []
    for robot_id in robot_ids:
        for metric in metrics:
            newest_first = points.get((robot_id, metric), [])
            result.append(
                {
                    "robot_id": robot_id,
                    "metric": metric,
                    "unit": "%" if metric == "batteryLevel" else UNITS.get(metric),
                    "resolution": chosen,
                    "truncated": len(newest_first) > MAX_POINTS,
                    "points": newest_first[:MAX_POINTS][::-1],
                }
            )
    return result
