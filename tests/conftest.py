"""Fixtures that own real servers: PostgreSQL per session, a fresh database and app per test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from app.infra.security import Passwords
from app.settings import Settings
from tests.mailsink import SmtpSink
from tests.servers import MosquittoServer, PostgresServer, RedisServer
from tests.support import Api
from tests.template import SeededTemplate, with_db


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    url = os.environ.get("SEPULKI_TEST_DATABASE_URL")
    if url:
        yield url
        return
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real Redis, started on first use; tests may stop and start it (same port)."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[MosquittoServer]:
    """A real Mosquitto broker speaking MQTT 5, started on first use."""
    server = MosquittoServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def base_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # Cheap argon2 parameters: the suite hashes many passwords; production keeps the defaults.
    return Settings(
        env="test",
        data_dir=Path(tmp_path_factory.mktemp("sepulki-data")),
        argon2_time_cost=1,
        argon2_memory_kib=1024,
        seed_on_start=False,
        db_pool_min=1,
        db_pool_max=5,
        # Each app counts its own attempts, even when a test moves the event bus to the shared
        # Redis; tests of the Redis-backed limits set this themselves.
        rate_limit_storage_url="async+memory://",
        # The seeded robots were last heard from weeks ago: with the inactivity timeout on, every
        # test would see them go OFFLINE. Tests of the timeout turn it on (tests/test_robot_liveness.py).
        robot_offline_after_s=0,
    )


@pytest.fixture(scope="session")
async def template(postgres_url: str, base_settings: Settings) -> AsyncIterator[SeededTemplate]:
    seeded = SeededTemplate(postgres_url, Passwords(base_settings))
    yield seeded
    await seeded.close()


@pytest.fixture
async def database_url(postgres_url: str, template: SeededTemplate) -> AsyncIterator[str]:
    name = await template.copy()
    yield with_db(postgres_url, name)
    await template.drop(name)


@pytest.fixture
def settings(base_settings: Settings, database_url: str) -> Settings:
    return base_settings.replace(database_url=database_url)


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    """The application on a fresh copy of the seeded database, with its lifespan running."""
    async with Api.running(settings) as running:
        yield running


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()
