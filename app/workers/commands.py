"""The command outbox's background side: the dispatcher publishes QUEUED commands to robots and
the sweeper expires and times out what is left (app.commands holds the states and their SQL)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from app import commands
from app.infra import db
from app.infra.mqtt import Publisher
from app.resources import Resources
from app.workers.running import running

log = logging.getLogger("sepulki.commands")

DISPATCH_BATCH = 100
# A missed NOTIFY (e.g. while reconnecting) is caught by this poll.
DISPATCH_POLL_S = 2.0
# How long a full in-flight window may keep a publish waiting before the batch is cut short.
PUBLISH_WAIT_S = 5.0
SWEEP_INTERVAL_S = 1.0

_DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class OwnConnection:
    """A connection that stays the same across a loop's iterations (LISTEN and a session advisory
    lock need that), reopened after a failure. Opened directly when the database URL is known, so
    its periodic statements stay out of the request pool; from the pool in embedded mode."""

    def __init__(self, resources: Resources, on_open: Callable[[db.Connection], Awaitable[None]]) -> None:
        self._resources = resources
        self._on_open = on_open
        self._conn: db.Connection | None = None
        self._pooled = False

    async def get(self) -> db.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        await self.close()
        dsn = self._resources.settings.database_url
        if dsn is None:
            self._conn, self._pooled = await db.acquire_stateful(self._resources.db), True
        else:
            self._conn, self._pooled = await db.connect(dsn), False
        await self._on_open(self._conn)
        return self._conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._pooled:
            # Pooled: `get` acquired it from the pool.
            await self._resources.db.release(cast(PoolConnectionProxy, conn))
        elif not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 5)
            except _DB_ERRORS:
                conn.terminate()


class Sweeper:
    """Expires and times out commands every second, on the replica holding the advisory lock."""

    def __init__(self, resources: Resources) -> None:
        self._resources = resources
        self._leader = False
        self._conn = OwnConnection(resources, self._opened)

    @property
    def leader(self) -> bool:
        """Whether this sweeper holds the lock, so acts."""
        return self._leader

    async def _opened(self, _conn: db.Connection) -> None:
        self._leader = False  # a session lock does not survive its connection

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.tick()
                except _DB_ERRORS as exc:
                    log.warning("command sweeper: %s; reconnecting", exc)
                    await self._conn.close()
                await asyncio.sleep(SWEEP_INTERVAL_S)
        finally:
            await self.close()

    async def close(self) -> None:
        """Closes the connection, which releases the lock for another replica."""
        await self._conn.close()
        self._leader = False

    async def tick(self) -> None:
        conn = await self._conn.get()
        if not self._leader:
            self._leader = await commands.try_lead_sweeping(conn)
        if not self._leader:
            return
        while True:
            changes = await commands.sweep(conn, self._resources.settings.command_ack_timeout_s)
            await commands.publish(self._resources.events, changes)
            if len(changes) < commands.SWEEP_BATCH:
                return


class Dispatcher:
    """Publishes QUEUED commands QoS 1 to robots/{robotId}/commands and marks them SENT; wakes on
    NOTIFY robot_commands, on (re)connecting to the broker, and every DISPATCH_POLL_S."""

    def __init__(self, resources: Resources, mqtt: Publisher) -> None:
        self._resources = resources
        self._mqtt = mqtt
        self._wake = asyncio.Event()
        self._conn = OwnConnection(resources, self._opened)
        mqtt.on_connect(self._wake.set)

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    async def _opened(self, conn: db.Connection) -> None:
        await conn.add_listener(commands.NOTIFY_CHANNEL, self._notified)
        conn.add_termination_listener(self._notified)

    async def run(self) -> None:
        try:
            while True:
                self._wake.clear()
                try:
                    await self.drain()
                except _DB_ERRORS as exc:
                    log.warning("command dispatcher: %s; reconnecting", exc)
                    await self._conn.close()
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation
                # that arrives as the wake-up does, and the loop would then outlive its shutdown.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(DISPATCH_POLL_S):
                        await self._wake.wait()
        finally:
            await self._conn.close()

    async def drain(self) -> None:
        """Sends batches until nothing QUEUED is left or the broker is gone."""
        while self._mqtt.is_connected:
            conn = await self._conn.get()
            async with conn.transaction():
                rows = await commands.claim(conn, DISPATCH_BATCH)
                sent = []
                for row in rows:
                    if not await self._publish(row):
                        break
                    sent.append(row["id"])
                # A crash before this commit leaves the rows QUEUED: sent again, at least once.
                changes = await commands.mark_sent(conn, sent)
            await commands.publish(self._resources.events, changes)
            if len(rows) < DISPATCH_BATCH or len(sent) < len(rows):
                return

    async def _publish(self, row: Any) -> bool:
        """Hands the command to gmqtt, which retransmits a QoS 1 publish until the broker acks it."""
        topic, payload = commands.command_message(row)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PUBLISH_WAIT_S
        attempt = 0
        while True:
            try:
                self._mqtt.client.publish(topic, payload, qos=1)
                return True
            except OverflowError:
                # No free packet id: the broker's receive maximum of unacked QoS 1 publishes is
                # reached (about 20 under MQTT 5). Its PUBACKs, read by the loop, free them.
                if loop.time() > deadline or not self._mqtt.is_connected:
                    log.warning("command dispatcher: broker stopped acknowledging; retrying later")
                    return False
                attempt += 1
                await asyncio.sleep(0 if attempt < 100 else 0.005)


def sweeper(resources: Resources) -> contextlib.AbstractAsyncContextManager[Sweeper]:
    """Component: the expiry and ack-timeout sweeper (needs no broker)."""
    return running("command_sweeper", Sweeper(resources))


def dispatcher(resources: Resources) -> contextlib.AbstractAsyncContextManager[Dispatcher | None]:
    """Component: the command dispatcher, when an MQTT broker is configured."""
    if resources.mqtt is None:
        return contextlib.nullcontext()
    return running("command_dispatcher", Dispatcher(resources, resources.mqtt))
