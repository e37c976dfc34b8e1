"""Telemetry stays fast and bounded as it grows: partitions by time are made ahead, rows for a
range nobody made yet still land safely, retention drops whole old partitions and nothing else,
and an existing database migrates with its data."""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from app import telemetry
from app.infra import db
from app.settings import Settings
from tests.seed_ids import ALPHA, BETA, DEV_FLEET
from tests.servers import admin_execute
from tests.support import Api
from tests.telemetry_support import iso, send

LOCUS = "30000000-0000-4000-8000-0000000000aa"
INGOT = "60000000-0000-4000-8000-0000000000aa"
ROBOT_TELEMETRY = """
query($id: ID!) {
  robotTelemetry(robotId: $id, timeRange: "2h", limit: 500) { timestamp status metrics { cpu } }
}
"""


def month_start(at: datetime) -> datetime:
    return telemetry.floor(at, "month")


async def partition_of(api: Api, table: str, robot_id: str, seq: int) -> str | None:
    sql = {
        "telemetry": "SELECT tableoid::regclass::text FROM telemetry WHERE robot_id = $1 AND seq = $2",
        "robot_events": "SELECT tableoid::regclass::text FROM robot_events WHERE robot_id = $1 AND seq = $2",
    }[table]
    found: str | None = await api.resources.db.fetchval(sql, robot_id, seq)
    return found


async def test_partitions_exist_ahead_for_every_partitioned_table(api: Api) -> None:
    now = datetime.now(UTC)
    expected = [month_start(now)]
    for _ in range(2):
        expected.append(telemetry.following(expected[-1], "month"))
    async with api.resources.db.acquire() as conn:
        for table in ("telemetry", "robot_events", "telemetry_1m", "telemetry_1h", "telemetry_1d"):
            starts = [lo for _name, lo, _hi in await telemetry.partitions(conn, table)]
            assert set(expected) <= set(starts), table


async def test_a_sample_for_a_range_without_partition_lands_in_default_then_moves(settings: Settings) -> None:
    # Raw telemetry kept a year here: the default 30 days would drop the month as soon as it is made.
    async with Api.running(settings.replace(telemetry_raw_retention_days=365)) as api:
        await _late_rows_move_out_of_default(api)


async def _late_rows_move_out_of_default(api: Api) -> None:
    # Given a robot whose clock says it is long ago (allowed: it was offline and now catches up)
    old = datetime.now(UTC) - timedelta(days=200)
    assert await send(
        api, ALPHA, "telemetry", {"seq": 7001, "ts": iso(old), "metrics": {"CPU_USAGE": 5}}
    ) == ["stored"]
    assert await send(api, ALPHA, "events", {"seq": 7001, "ts": iso(old), "type": "REBOOTED"}) == ["stored"]
    # Then its rows wait in the DEFAULT partitions, stored all the same
    assert await partition_of(api, "telemetry", ALPHA, 7001) == "telemetry_default"
    assert await partition_of(api, "robot_events", ALPHA, 7001) == "robot_events_default"

    # When the worker's upkeep runs, their month gets a partition and the rows move into it
    upkeep = await api.components.telemetry.partitions()
    name = f"p{month_start(old):%Y%m%d}"
    assert f"telemetry_{name}" in upkeep.created and f"robot_events_{name}" in upkeep.created
    assert await partition_of(api, "telemetry", ALPHA, 7001) == f"telemetry_{name}"
    assert await partition_of(api, "robot_events", ALPHA, 7001) == f"robot_events_{name}"
    # And a second round has nothing left to do for them (rollups of the late sample, if the
    # worker made some meanwhile, get partitions of their own)
    again = await api.components.telemetry.partitions()
    assert not [n for n in again.created + again.dropped if n.startswith(("telemetry_p", "robot_events_p"))]


async def test_a_partition_missing_ahead_is_created_again(api: Api) -> None:
    async with api.resources.db.acquire() as conn:
        *_, (last, _lo, _hi) = await telemetry.partitions(conn, "telemetry")
        await conn.execute(telemetry.DROP_PARTITION, "telemetry", last)
        assert last not in [name for name, _lo, _hi in await telemetry.partitions(conn, "telemetry")]
        await api.components.telemetry.partitions()
        assert last in [name for name, _lo, _hi in await telemetry.partitions(conn, "telemetry")]


async def test_retention_drops_the_old_month_and_only_it(settings: Settings) -> None:
    # The service keeps everything until the retention below is applied explicitly.
    forever = settings.replace(telemetry_raw_retention_days=0, robot_events_retention_days=0)
    async with Api.running(forever) as api:
        await _retention_story(api, settings)


async def _retention_story(api: Api, settings: Settings) -> None:
    now = datetime.now(UTC)
    old = month_start(now - timedelta(days=95)) + timedelta(days=3)
    # Given samples and events of a month past retention, and the seed's recent ones
    await send(api, BETA, "telemetry", {"seq": 8001, "ts": iso(old), "metrics": {"CPU_USAGE": 1}})
    await send(api, BETA, "events", {"seq": 8001, "ts": iso(old), "type": "OLD"})
    await api.components.telemetry.partitions()
    old_part = f"telemetry_p{month_start(old):%Y%m%d}"
    assert await partition_of(api, "telemetry", BETA, 8001) == old_part
    recent = await api.resources.db.fetchval(
        "SELECT count(*) FROM telemetry WHERE ts > now() - interval '2 days'"
    )

    # When retention runs with raw telemetry kept 30 days and events 60
    retained = settings.replace(telemetry_raw_retention_days=30, robot_events_retention_days=60)
    async with api.resources.db.acquire() as conn:
        upkeep = await telemetry.upkeep_partitions(conn, retained, now)
        remaining = [name for name, _lo, _hi in await telemetry.partitions(conn, "telemetry")]

    # Then the old months' partitions are gone, whole, and every recent row is still there
    assert old_part in upkeep.dropped and f"robot_events_p{month_start(old):%Y%m%d}" in upkeep.dropped
    assert old_part not in remaining
    # Each resolution keeps its own: the hour and day rollups of that month stay
    assert not [name for name in upkeep.dropped if name.startswith(("telemetry_1h", "telemetry_1d"))]
    assert await partition_of(api, "telemetry", BETA, 8001) is None
    assert (
        await api.resources.db.fetchval("SELECT count(*) FROM telemetry WHERE ts > now() - interval '2 days'")
        == recent
    )
    # The current month stays (the time a drop takes is a figure of bench/analytics.py)
    assert f"telemetry_p{month_start(now):%Y%m%d}" in remaining


async def test_only_one_process_changes_partitions_at_a_time(api: Api, database_url: str) -> None:
    other = await asyncpg.connect(database_url)
    try:
        await other.execute("SELECT pg_advisory_lock($1)", telemetry.LOCK_PARTITIONS)
        upkeep = await api.components.telemetry.partitions()
        assert upkeep.skipped and upkeep.created == []
        await other.execute("SELECT pg_advisory_unlock($1)", telemetry.LOCK_PARTITIONS)
        assert not (await api.components.telemetry.partitions()).skipped
    finally:
        await other.close()


async def test_robot_telemetry_lists_samples_without_seq_but_not_status_messages(api: Api) -> None:
    now = datetime.now(UTC)
    await api.resources.db.execute("DELETE FROM telemetry WHERE robot_id = $1", ALPHA)
    outcomes = await send(
        api,
        ALPHA,
        "telemetry",
        {"ts": iso(now - timedelta(seconds=30)), "metrics": {"CPU_USAGE": 12.5}},  # no seq
        {"seq": 1, "ts": iso(now - timedelta(seconds=20)), "metrics": {"CPU_USAGE": 13.5}},
    )
    assert outcomes == ["stored", "stored"]
    assert await send(api, ALPHA, "status", {"status": "IDLE", "ts": iso(now - timedelta(seconds=10))}) == [
        "stored"
    ]
    points = (await api.data(ROBOT_TELEMETRY, {"id": ALPHA}))["robotTelemetry"]
    assert [p["metrics"]["cpu"] for p in points] == [13.5, 12.5]
    flags = await api.resources.db.fetch(
        "SELECT seq < 0 AS seqless, is_status FROM telemetry WHERE robot_id = $1 ORDER BY ts", ALPHA
    )
    assert [(r["seqless"], r["is_status"]) for r in flags] == [(True, False), (False, False), (True, True)]


@pytest.fixture
async def fresh_db(postgres_url: str) -> object:
    name = f"sepulki_upgrade_{int(time.time() * 1000)}"
    await admin_execute(postgres_url, f'CREATE DATABASE "{name}"')
    base, _, _ = postgres_url.rpartition("/")
    yield f"{base}/{name}"
    await admin_execute(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_an_existing_database_migrates_with_its_telemetry_and_events(
    fresh_db: str, tmp_path: Path
) -> None:
    # Given a database at the schema before partitions, holding a sample, a status row, a
    # seq-less sample and an event from months ago and from now
    before = tmp_path / "before"
    before.mkdir()
    for path in sorted(db.MIGRATIONS.glob("*.sql")):
        if path.name < "20261202_50":
            shutil.copy(path, before / path.name)
    await db.migrate(fresh_db, before)
    conn = await asyncpg.connect(fresh_db)
    try:
        await conn.execute(
            "INSERT INTO smiths (id, email, name, password_hash, role) "
            "VALUES ('00000000-0000-4000-8000-0000000000aa', 'x@y.z', 'x', 'x', 'ADMIN')"
        )
        await conn.execute("INSERT INTO loci (id, name) VALUES ('30000000-0000-4000-8000-0000000000aa', 'L')")
        await conn.execute(
            "INSERT INTO fleets (id, name, locus_id) VALUES ($1, 'F', $2)",
            DEV_FLEET,
            LOCUS,
        )
        await conn.execute(
            "INSERT INTO sepulkas (id, name, created_by) "
            "VALUES ('50000000-0000-4000-8000-0000000000aa', 'S', '00000000-0000-4000-8000-0000000000aa')"
        )
        await conn.execute(
            "INSERT INTO ingots (id, sepulka_id, version, build_hash) VALUES "
            "('60000000-0000-4000-8000-0000000000aa', '50000000-0000-4000-8000-0000000000aa', '1', 'h')"
        )
        await conn.execute(
            "INSERT INTO robots (id, name, sepulka_id, fleet_id, current_ingot_id) "
            "VALUES ($1, 'A', '50000000-0000-4000-8000-0000000000aa', $2, $3)",
            ALPHA,
            DEV_FLEET,
            INGOT,
        )
        old = datetime.now(UTC) - timedelta(days=70)
        await conn.executemany(
            "INSERT INTO telemetry (robot_id, fleet_id, seq, ts, status, metrics) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            [
                (ALPHA, DEV_FLEET, 1, old, "WORKING", '{"CPU_USAGE": 1}'),
                (ALPHA, DEV_FLEET, -5, old, "IDLE", "{}"),
                (ALPHA, DEV_FLEET, -6, datetime.now(UTC), "IDLE", '{"CPU_USAGE": 2}'),
            ],
        )
        await conn.execute(
            "INSERT INTO robot_events (robot_id, fleet_id, seq, ts, type) VALUES ($1, $2, 1, $3, 'OLD'), "
            "($1, $2, 2, now(), 'NEW')",
            ALPHA,
            DEV_FLEET,
            old,
        )
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM robot_events ORDER BY id")]

        # When it migrates
        await db.migrate(fresh_db)

        # Then every row is kept, in a partition of its month, status rows told apart
        rows = await conn.fetch(
            "SELECT seq, is_status, tableoid::regclass::text AS part FROM telemetry ORDER BY seq"
        )
        assert [(r["seq"], r["is_status"]) for r in rows] == [(-6, False), (-5, True), (1, False)]
        assert rows[2]["part"] == f"telemetry_p{month_start(old):%Y%m%d}"
        events = await conn.fetch("SELECT id, tableoid::regclass::text AS part FROM robot_events ORDER BY id")
        assert [e["id"] for e in events] == ids
        assert events[0]["part"] == f"robot_events_p{month_start(old):%Y%m%d}"
        # New events continue the old ids, and the old data is queued for its rollups
        new_id = await conn.fetchval(
            "INSERT INTO robot_events (robot_id, fleet_id, seq, ts, type) "
            "VALUES ($1, $2, 3, now(), 'X') RETURNING id",
            ALPHA,
            DEV_FLEET,
        )
        assert new_id > max(ids)
        assert await conn.fetchval("SELECT count(*) FROM telemetry_rollup_pending") == 2
    finally:
        await conn.close()
