"""Robot liveness: every SEPULKI_ROBOT_LIVENESS_INTERVAL_S, robots heard from over neither MQTT
nor HTTP for SEPULKI_ROBOT_OFFLINE_AFTER_S are marked OFFLINE (and put back when heard again),
and fleets whose robots changed status take the status their robots give them.

Safe in several processes at once: each robot is claimed with FOR UPDATE SKIP LOCKED and the
statements re-check the status they change, so a robot is marked once, and bringing a fleet in
line is idempotent. The changes are streamed on `robotStatus` like every robot change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from app import robot_status
from app.infra import db
from app.resources import Resources
from app.workers.commands import OwnConnection
from app.workers.running import running

log = logging.getLogger("sepulki.liveness")

_DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class Liveness:
    """One pass per interval; `tick` is one pass (tests call it directly)."""

    def __init__(self, resources: Resources) -> None:
        self._resources = resources
        self.marked_offline = 0
        # A connection of its own, as the command sweeper's: a pass must not wait for a pool that
        # requests and other components keep busy.
        self._conn = OwnConnection(resources, self._opened)

    async def _opened(self, _conn: db.Connection) -> None:
        return None

    async def close(self) -> None:
        await self._conn.close()

    @property
    def interval_s(self) -> float:
        return self._resources.settings.robot_liveness_interval_s

    async def tick(self) -> None:
        conn, events = await self._conn.get(), self._resources.events
        after_s = self._resources.settings.robot_offline_after_s
        if after_s > 0:
            while True:
                robots, recorded = await robot_status.mark_silent(conn, after_s)
                await events.publish_recorded(recorded)
                self.marked_offline += len(robots)
                if robots:
                    log.info("marked %d silent robots OFFLINE after %d s", len(robots), after_s)
                if len(robots) < robot_status.LIVENESS_BATCH:
                    break
            _, recorded = await robot_status.revive_heard(conn)
            await events.publish_recorded(recorded)
        # Changes since the previous pass (two intervals: a pass may have been late).
        await robot_status.follow_fleets(conn, 2 * self.interval_s)

    async def run(self) -> None:
        # The first pass waits one interval: robots that were running before this process
        # started get that long to be heard from.
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                try:
                    await self.tick()
                except _DB_ERRORS as exc:
                    log.warning("robot liveness: %s; reconnecting, trying again next interval", exc)
                    await self._conn.close()
        finally:
            await self.close()


def liveness(resources: Resources) -> contextlib.AbstractAsyncContextManager[Liveness]:
    """Component: the inactivity timeout and fleets following their robots."""
    return running("robot_liveness", Liveness(resources))
