"""PostgreSQL access: the pool, codecs, migrations and small row helpers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeAlias, TypeVar, cast, overload

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from pogo_core.util import migrate as pogo
from pogo_core.util import sql as pogo_sql

from app.settings import ASSETS

MIGRATIONS = ASSETS / "migrations"
log = logging.getLogger("sepulki.db")

Pool = asyncpg.Pool
Record = asyncpg.Record
# What SQL helpers take: a dedicated connection or one acquired from the pool.
Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy
QueryObserver = Callable[[str], None]
T = TypeVar("T")


async def _init_connection(conn: asyncpg.Connection) -> None:
    # UUIDs travel as strings: GraphQL IDs are strings, and it spares a conversion per field.
    await conn.set_type_codec("uuid", encoder=str, decoder=str, schema="pg_catalog", format="text")
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog", format="text"
        )


# asyncpg waits 60 s for a connection by default. A server stopped in the middle of the handshake
# (an immediate shutdown, a restart) may never answer, and the ingest's writer would sit out that
# minute with its batch; failing sooner lets its retry loop reach the restarted server.
CONNECT_TIMEOUT_S = 10.0


async def connect(dsn: str) -> asyncpg.Connection:
    """A dedicated connection (LISTEN, long-lived workers) with the pool's codecs."""
    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    await _init_connection(conn)
    return conn


async def create_pool(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    observers: list[QueryObserver] | None = None,
) -> asyncpg.Pool:
    """A pool whose connections decode JSON and UUID; `observers` see every statement run."""

    async def init(conn: asyncpg.Connection) -> None:
        await _init_connection(conn)
        if observers is not None:

            def notify(record: asyncpg.connection.LoggedQuery) -> None:
                for fn in observers:
                    fn(record.query)

            conn.add_query_logger(notify)

    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=init,
        reset=_reset_if_stateful,
        timeout=CONNECT_TIMEOUT_S,
    )
    assert pool is not None
    return pool


# Pool connections lent out with `acquire_stateful`: they get asyncpg's full reset on release.
_stateful: weakref.WeakSet[asyncpg.Connection] = weakref.WeakSet()


async def _reset_if_stateful(conn: asyncpg.Connection) -> None:
    """The pool's reset on release. asyncpg's default sends `pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL` on every release: a round trip per request for nothing, because the
    statements run through the pool leave no session state behind. Checked in the code: there
    is no LISTEN, no session advisory lock, no `SET` without LOCAL (`set_config` only with
    is_local), and cursors exist only inside transactions. What does keep session state (LISTEN,
    `SET TIME ZONE`, session advisory locks: the workers' long-lived connection in embedded mode)
    takes its connection with `acquire_stateful` and gets the full reset. asyncpg itself still
    rolls back an open transaction and drops the Python-side listeners before calling this."""
    if conn in _stateful:
        _stateful.discard(conn)
        query = conn.get_reset_query()
        if query:
            await conn.execute(query)


async def acquire_stateful(pool: Pool) -> PoolConnectionProxy:
    """A pool connection that may keep session state (LISTEN, SET, session advisory locks):
    reset in full when released."""
    proxy = await pool.acquire()
    # The pool hands its reset the connection behind the proxy (not typed by the stubs).
    _stateful.add(cast(Any, proxy)._con)
    return proxy


def _migration_ids(migrations: Path) -> set[str]:
    """The ids pogo gives the migrations of the folder (their file names' stems)."""
    return {path.stem for path in migrations.iterdir() if path.suffix in {".py", ".sql"}}


async def migrate(dsn: str, migrations: Path = MIGRATIONS) -> None:
    """Apply pending migrations in order; running it again is a no-op."""
    conn = await asyncpg.connect(dsn)
    try:
        # pogo parses every migration file (sqlparse) before it skips the applied ones: about a
        # third of a second per start for nothing once the database is up to date.
        await pogo_sql.ensure_pogo_sync(conn)
        applied = await pogo_sql.get_applied_migrations(conn, schema_name="public")
        if await asyncio.to_thread(_migration_ids, migrations) <= applied:
            return
        await pogo.apply(conn, migrations, schema_name="public", logger=log)
    finally:
        await conn.close()


@overload
def group_rows(rows: Iterable[Record], key: str) -> dict[Any, list[dict[str, Any]]]: ...


@overload
def group_rows(rows: Iterable[Record], key: str, build: Callable[[Record], T]) -> dict[Any, list[T]]: ...


def group_rows(
    rows: Iterable[Record],
    key: str,
    build: Callable[[Record], Any] = dict,
) -> dict[Any, list[Any]]:
    grouped: dict[Any, list[Any]] = {}
    for row in rows:
        grouped.setdefault(row[key], []).append(build(row))
    return grouped


def returned(row: Record | None) -> Record:
    """The row of a statement that always yields one (INSERT ... RETURNING, an UPDATE of a row the
    transaction holds locked), which asyncpg's `fetchrow` types as optional. Only the type changes."""
    return cast(Record, row)


def by_key(rows: Iterable[Record], key: str = "id") -> dict[Any, dict[str, Any]]:
    return {row[key]: dict(row) for row in rows}


async def fetch_by_ids(pool: Pool, sql: str, ids: list[Any]) -> list[dict[str, Any] | None]:
    """One `= ANY($1)` query for a loader batch; rows in key order, None where absent."""
    rows = by_key(await pool.fetch(sql, ids))
    return [rows.get(i) for i in ids]


@contextlib.asynccontextmanager
async def periodically(name: str, every_s: float, job: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
    """Runs `job` at once and then every `every_s` seconds while inside. A database error is
    logged and the next round tries again: housekeeping must not stop the service."""

    async def loop() -> None:
        while True:
            try:
                await job()
            except (asyncpg.PostgresError, OSError) as exc:
                log.warning("%s failed: %r", name, exc)
            await asyncio.sleep(every_s)

    task = asyncio.create_task(loop(), name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
