"""The one owner of long-lived resources: `open_resources(settings, role)` opens what a process
needs (embedded PostgreSQL or broker in development, migrations and the development seed where the
role applies them, the pool, the event bus, the MQTT publisher, mailer, rate limiter) and closes
everything it opened, in reverse order, when the block ends. `sepulki serve`/`dev` (through the
ASGI lifespan), `sepulki ingest` and `sepulki worker` all go through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from broadcaster import Broadcast

from app.infra import db, seed
from app.infra.bus import Events
from app.infra.db import Pool
from app.infra.embedded_broker import port_of, running_broker
from app.infra.embedded_postgres import EmbeddedPostgres
from app.infra.mail import Mailer, create_mailer
from app.infra.mqtt import Publisher, process_client_id
from app.infra.ratelimit import RateLimiter
from app.infra.security import Passwords, Tokens
from app.infra.storage import Storage, local_storage
from app.settings import Settings

# api: `serve` and `dev` (the HTTP API and its components); ingest: `sepulki ingest`;
# worker: `sepulki worker` (command dispatch and timeouts).
Role = Literal["api", "ingest", "worker"]

# Roles that apply pending migrations on start when SEPULKI_MIGRATE_ON_START says so.
_MIGRATES: frozenset[Role] = frozenset({"api", "ingest"})


@dataclass(slots=True)
class Resources:
    """What a process holds for its lifetime; handed to requests (through Context) and components."""

    settings: Settings
    db: Pool
    events: Events
    passwords: Passwords
    tokens: Tokens
    uploads_dir: Path
    mailer: Mailer
    limiter: RateLimiter
    # Build artifacts and uploaded files (a directory under the data directory).
    storage: Storage
    # The client that publishes commands to robots (roles api and worker, with SEPULKI_MQTT_URL).
    mqtt: Publisher | None = None
    # The embedded amqtt broker of `sepulki dev`.
    broker: Any = None


def _pool_size(settings: Settings, role: Role) -> tuple[int, int]:
    """(min, max) connections: the ingest writes through one connection at a time; the worker
    holds one connection of its own per loop and needs few from the pool."""
    if role == "ingest":
        return 1, 4
    if role == "worker":
        return 1, settings.db_pool_max
    return settings.db_pool_min, settings.db_pool_max


@contextlib.asynccontextmanager
async def open_resources(
    settings: Settings,
    role: Role,
    *,
    query_observers: list[db.QueryObserver] | None = None,
) -> AsyncIterator[Resources]:
    async with contextlib.AsyncExitStack() as stack:
        broker = None
        if settings.embedded_broker:
            # First: the dev broker must listen before anything connects to it.
            broker = await stack.enter_async_context(running_broker(port_of(settings.mqtt_url)))
        dsn = settings.database_url
        if dsn is None:
            embedded = EmbeddedPostgres(settings.data_dir)
            dsn = await embedded.start()
            stack.push_async_callback(embedded.stop)
            # Components that open their own connections need the embedded server's DSN too.
            settings = settings.replace(database_url=dsn)
        if settings.migrate_on_start and role in _MIGRATES:
            await db.migrate(dsn)
        passwords = Passwords(settings)
        if settings.seed_on_start and role == "api":
            await seed.load(dsn, passwords)
        min_size, max_size = _pool_size(settings, role)
        pool = await db.create_pool(dsn, min_size=min_size, max_size=max_size, observers=query_observers)
        stack.push_async_callback(pool.close)
        broadcast = await stack.enter_async_context(Broadcast(settings.broadcast_url))
        events = Events(broadcast)
        stack.push_async_callback(events.aclose)
        mqtt = None
        if settings.mqtt_url is not None and role in ("api", "worker"):
            publisher = Publisher(
                settings.mqtt_url,
                process_client_id(f"{settings.mqtt_client_id}-commands", role),
                protocol=settings.mqtt_protocol,
            )
            mqtt = await stack.enter_async_context(publisher)
        uploads_dir = settings.data_dir / "uploads"
        uploads_dir.mkdir(parents=True, exist_ok=True)
        yield Resources(
            settings=settings,
            db=pool,
            events=events,
            passwords=passwords,
            tokens=Tokens(settings),
            uploads_dir=uploads_dir,
            mailer=create_mailer(settings),
            limiter=RateLimiter(settings),
            storage=local_storage(settings.data_dir),
            mqtt=mqtt,
            broker=broker,
        )
