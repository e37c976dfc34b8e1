"""Telemetry upkeep in the background: partitions ahead and retention (hourly by default),
rollups (every 10 s), the utilization view (every 5 minutes). One loop on a connection of its
own, so its statements stay out of the request pool; every job takes an advisory lock, so any
number of API and worker processes run it and each round happens once (app.telemetry)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime

import asyncpg

from app import telemetry
from app.infra import db
from app.resources import Resources
from app.workers.commands import OwnConnection
from app.workers.running import running

log = logging.getLogger("sepulki.telemetry")

_DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class TelemetryUpkeep:
    """The jobs, callable one at a time (tests, `sepulki` tools) and run by `telemetry_upkeep`."""

    def __init__(self, resources: Resources) -> None:
        self._resources = resources
        self._conn = OwnConnection(resources, self._opened)
        self._lock = asyncio.Lock()

    @staticmethod
    async def _opened(conn: db.Connection) -> None:
        # Bucket and partition bounds are computed in UTC whatever the server's TimeZone.
        await conn.execute("SET TIME ZONE 'UTC'")

    async def partitions(self) -> telemetry.Upkeep:
        async with self._lock:
            conn = await self._conn.get()
            return await telemetry.upkeep_partitions(conn, self._resources.settings, datetime.now(UTC))

    async def roll_up(self) -> int:
        async with self._lock:
            conn = await self._conn.get()
            return await telemetry.roll_up(conn, self._resources.settings, datetime.now(UTC))

    async def refresh_utilization(self) -> bool:
        async with self._lock:
            return await telemetry.refresh_utilization(await self._conn.get())

    async def run(self) -> None:
        settings = self._resources.settings
        jobs = [
            (settings.telemetry_maintenance_interval_s, self.partitions),
            (settings.telemetry_rollup_interval_s, self.roll_up),
            (settings.utilization_refresh_s, self.refresh_utilization),
        ]
        due = [0.0] * len(jobs)
        while True:
            now = time.monotonic()
            for i, (every_s, job) in enumerate(jobs):
                if now < due[i]:
                    continue
                due[i] = now + every_s
                try:
                    await job()
                except _DB_ERRORS as exc:
                    log.warning("telemetry upkeep %s failed: %r", job.__name__, exc)
                    await self._conn.close()
            await asyncio.sleep(max(0.05, min(due) - time.monotonic()))

    async def close(self) -> None:
        await self._conn.close()


def telemetry_upkeep(resources: Resources) -> contextlib.AbstractAsyncContextManager[TelemetryUpkeep]:
    upkeep = TelemetryUpkeep(resources)
    return running("telemetry upkeep", upkeep, upkeep.close)
