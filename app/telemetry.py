"""Telemetry storage upkeep: partitions created ahead, retention by whole partitions, rollups
brought up to date, the utilization view refreshed. SQL and rules only; the loop that runs them
is `app.workers.telemetry` (docs/telemetry.md).

The DDL itself lives in two SQL functions of the migrations, `partition_create` and
`partition_drop`, so no identifier is ever pasted into SQL here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from app.infra.db import Connection
from app.settings import Settings

log = logging.getLogger("sepulki.telemetry")

Interval = Literal["month", "week", "day"]

# Advisory lock keys (pg_try_advisory_xact_lock / pg_try_advisory_lock): one process at a time
# changes partitions, rolls up, refreshes the view; the others skip that round.
LOCK_PARTITIONS = 0x7E1E_0001
LOCK_ROLLUP = 0x7E1E_0002
LOCK_UTILIZATION = 0x7E1E_0003
# Marks (robot-minutes) one rollup statement takes; a round repeats it up to ROLLUP_ROUNDS times.
ROLLUP_BATCH = 2000
ROLLUP_ROUNDS = 50
# A DEFAULT partition holding rows of far-apart ranges gets at most this many partitions a round.
MAX_NEW_PARTITIONS = 120

TRY_XACT_LOCK = "SELECT pg_try_advisory_xact_lock($1)"
TRY_LOCK = "SELECT pg_try_advisory_lock($1)"
UNLOCK = "SELECT pg_advisory_unlock($1)"
# Each a single round trip whatever the number of tables: the upkeep holds its lock briefly.
CREATE_PARTITIONS = """
SELECT f.tbl || '_p' || to_char(f.lo AT TIME ZONE 'UTC', 'YYYYMMDD') AS name
FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::text[])
     WITH ORDINALITY AS f(tbl, lo, hi, k, i)
WHERE partition_create(f.tbl::regclass, f.lo, f.hi, f.k)
ORDER BY f.i
"""
DROP_PARTITION = "SELECT partition_drop($1::text::regclass, $2::text::regclass)"
DROP_PARTITIONS = """
SELECT partition_drop(f.tbl::regclass, f.part::regclass)
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS f(tbl, part, i)
ORDER BY f.i
"""
PARTITIONS = r"""
SELECT p.relname AS parent, c.relname AS name, x.b[1]::timestamptz AS lo, x.b[2]::timestamptz AS hi
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_class p ON p.oid = i.inhparent
CROSS JOIN LATERAL (
  SELECT regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\) TO \(''([^'']+)''\)') AS b
) AS x
WHERE i.inhparent = ANY($1::text[]::regclass[]) AND x.b IS NOT NULL
ORDER BY lo
"""
# What waits in the DEFAULT partitions (constant table names: no identifier is formatted in).
DEFAULT_RANGES = """
SELECT 'telemetry' AS tbl, min(ts) AS first, max(ts) AS last FROM telemetry_default
UNION ALL SELECT 'robot_events', min(ts), max(ts) FROM robot_events_default
UNION ALL SELECT 'telemetry_1m', min(bucket), max(bucket) FROM telemetry_1m_default
UNION ALL SELECT 'telemetry_1h', min(bucket), max(bucket) FROM telemetry_1h_default
UNION ALL SELECT 'telemetry_1d', min(bucket), max(bucket) FROM telemetry_1d_default
"""
ROLLUP = "SELECT telemetry_rollup($1, $2)"
REFRESH_UTILIZATION = "REFRESH MATERIALIZED VIEW CONCURRENTLY robot_utilization_daily"


@dataclass(frozen=True, slots=True)
class Family:
    """A partitioned table, its partition key and how long its rows are kept (0: forever)."""

    table: str
    key: str
    retention_days: int


def families(settings: Settings) -> list[Family]:
    return [
        Family("telemetry", "ts", settings.telemetry_raw_retention_days),
        Family("robot_events", "ts", settings.robot_events_retention_days),
        Family("telemetry_1m", "bucket", settings.telemetry_1m_retention_days),
        Family("telemetry_1h", "bucket", settings.telemetry_1h_retention_days),
        Family("telemetry_1d", "bucket", settings.telemetry_1d_retention_days),
    ]


def floor(ts: datetime, interval: Interval) -> datetime:
    """The start (UTC) of the partition range holding `ts`."""
    t = ts.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if interval == "month":
        return t.replace(day=1)
    if interval == "week":
        return t - timedelta(days=t.weekday())
    return t


def following(start: datetime, interval: Interval) -> datetime:
    """The start of the range after the one starting at `start`."""
    if interval == "month":
        return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return start + timedelta(days=7 if interval == "week" else 1)


def raw_since(settings: Settings, now: datetime) -> datetime:
    """The oldest time raw rows are surely still kept; rollups are never recomputed before it."""
    days = settings.telemetry_raw_retention_days
    return now - timedelta(days=days) if days else datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class Upkeep:
    """What one round of partition upkeep did."""

    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    skipped: bool = False


async def upkeep_partitions(conn: Connection, settings: Settings, now: datetime) -> Upkeep:
    """Creates the partitions of the current range and `telemetry_partitions_ahead` more, and
    partitions for rows waiting in a DEFAULT partition; detaches and drops the partitions whose
    whole range is older than their retention. One transaction, skipped (`skipped`) while
    another process does it; a lock wait longer than 5 s gives up the round rather than hold
    the ingest up."""
    interval: Interval = settings.telemetry_partition_interval
    upkeep = Upkeep()
    by_table = {f.table: f for f in families(settings)}
    async with conn.transaction():
        if not await conn.fetchval(TRY_XACT_LOCK, LOCK_PARTITIONS):
            upkeep.skipped = True
            return upkeep
        await conn.execute("SET LOCAL lock_timeout = '5s'")
        ranges: list[tuple[str, datetime, datetime, str]] = []
        for family in by_table.values():
            start = floor(now, interval)
            for _ in range(settings.telemetry_partitions_ahead + 1):
                ranges.append((family.table, start, following(start, interval), family.key))
                start = following(start, interval)
        for row in await conn.fetch(DEFAULT_RANGES):
            if row["first"] is None:
                continue
            start = floor(row["first"], interval)
            for _ in range(MAX_NEW_PARTITIONS):
                if start > row["last"]:
                    break
                ranges.append((row["tbl"], start, following(start, interval), by_table[row["tbl"]].key))
                start = following(start, interval)
        created = await conn.fetch(
            CREATE_PARTITIONS,
            [r[0] for r in ranges],
            [r[1] for r in ranges],
            [r[2] for r in ranges],
            [r[3] for r in ranges],
        )
        upkeep.created = [r["name"] for r in created]
        doomed = [
            (part["parent"], part["name"])
            for part in await conn.fetch(PARTITIONS, list(by_table))
            if by_table[part["parent"]].retention_days
            and part["hi"] <= now - timedelta(days=by_table[part["parent"]].retention_days)
        ]
        if doomed:
            await conn.fetch(DROP_PARTITIONS, [d[0] for d in doomed], [d[1] for d in doomed])
        upkeep.dropped = [d[1] for d in doomed]
    if upkeep.created or upkeep.dropped:
        log.info("telemetry partitions created %s, dropped %s", upkeep.created, upkeep.dropped)
    return upkeep


async def partitions(conn: Connection, table: str) -> list[tuple[str, datetime, datetime]]:
    """The range partitions of `table`, oldest first (the DEFAULT partition is not listed)."""
    return [(r["name"], r["lo"], r["hi"]) for r in await conn.fetch(PARTITIONS, [table])]


async def roll_up(conn: Connection, settings: Settings, now: datetime) -> int:
    """Recomputes the rollups of every marked minute (each round of ROLLUP_BATCH marks is one
    transaction); returns how many marks it took, 0 also when another process is at it."""
    since = raw_since(settings, now)
    taken = 0
    for _ in range(ROLLUP_ROUNDS):
        async with conn.transaction():
            if not await conn.fetchval(TRY_XACT_LOCK, LOCK_ROLLUP):
                return taken
            n: int = await conn.fetchval(ROLLUP, ROLLUP_BATCH, since)
        taken += n
        if n < ROLLUP_BATCH:
            break
    return taken


async def refresh_utilization(conn: Connection) -> bool:
    """Refreshes robot_utilization_daily concurrently (readers are never blocked); False when
    another process holds the refresh lock. CONCURRENTLY cannot run inside a transaction, so
    the lock is a session lock, released right after."""
    if not await conn.fetchval(TRY_LOCK, LOCK_UTILIZATION):
        return False
    try:
        await conn.execute(REFRESH_UTILIZATION)
    finally:
        await conn.fetchval(UNLOCK, LOCK_UTILIZATION)
    return True
