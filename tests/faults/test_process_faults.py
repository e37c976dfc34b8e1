"""The ingest worker killed with SIGKILL, and PostgreSQL stopped immediately (no checkpoint, as
a crash) and started again, each under a steady robot stream: every message the broker
acknowledged ends in PostgreSQL exactly once, and the API answers again without a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from app.infra import db, seed
from app.infra.security import Passwords
from app.settings import Settings
from tests.faults.harness import (
    CLEAR_HISTORY,
    MESSAGES,
    Outcome,
    PersistentMosquitto,
    Robots,
    running_ingest,
    stored,
    until_stored,
)
from tests.servers import PostgresServer, _pg_bin
from tests.support import Api, eventually


class RestartablePostgres(PostgresServer):
    """A cluster of its own, so stopping it harms no other test."""

    def start(self) -> str:
        url = super().start()
        self._options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        return url

    def halt(self) -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def resume(self) -> None:
        self._run(
            _pg_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            self._options,
            "-l",
            str(self.dir / "log"),
            "-w",
            "start",
        )


@pytest.fixture(scope="module")
def broker() -> AsyncIterator[PersistentMosquitto]:
    server = PersistentMosquitto()
    server.start()
    try:
        yield server  # type: ignore[misc]
    finally:
        server.close()


@pytest.fixture
async def own_postgres(base_settings: Settings) -> AsyncIterator[tuple[RestartablePostgres, str]]:
    server = RestartablePostgres()
    url = await asyncio.to_thread(server.start)
    try:
        await db.migrate(url)
        await seed.load(url, Passwords(base_settings))
        yield server, url
    finally:
        await asyncio.to_thread(server.stop)


async def test_a_killed_ingest_worker_loses_and_duplicates_nothing(
    database_url: str, broker: PersistentMosquitto, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(database_url)
    await conn.execute(CLEAR_HISTORY)
    robots = Robots(broker.url)
    try:
        async with running_ingest(
            database_url, broker.url, tmp_path, mqtt_subscription="exclusive"
        ) as ingest:
            await robots.connect()
            await robots.publish(MESSAGES // 2)
            ingest.kill()  # no goodbye: batches in flight, PUBACKs unsent
            killed = time.monotonic()
            await robots.publish(MESSAGES // 4)  # acknowledged by the broker, queued for the session
            ingest.start()
            await ingest.wait_ready()
            recovered = time.monotonic() - killed
            await robots.publish(MESSAGES - robots.sent)
            await until_stored(conn, robots.sent, within=60)
            count, duplicated = await stored(conn)
        outcome = Outcome("ingest SIGKILL", robots.sent, count, duplicated, recovered)
        outcome.report()
        assert outcome.stored == outcome.sent == MESSAGES and outcome.duplicated == 0
    finally:
        await robots.disconnect()
        await conn.close()


@pytest.mark.xfail(
    reason=(
        "known bug: about 1 run in 30 stores 1800 of 2000 after PostgreSQL's immediate stop and "
        "start, with the ingest's writer committing on its next attempt; the loss is outside the "
        "writer's retry path and not yet found (docs/operations.md, Fault suite)"
    ),
    strict=False,
)
async def test_postgresql_stopped_immediately_and_started_loses_nothing_and_the_api_recovers(
    own_postgres: tuple[RestartablePostgres, str],
    broker: PersistentMosquitto,
    base_settings: Settings,
    tmp_path: Path,
) -> None:
    server, url = own_postgres
    conn = await asyncpg.connect(url)
    await conn.execute(CLEAR_HISTORY)
    await conn.close()
    robots = Robots(broker.url)
    async with (
        Api.running(base_settings.replace(database_url=url)) as api,
        # The edict evaluator goes to the pool five times a second (its missing-data check), so
        # its round breaks in the same instant as the writer's batch in every run: the case in
        # which the writer used to stall on the shared pool.
        running_ingest(
            url, broker.url, tmp_path, mqtt_subscription="exclusive", edict_missing_check_s="0.2"
        ) as ingest,
    ):
        await robots.connect()
        await robots.publish(MESSAGES // 2)
        await asyncio.to_thread(server.halt)
        halted = time.monotonic()
        # The broker acknowledges what robots send meanwhile; the ingest holds its PUBACKs.
        await robots.publish(MESSAGES // 4)
        assert (await api.client.get("/health/ready")).status_code == 503
        await asyncio.to_thread(server.resume)

        async def api_ready() -> bool:
            response = await api.client.get("/health/ready")
            return response.status_code == 200

        await eventually(api_ready, within=30, what="the API ready again without a restart")
        await ingest.wait_ready(within=30)
        recovered = time.monotonic() - halted
        await robots.publish(MESSAGES - robots.sent)
        await robots.disconnect()
        conn = await asyncpg.connect(url)
        try:
            await until_stored(conn, robots.sent, within=60)
            count, duplicated = await stored(conn)
        finally:
            await conn.close()
        # The API answers queries again, without a restart.
        robots_page = await api.execute("{ robots { id } }")
        assert robots_page.get("errors") is None and robots_page["data"]["robots"]
    outcome = Outcome("postgresql immediate stop and start", robots.sent, count, duplicated, recovered)
    outcome.report()
    assert outcome.stored == outcome.sent == MESSAGES and outcome.duplicated == 0
