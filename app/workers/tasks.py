"""The task worker: fires due schedules, applies what robots reported about their runs (and what
time and robots going OFFLINE did to them), then assigns queued tasks to free robots. It wakes
on NOTIFY task_worker (new or requeued tasks, freed robots, DISPATCH_TASK acks, TASK_* reports,
robot status changes: triggers and app.tasks send it) and every `task_worker_interval_s`. Any
number of workers may run: every step locks what it moves with SKIP LOCKED (app.tasks)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg

from app.infra import db
from app.resources import Resources
from app.tasks import queue, reactor, schedules
from app.tasks.lifecycle import Outbox
from app.workers.commands import OwnConnection
from app.workers.running import running

log = logging.getLogger("sepulki.tasks")

NOTIFY_CHANNEL = "task_worker"
_DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class TaskWorker:
    def __init__(self, resources: Resources) -> None:
        self._resources = resources
        self._wake = asyncio.Event()
        self._conn = OwnConnection(resources, self._opened)
        self.passes = 0

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    async def _opened(self, conn: db.Connection) -> None:
        await conn.add_listener(NOTIFY_CHANNEL, self._notified)
        conn.add_termination_listener(self._notified)

    async def run(self) -> None:
        interval = self._resources.settings.task_worker_interval_s
        try:
            while True:
                self._wake.clear()
                try:
                    await self.tick()
                except _DB_ERRORS as exc:
                    log.warning("task worker: %s; reconnecting", exc)
                    await self._conn.close()
                except Exception:  # a bug must not stop tasks from moving: log it, try next pass
                    log.exception("task worker pass failed")
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation
                # that arrives as the wake-up does, and the loop would then outlive its shutdown.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval):
                        await self._wake.wait()
        finally:
            await self._conn.close()

    async def tick(self) -> None:
        """One pass: schedules, then robots' reports (which may free robots), then the queue."""
        conn = await self._conn.get()
        settings = self._resources.settings
        await self._publish([await schedules.fire_due(conn)])
        await self._publish(await reactor.react(conn, settings))
        await self._publish(await queue.dispatch_pass(conn, settings))
        self.passes += 1

    async def _publish(self, outboxes: list[Outbox]) -> None:
        for out in outboxes:
            await out.publish(self._resources.events)


def task_worker(resources: Resources) -> contextlib.AbstractAsyncContextManager[TaskWorker]:
    """Component: the task worker (needs no broker: commands wait in the outbox)."""
    return running("task_worker", TaskWorker(resources))
