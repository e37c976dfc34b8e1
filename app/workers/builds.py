"""The build worker: claims queued build and temper jobs and runs them (app.builds holds the jobs'
SQL and rules). Every worker and API replica may run it; SKIP LOCKED and the lease keep each job
to one runner at a time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import asyncpg

from app import builds
from app.infra import db
from app.resources import Resources
from app.workers.commands import OwnConnection
from app.workers.running import running

log = logging.getLogger("sepulki.builds")

# Jobs one worker runs per round; builds are short, several workers share a long queue.
CLAIM_BATCH = 4
_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


async def _nothing(_conn: db.Connection) -> None:
    return None


@dataclass(slots=True)
class BuildWorker:
    resources: Resources
    finished: int = 0  # jobs this worker finished (tests and /metrics read it)
    # Polling runs on a connection of its own, so its statements stay out of the request pool.
    conn: OwnConnection = field(init=False)

    def __post_init__(self) -> None:
        self.conn = OwnConnection(self.resources, _nothing)

    async def once(self) -> int:
        """Claims and runs what is due; the number of jobs it finished."""
        settings = self.resources.settings
        done = 0
        conn = await self.conn.get()
        for job in await builds.claim(conn, settings.build_lease_s, CLAIM_BATCH):
            if job["attempts"] > settings.build_max_attempts:
                await builds.give_up(self.resources.db, job)
                continue
            if job["kind"] == "BUILD":
                ok = await builds.run_build(self.resources.db, self.resources.storage, job)
            else:
                ok = await builds.run_temper(self.resources.db, job, settings.temper_iterations)
            done += ok
        self.finished += done
        return done

    async def run(self) -> None:
        while True:
            try:
                # A full batch means more may wait: go again at once.
                if await self.once() >= CLAIM_BATCH:
                    continue
            except _ERRORS as exc:
                log.warning("build worker round failed: %r", exc)
                await self.conn.close()
            await asyncio.sleep(self.resources.settings.build_poll_s)


def build_worker(resources: Resources) -> contextlib.AbstractAsyncContextManager[BuildWorker]:
    worker = BuildWorker(resources)
    return running("build worker", worker, worker.conn.close)
