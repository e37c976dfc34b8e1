"""The seeded database every test starts from, and the copies tests get of it."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import time

from app.infra import db, seed
from app.infra.security import Passwords
from tests.servers import admin_execute

TEMPLATE = "sepulki_template"


def with_db(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


class SeededTemplate:
    """A database migrated and seeded, which every test copies.

    The seed is written relative to now() (a run started 30 minutes ago, the last hour of
    telemetry), so a copy of an old template shows a different fleet: runs past their timeout,
    no recent samples. The template is therefore seeded again once it is MAX_AGE_S old.

    Copying takes a few hundred milliseconds (CREATE DATABASE writes the template's pages to the
    WAL), so while a test runs on its copy the next one is made in the background.
    """

    MAX_AGE_S = 300.0
    SPARES = 2

    def __init__(self, postgres_url: str, passwords: Passwords) -> None:
        self._postgres_url = postgres_url
        self._passwords = passwords
        self._seeded_at: float | None = None
        self._names = itertools.count()
        self._spares: collections.deque[asyncio.Task[tuple[str, float]]] = collections.deque()
        # Two spares being made at once must not both seed it again (one would drop it under the other).
        self._seeding = asyncio.Lock()

    def _stale(self, seeded_at: float | None) -> bool:
        return seeded_at is None or time.monotonic() - seeded_at > self.MAX_AGE_S

    async def name(self) -> str:
        """The template's name, seeded again first when it is too old."""
        async with self._seeding:
            if self._stale(self._seeded_at):
                await self._seed()
        return TEMPLATE

    async def _seed(self) -> None:
        await admin_execute(
            self._postgres_url,
            f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)',
            f'CREATE DATABASE "{TEMPLATE}"',
        )
        url = with_db(self._postgres_url, TEMPLATE)
        await db.migrate(url)
        await seed.load(url, self._passwords)
        self._seeded_at = time.monotonic()

    async def _create(self) -> tuple[str, float]:
        template = await self.name()
        seeded_at = self._seeded_at
        assert seeded_at is not None
        name = f"sepulki_test_{os.getpid()}_{next(self._names)}"
        await admin_execute(self._postgres_url, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return name, seeded_at

    async def copy(self) -> str:
        """The name of a fresh copy, which the caller drops (`drop`) when done."""
        made: tuple[str, float] | None = None
        if self._spares:
            with contextlib.suppress(Exception):  # the server restarted under it, say: make one now
                made = await self._spares.popleft()
        if made is not None and self._stale(made[1]):
            await self.drop(made[0])
            made = None
        if made is None:
            made = await self._create()
        while len(self._spares) < self.SPARES:
            self._spares.append(asyncio.create_task(self._create(), name="next-test-database"))
        return made[0]

    async def drop(self, name: str) -> None:
        await admin_execute(self._postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def close(self) -> None:
        """Drops the spare copies (a server the suite did not start keeps no leftovers)."""
        while self._spares:
            with contextlib.suppress(Exception):
                name, _ = await self._spares.popleft()
                await self.drop(name)
