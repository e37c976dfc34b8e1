"""The deployment tracker: every SEPULKI_DEPLOYMENT_POLL_S it folds finished UPDATE_INGOT commands
into their deployments (app.deployments.advance). Replicas split the open deployments with
SKIP LOCKED, so running it in every api and worker process is safe."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import asyncpg

from app import deployments
from app.infra import db
from app.resources import Resources
from app.workers.commands import OwnConnection
from app.workers.running import running

log = logging.getLogger("sepulki.deployments")

_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


async def _nothing(_conn: db.Connection) -> None:
    return None


@dataclass(slots=True)
class DeploymentTracker:
    resources: Resources
    closed: int = 0  # deployments this tracker closed
    # Polling runs on a connection of its own, so its statements stay out of the request pool.
    conn: OwnConnection = field(init=False)

    def __post_init__(self) -> None:
        self.conn = OwnConnection(self.resources, _nothing)

    async def once(self) -> int:
        closed, events = await deployments.advance(await self.conn.get())
        await self.resources.events.publish_recorded(events)
        for deployment in closed:
            log.info("deployment %s %s", deployment["id"], deployment["status"])
        self.closed += len(closed)
        return len(closed)

    async def run(self) -> None:
        while True:
            try:
                await self.once()
            except _ERRORS as exc:
                log.warning("deployment tracking round failed: %r", exc)
                await self.conn.close()
            await asyncio.sleep(self.resources.settings.deployment_poll_s)


def deployment_tracker(resources: Resources) -> contextlib.AbstractAsyncContextManager[DeploymentTracker]:
    tracker = DeploymentTracker(resources)
    return running("deployment tracker", tracker, tracker.conn.close)
