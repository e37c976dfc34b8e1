"""The ingest pipeline: validated messages, batched by size or time, written in one transaction,
answered after the commit, published after the commit.

`Pipeline.submit(raw_messages)` is the one entry point of MQTT and HTTP ingest. It validates at once
(no I/O), queues the messages and resolves when the batch they went into has committed, with one
`Outcome` per message: stored, duplicate (its key was already stored) or rejected (written to
dead_letters with the reason; it will never become valid, so the sender is still acknowledged).

One writer task commits batches one after another, so batches (and their event ids) are
committed in arrival order, and the next batch fills while the previous one commits. A
transient database error (connection lost, deadlock, serialization failure, shutdown) retries
the batch with backoff for as long as the pipeline runs; the callers simply wait, and MQTT stops
sending once its in-flight window is full. Every attempt is bounded (ATTEMPT_TIMEOUT_S, checkout and
statement together): a statement that is never answered fails the attempt instead of stalling the
writer, and the connection it ran on is terminated, never handed back to the pool for reuse.
Any other error is narrowed down by splitting the batch until the one message that causes it is
found; that message goes to dead_letters as `storage_error`, the rest are stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from app import commands
from app.infra.bus import Events
from app.infra.db import Pool
from app.ingest.messages import (
    INVALID_TOPIC,
    KINDS,
    STORAGE_ERROR,
    STORED,
    UNKNOWN_ROBOT,
    CommandAck,
    Outcome,
    RawMessage,
    Rejected,
    Sample,
    canonical_id,
    validate,
)
from app.ingest.metrics import IngestMetrics
from app.ingest.writer import ApplyAcks, Entry, Written, write_batch
from app.settings import Settings

log = logging.getLogger("sepulki.ingest")

KNOWN_ROBOTS = "SELECT id::text AS id, fleet_id::text AS fleet_id FROM robots WHERE deleted_at IS NULL"
STOP_TIMEOUT_S = 10.0
# A pool checkout waits at most this long: with the server restarting, a connect can go unanswered.
ACQUIRE_TIMEOUT_S = 10.0
# One attempt at a batch (robot lookup, checkout, statement): a batch takes milliseconds, so only a
# statement nobody answers reaches it, and the retry then runs on a new connection.
ATTEMPT_TIMEOUT_S = 20.0
# A robot that is not (or no longer) registered is logged at most once per this interval: its
# messages all go to dead_letters, and one line per message would flood the log.
UNKNOWN_ROBOT_LOG_INTERVAL_S = 60.0
# SQLSTATE classes worth retrying: connection, transaction rollback (deadlock, serialization),
# insufficient resources, operator intervention (shutdown), system error.
TRANSIENT_CLASSES = frozenset({"08", "40", "53", "57", "58"})


class PipelineStopped(RuntimeError):
    """The pipeline was stopped before the batch could commit; nothing of it was acknowledged."""


class RobotCache:
    """Ids of live robots and their fleets, reloaded at most every `ttl` seconds, and sooner (but
    not more than once per `min_interval`) when a message names a robot it does not know: a robot
    created a moment ago is accepted without a query per message."""

    def __init__(
        self, pool: Pool, metrics: IngestMetrics, ttl: float = 5.0, min_interval: float = 0.5
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._ttl = ttl
        self._min_interval = min_interval
        self.fleets: dict[str, str] = {}
        self._loaded_at = -1e9

    async def known(self, ids: set[str]) -> set[str]:
        age = time.monotonic() - self._loaded_at
        if age > self._ttl or (age > self._min_interval and not ids <= self.fleets.keys()):
            await self.reload()
        return {i for i in ids if i in self.fleets}

    async def reload(self) -> None:
        # A checkout with a timeout: the pool's release after a failed or cancelled statement is
        # bounded by it too (without one it would wait for the cancellation without limit).
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            rows = await conn.fetch(KNOWN_ROBOTS, timeout=ACQUIRE_TIMEOUT_S)
        self.fleets = {r["id"]: r["fleet_id"] for r in rows}
        self._loaded_at = time.monotonic()
        self._metrics.robot_cache_refreshes += 1


@dataclass(slots=True)
class _Ticket:
    entries: list[Entry]
    future: asyncio.Future[list[Outcome]]
    arrived: float


def transient(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.PostgresError):
        return (exc.sqlstate or "")[:2] in TRANSIENT_CLASSES
    return isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError)


class Pipeline:
    """Batches messages into transactions; see the module docstring."""

    def __init__(
        self,
        pool: Pool,
        events: Events | None,
        settings: Settings,
        *,
        metrics: IngestMetrics | None = None,
        apply_acks: ApplyAcks = commands.apply_acks,
        max_pending_batches: int = 10,
        after_commit: Callable[[list[Sample]], None] | None = None,
    ) -> None:
        self._pool = pool
        self._events = events
        self._batch_size = max(1, settings.ingest_batch_size)
        self._window = max(0, settings.ingest_batch_ms) / 1000
        self._max_bytes = settings.ingest_max_payload_bytes
        self._max_pending = self._batch_size * max_pending_batches
        self._apply_acks = apply_acks
        # Receives each committed batch's newly stored samples (the rule evaluator,
        # app.ingest.rules); it only queues them, so the writer never waits for it.
        self._after_commit = after_commit
        self.metrics = metrics or IngestMetrics()
        self.robots = RobotCache(pool, self.metrics)
        self._unknown_logged: dict[str, float] = {}
        self._queue: deque[_Ticket] = deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        # Callers waiting for room in the queue, woken in order, only as many as there is room for.
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._outbox: asyncio.Queue[Written] = asyncio.Queue(maxsize=64)
        self._writer: asyncio.Task[None] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._closing = False
        self.metrics.gauges["queued_messages"] = lambda: self._queued
        self.metrics.gauges["unpublished_batches"] = self._outbox.qsize

    async def __aenter__(self) -> Pipeline:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="ingest-writer")
        self._publisher = asyncio.create_task(self._publish_loop(), name="ingest-publisher")

    async def stop(self) -> None:
        """Commits what is queued (giving up on it after STOP_TIMEOUT_S if the database is gone), then
        publishes what was committed."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        self._full.set()
        if self._writer is not None:
            try:
                await asyncio.wait_for(self._writer, STOP_TIMEOUT_S)
            except TimeoutError:
                log.error("ingest: %d queued messages not committed at shutdown", self._queued)
        self._fail_queued()
        if self._publisher is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox.join(), STOP_TIMEOUT_S)
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher

    async def submit(self, items: list[RawMessage]) -> list[Outcome]:
        """Outcomes of these messages, in order, once the batch they went into has committed."""
        if self._closing:
            raise PipelineStopped("ingest pipeline is stopped")
        if not items:
            return []
        while self._queued >= self._max_pending and self._queue:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            await waiter
            if self._closing:
                raise PipelineStopped("ingest pipeline is stopped")
        return await self.enqueue(items)

    def enqueue(self, items: list[RawMessage]) -> asyncio.Future[list[Outcome]]:
        """`submit` without waiting for room in the queue, for a caller that bounds what it has in
        flight itself (the MQTT consumer's window): the outcomes, once committed, as a future."""
        if self._closing:
            raise PipelineStopped("ingest pipeline is stopped")
        loop = asyncio.get_running_loop()
        now = datetime.now(UTC)
        ticket = _Ticket([self._entry(raw, now) for raw in items], loop.create_future(), loop.time())
        self._queue.append(ticket)
        self._queued += len(ticket.entries)
        self._wake.set()
        if self._queued >= self._batch_size:
            self._full.set()
        return ticket.future

    def _entry(self, raw: RawMessage, now: datetime) -> Entry:
        if raw.kind not in KINDS:
            return Entry(raw, None, Rejected(INVALID_TOPIC, f"not a robot topic: {raw.topic[:200]!r}"), now)
        robot_id: str | None = (
            raw.robot_id if raw.robot_id in self.robots.fleets else canonical_id(raw.robot_id)
        )
        if robot_id is None:
            return Entry(raw, None, Rejected(UNKNOWN_ROBOT, f"{raw.robot_id[:64]!r} is not a robot id"), now)
        return Entry(raw, robot_id, validate(raw, robot_id, self._max_bytes), now)

    def _take(self) -> list[_Ticket]:
        tickets = [self._queue.popleft()]
        taken = len(tickets[0].entries)
        while self._queue and taken + len(self._queue[0].entries) <= self._batch_size:
            ticket = self._queue.popleft()
            tickets.append(ticket)
            taken += len(ticket.entries)
        self._queued -= taken
        if self._queued < self._batch_size:
            self._full.clear()
        self._wake_waiting()
        return tickets

    def _wake_waiting(self) -> None:
        room = self._max_pending - self._queued
        while self._waiting and (room > 0 or self._closing):
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                room -= 1

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last_write = -1e9
        while True:
            while not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
            # At most one batch per window: a message that finds the writer idle for a whole
            # window is written at once (a breaching sample is not held 25 ms for company),
            # while under load batches still gather for the window since the last one began.
            delay = min(self._queue[0].arrived, last_write) + self._window - loop.time()
            if delay > 0 and self._queued < self._batch_size and not self._closing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._full.wait()
            tickets = self._take()
            last_write = loop.time()
            try:
                written = await self._commit(tickets)
            except Exception as exc:
                # Only when stopping with the database gone: the messages stay unacknowledged.
                self.metrics.batch_failures += 1
                log.error("ingest: batch of %d not committed, left unacknowledged: %r", len(tickets), exc)
                for ticket in tickets:
                    if not ticket.future.done():
                        ticket.future.set_exception(PipelineStopped(f"batch not committed: {exc}"))
                continue
            for ticket in tickets:
                if not ticket.future.done():  # a caller that gave up (HTTP client gone) still got stored
                    ticket.future.set_result([e.outcome for e in ticket.entries])  # type: ignore[misc]
            if self._after_commit is not None:
                stored = [e.item for t in tickets for e in t.entries if e.outcome is STORED]
                self._after_commit([item for item in stored if type(item) is Sample])
            if written.publications or written.command_changes:
                await self._outbox.put(written)

    async def _commit(self, tickets: list[_Ticket]) -> Written:
        entries = [e for t in tickets for e in t.entries]
        started = time.perf_counter()
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(ATTEMPT_TIMEOUT_S):
                    await self._check_robots(entries)
                    written = await self._checked_out(entries)
                break
            except Exception as exc:
                if not transient(exc) or (self._closing and attempt >= 2):
                    raise
                attempt += 1
                self.metrics.batch_retries += 1
                delay = min(0.05 * 2**attempt, 5.0)
                log.warning(
                    "ingest: batch of %d failed (%s), retry %d in %.2fs", len(entries), exc, attempt, delay
                )
                await asyncio.sleep(delay)
        metrics = self.metrics
        metrics.batches += 1
        metrics.batch_items += len(entries)
        metrics.batch_seconds += time.perf_counter() - started
        for e in entries:
            outcome: Outcome = e.outcome  # type: ignore[assignment]
            metrics.count(e.raw.source, e.raw.kind, outcome.status, outcome.reason)
        return written

    async def _check_robots(self, entries: list[Entry]) -> None:
        wanted = {e.robot_id for e in entries if e.robot_id is not None and type(e.item) is not Rejected}
        if not wanted:
            return
        known = await self.robots.known(wanted)
        if len(known) == len(wanted):
            return
        for e in entries:
            if e.robot_id is not None and e.robot_id not in known and type(e.item) is not Rejected:
                e.item = Rejected(UNKNOWN_ROBOT, f"no robot {e.robot_id}")
        now = time.monotonic()
        for robot_id in wanted - known:
            if now - self._unknown_logged.get(robot_id, -1e9) >= UNKNOWN_ROBOT_LOG_INTERVAL_S:
                if len(self._unknown_logged) > 10_000:  # ids made up by a misbehaving sender
                    self._unknown_logged.clear()
                self._unknown_logged[robot_id] = now
                # `extra`: a batch mixes robots, so the log context's robot_id is set per line.
                extra = {"robot_id": robot_id}
                log.info("ingest: messages of unknown robot %s dead-lettered", robot_id, extra=extra)

    async def _checked_out(self, entries: list[Entry]) -> Written:
        """The batch written on a connection checked out for it alone. Not one held across
        batches: when its server goes away asyncpg returns its holder to the pool at once and
        another task (the rule evaluator) connects through it, while the pipeline would still hold
        the stale proxy. A checkout costs no round trip (app.infra.db's reset)."""
        conn = await self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S)
        try:
            return await self._write(conn, entries)
        except BaseException as exc:
            if not isinstance(exc, Exception) or transient(exc):
                # Broken, or cancelled by the attempt's timeout in the middle of a statement: the
                # pool's reset would wait on it (ROLLBACK, the cancel request), so it is dropped;
                # the holder goes back to the pool without it and connects anew when next used.
                with contextlib.suppress(asyncpg.InterfaceError):  # already gone with the server
                    conn.terminate()
            raise
        finally:
            await self._pool.release(conn)

    async def _write(self, conn: PoolConnectionProxy, entries: list[Entry]) -> Written:
        try:
            if any(type(e.item) is CommandAck for e in entries):
                async with conn.transaction():
                    return await self._statement(conn, entries)
            return await self._statement(conn, entries)  # one statement: atomic
        except Exception as exc:
            if transient(exc):
                raise
            if len(entries) == 1:
                entry = entries[0]
                if type(entry.item) is Rejected and entry.item.reason == STORAGE_ERROR:
                    raise
                log.warning(
                    "ingest: message on %s not storable: %r",
                    entry.raw.topic,
                    exc,
                    extra={"robot_id": entry.robot_id},
                )
                entry.item = Rejected(STORAGE_ERROR, f"{type(exc).__name__}: {exc}"[:500])
                return await self._write(conn, entries)
            half = len(entries) // 2
            first, second = await self._write(conn, entries[:half]), await self._write(conn, entries[half:])
            return Written(
                first.publications + second.publications, first.command_changes + second.command_changes
            )

    async def _statement(self, conn: PoolConnectionProxy, entries: list[Entry]) -> Written:
        try:
            return await write_batch(conn, entries, self._apply_acks)
        except asyncio.CancelledError:
            # The attempt's timeout (or the stop): the statement may still run on the server, and
            # the transaction's ROLLBACK or the pool's reset would wait for it without a bound.
            # Terminated here, before either runs; they then fail at once on a closed connection.
            with contextlib.suppress(asyncpg.InterfaceError):
                conn.terminate()
            raise

    def _fail_queued(self) -> None:
        while self._queue:
            ticket = self._queue.popleft()
            self._queued -= len(ticket.entries)
            if not ticket.future.done():
                ticket.future.set_exception(PipelineStopped("ingest pipeline stopped before commit"))
        self._wake_waiting()

    async def _publish_loop(self) -> None:
        while True:
            written = await self._outbox.get()
            try:
                await self._publish(written)
            finally:
                self._outbox.task_done()

    async def _publish(self, written: Written) -> None:
        if self._events is None:
            return
        try:
            for publication in written.publications:
                await self._events.publish(publication.channels, publication.id, publication.payload)
                self.metrics.events_published += 1
            if written.command_changes:
                await commands.publish(self._events, written.command_changes)
                self.metrics.events_published += len(written.command_changes)
        except Exception:
            # Committed all the same: subscribers catch up from the event log with `after`.
            self.metrics.publish_failures += 1
            log.exception("ingest: publishing a committed batch's events failed")
