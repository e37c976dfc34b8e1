"""What a signed-in request skips once its session was checked, and what it must still see at
once: a verified access token is reused for a few seconds without asking PostgreSQL again, yet a
logout, revocation or role change is refused or applied on the very next request, on this API
process and, through the revocation announcement, on another one. Pool connections go back
without a reset round trip unless they kept session state; the in-memory rate limiter counts
without worker threads."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any

import pytest

from app.context import VIEWER_SQL
from app.core.errors import RateLimited
from app.infra import db
from app.infra.ratelimit import RateLimiter
from app.settings import Settings
from tests.live import serving
from tests.seed_ids import DEMO_ID
from tests.servers import RedisServer
from tests.support import DEMO, Api, eventually
from tests.test_sessions import sign_in

ME = "{ me { email role } }"
REVOKE = "mutation($id: ID!) { revokeSession(id: $id) }"
ROLE = (
    "mutation($id: ID!, $role: SmithRole!) { updateSmithRole(smithId: $id, role: $role) { errors { code } } }"
)


def viewer_checks(api: Api) -> int:
    return sum(1 for statement in api.statements if statement == VIEWER_SQL)


async def test_a_session_checked_once_is_not_asked_about_again_on_the_next_requests(api: Api) -> None:
    session = await sign_in(api)
    assert (await api.data(ME, token=session["token"]))["me"]["email"] == "dev@sepulki.com"
    checks = viewer_checks(api)
    for _ in range(3):
        assert (await api.data(ME, token=session["token"]))["me"]["email"] == "dev@sepulki.com"
    assert viewer_checks(api) == checks


async def test_a_revoked_session_is_refused_on_the_very_next_request_though_its_check_was_cached(
    api: Api,
) -> None:
    revoked = await sign_in(api)
    keeper = await sign_in(api)
    for _ in range(2):  # the second answer comes from the cache
        assert (await api.data(ME, token=revoked["token"]))["me"]["email"] == "dev@sepulki.com"
        assert (await api.data(ME, token=keeper["token"]))["me"]["email"] == "dev@sepulki.com"
    assert (await api.data(REVOKE, {"id": revoked["id"]}, token=keeper["token"]))["revokeSession"] is True
    assert await api.error_codes(ME, token=revoked["token"], as_=None) == ["UNAUTHENTICATED"]
    assert (await api.data(ME, token=keeper["token"]))["me"]["email"] == "dev@sepulki.com"

    assert (await api.data("mutation { logout }", token=keeper["token"]))["logout"] is True
    assert await api.error_codes(ME, token=keeper["token"], as_=None) == ["UNAUTHENTICATED"]


async def test_a_role_change_applies_on_the_very_next_request_though_the_viewer_was_cached(api: Api) -> None:
    session = await sign_in(api, DEMO)
    for _ in range(2):
        assert (await api.data(ME, token=session["token"]))["me"]["role"] == "SMITH"
    assert (await api.data(ROLE, {"id": DEMO_ID, "role": "OVER_SMITH"}))["updateSmithRole"]["errors"] is None
    assert (await api.data(ME, token=session["token"]))["me"]["role"] == "OVER_SMITH"


async def test_a_logout_on_another_replica_is_refused_here_by_its_announcement(
    settings: Settings, redis_server: RedisServer
) -> None:
    # A long cache time: a refusal within seconds comes from the announcement, not from expiry.
    shared = settings.replace(
        broadcast_url=redis_server.url, rate_limit_storage_url="async+memory://", viewer_cache_s=60
    )
    async with serving(shared) as here, serving(shared) as there:
        session = await sign_in(here.api)
        for _ in range(2):
            assert (await here.api.data(ME, token=session["token"]))["me"]["email"] == "dev@sepulki.com"
        assert (await there.api.data("mutation { logout }", token=session["token"]))["logout"] is True

        async def refused_here() -> bool:
            return await here.api.error_codes(ME, token=session["token"], as_=None) == ["UNAUTHENTICATED"]

        await eventually(refused_here, within=3, what="the logout announced by the other replica")


async def test_pool_connections_return_without_a_reset_unless_they_kept_session_state(
    database_url: str,
) -> None:
    statements: list[str] = []
    pool = await db.create_pool(database_url, min_size=1, max_size=1, observers=[statements.append])
    try:
        assert await pool.fetchval("SELECT 1") == 1
        assert statements == ["SELECT 1"]  # no RESET ALL round trip after it

        default_zone = await pool.fetchval("SHOW TimeZone")
        conn = await db.acquire_stateful(pool)
        await conn.execute("SET TIME ZONE 'Pacific/Chatham'")
        await conn.execute("LISTEN sepulki_reset_check")
        assert await conn.fetchval("SELECT pg_try_advisory_lock(4242)")
        await pool.release(conn)

        async with pool.acquire() as same:  # the pool's only connection
            assert await same.fetchval("SHOW TimeZone") == default_zone
            assert await same.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0
            held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            assert await same.fetchval(held) == 0
    finally:
        await pool.close()


class CountingExecutor(concurrent.futures.ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


async def test_the_in_memory_request_limit_counts_in_the_event_loop_without_worker_threads() -> None:
    executor = CountingExecutor()
    asyncio.get_running_loop().set_default_executor(executor)
    limiter = RateLimiter(Settings(request_rate_limit_ip="50/second", broadcast_url="memory://"))
    for _ in range(50):
        await limiter.hit("request_ip", "192.0.2.7")
    with pytest.raises(RateLimited) as refused:
        await limiter.hit("request_ip", "192.0.2.7")
    assert refused.value.retry_after >= 1
    await limiter.hit("request_ip", "192.0.2.8")  # another address has its own allowance
    assert executor.submitted == 0
