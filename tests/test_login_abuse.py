"""Someone guesses passwords: the email locks after more than 5 failures in 15 minutes, the address
and the account are rate limited, and nothing tells which emails have accounts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app import sessions
from app.context import Context
from app.settings import Settings
from tests.servers import RedisServer
from tests.support import DEMO, DEV, LOGIN, Api

INVALID = "Invalid email or password"
WINDOW_S = 15 * 60


@contextlib.asynccontextmanager
async def from_address(api: Api, ip: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the same running app, calling from another address."""
    transport = httpx.ASGITransport(app=api.app, client=(ip, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def attempt(
    api: Api, email: str, password: str, client: httpx.AsyncClient | None = None
) -> dict[str, Any]:
    variables = {"email": email, "password": password}
    response = await (client or api.client).post("/graphql", json={"query": LOGIN, "variables": variables})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def outcome(body: dict[str, Any]) -> str:
    """ "signed in", the failure message, or the code of a refusal."""
    if body.get("errors"):
        code: str = body["errors"][0]["extensions"]["code"]
        return code
    login = body["data"]["login"]
    return "signed in" if login["session"] else login["errors"][0]["message"]


def retry_after(body: dict[str, Any]) -> int:
    error = body["errors"][0]
    assert error["extensions"]["code"] == "RATE_LIMITED", error
    wait: int = error["extensions"]["retryAfter"]
    return wait


async def login_audit(api: Api) -> list[dict[str, Any]]:
    rows = await api.resources.db.fetch(
        "SELECT smith_id, resource_id, changes, ip_address FROM audit_logs WHERE action = 'login' ORDER BY id"
    )
    return [dict(row) for row in rows]


async def test_sixth_failed_login_locks_the_email_and_the_seventh_attempt_is_refused(api: Api) -> None:
    passwords = api.resources.passwords
    failures = [outcome(await attempt(api, DEMO[0], f"guess-{n}")) for n in range(6)]
    assert failures == [INVALID] * 6

    before = passwords.verifications
    refused = await attempt(api, DEMO[0], DEMO[1])
    assert outcome(refused) == "RATE_LIMITED"
    assert 0 < retry_after(refused) <= WINDOW_S
    assert refused["data"] is None
    assert "Too many failed logins" in refused["errors"][0]["message"]
    # Refused before any password check, even the right one.
    assert passwords.verifications == before
    # Other accounts are untouched.
    assert outcome(await attempt(api, DEV[0], DEV[1])) == "signed in"

    demo_id = await api.resources.db.fetchval("SELECT id FROM smiths WHERE email = $1", DEMO[0])
    rows = [row for row in await login_audit(api) if row["smith_id"] in (demo_id, None)]
    outcomes = [(row["smith_id"], row["changes"]["outcome"]) for row in rows]
    assert outcomes[:6] == [(demo_id, "failure")] * 5 + [(demo_id, "lockout")]
    # The refused attempt names the email masked: it was never looked up.
    assert rows[6]["smith_id"] is None
    assert rows[6]["changes"] == {"outcome": "refused", "email": "de***@sepulki.com"}
    assert all(row["ip_address"] == "127.0.0.1" for row in rows)


async def test_unknown_emails_lock_alike_whatever_their_case(api: Api) -> None:
    cased = ["Ghost@Sepulki.com", "ghost@sepulki.com", "GHOST@SEPULKI.COM"]
    failures = [outcome(await attempt(api, cased[n % 3], "guess")) for n in range(6)]
    assert failures == [INVALID] * 6
    assert outcome(await attempt(api, "ghost@sepulki.com", "guess")) == "RATE_LIMITED"
    # An existing account whose email is typed in another case is the same account.
    for _ in range(6):
        assert outcome(await attempt(api, DEMO[0].upper(), "guess")) == INVALID
    assert outcome(await attempt(api, DEMO[0], DEMO[1])) == "RATE_LIMITED"

    rows = await login_audit(api)
    ghost = [row for row in rows if row["changes"].get("email", "").lower() == "gh***@sepulki.com"]
    assert [row["changes"]["outcome"] for row in ghost] == ["failure"] * 5 + ["lockout", "refused"]
    assert {row["changes"]["email"] for row in ghost} <= {
        "Gh***@Sepulki.com",
        "gh***@sepulki.com",
        "GH***@SEPULKI.COM",
    }


async def test_unknown_email_wrong_password_and_deactivated_account_cost_one_verification_each(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    await api.resources.db.execute(
        "UPDATE smiths SET is_active = false, deactivated_at = now() WHERE email = $1", DEV[0]
    )
    passwords = api.resources.passwords
    answers = {}
    caplog.set_level(logging.DEBUG)
    for case, (email, password) in {
        "unknown email": ("nobody@sepulki.com", "whatever-password"),
        "wrong password": (DEMO[0], "not-the-password"),
        "deactivated account": (DEV[0], DEV[1]),
    }.items():
        before = passwords.verifications
        body = await attempt(api, email, password)
        assert passwords.verifications - before == 1, case
        answers[case] = body
    assert answers["unknown email"] == answers["wrong password"] == answers["deactivated account"]
    assert outcome(answers["unknown email"]) == INVALID
    assert answers["unknown email"]["data"]["login"]["errors"][0]["code"] == "UNAUTHENTICATED"
    # And a successful login costs one verification too.
    before = passwords.verifications
    assert outcome(await attempt(api, DEMO[0], DEMO[1])) == "signed in"
    assert passwords.verifications - before == 1

    audit_text = str(await login_audit(api))
    logs = caplog.text
    for secret in ("whatever-password", "not-the-password", DEV[1], DEMO[1], "nobody@sepulki.com"):
        assert secret not in audit_text and secret not in logs


async def test_a_successful_login_clears_the_failures(api: Api) -> None:
    for _ in range(5):
        assert outcome(await attempt(api, DEMO[0], "guess")) == INVALID
    assert outcome(await attempt(api, DEMO[0], DEMO[1])) == "signed in"
    # Counting starts again: five more failures and the sixth do not lock yet.
    for _ in range(6):
        assert outcome(await attempt(api, DEMO[0], "guess")) == INVALID
    assert outcome(await attempt(api, DEMO[0], DEMO[1])) == "RATE_LIMITED"
    success = [row for row in await login_audit(api) if row["changes"]["outcome"] == "success"]
    assert len(success) == 1 and success[0]["resource_id"] is not None


async def test_the_lock_lifts_when_its_window_passes(settings: Settings) -> None:
    async with Api.running(settings.replace(login_lockout="2/2 seconds")) as api:
        for _ in range(3):
            assert outcome(await attempt(api, DEMO[0], "guess")) == INVALID
        refused = await attempt(api, DEMO[0], DEMO[1])
        assert retry_after(refused) <= 2
        await asyncio.sleep(retry_after(refused) + 0.2)
        assert outcome(await attempt(api, DEMO[0], DEMO[1])) == "signed in"


async def test_one_address_gets_100_attempts_per_15_minutes_by_default(api: Api) -> None:
    assert api.resources.settings.login_rate_limit_ip == "100/15 minutes"
    # Distinct emails, so that no lockout or per-account limit interferes.
    for n in range(100):
        assert outcome(await attempt(api, f"walker-{n}@example.com", "guess")) == INVALID
    refused = await attempt(api, DEMO[0], DEMO[1])
    assert 0 < retry_after(refused) <= WINDOW_S
    assert "from this address" in refused["errors"][0]["message"]
    async with from_address(api, "203.0.113.9") as elsewhere:
        assert outcome(await attempt(api, DEMO[0], DEMO[1], elsewhere)) == "signed in"


async def test_one_account_is_rate_limited_across_addresses(settings: Settings) -> None:
    async with Api.running(settings.replace(login_rate_limit_account="3/15 minutes")) as api:
        for n in range(3):
            async with from_address(api, f"198.51.100.{n + 1}") as client:
                assert outcome(await attempt(api, DEMO[0], DEMO[1], client)) == "signed in"
        async with from_address(api, "198.51.100.200") as client:
            refused = await attempt(api, DEMO[0].upper(), DEMO[1], client)
        assert 0 < retry_after(refused) <= WINDOW_S
        assert "for this account" in refused["errors"][0]["message"]
        assert outcome(await attempt(api, DEV[0], DEV[1])) == "signed in"


async def test_replicas_sharing_redis_share_the_lockout(
    settings: Settings, redis_server: RedisServer
) -> None:
    shared = settings.replace(rate_limit_storage_url="async+" + redis_server.url)
    # A fresh email: the Redis server outlives this test.
    email = f"target-{uuid.uuid4().hex[:8]}@example.com"
    async with Api.running(shared) as one, Api.running(shared) as two:
        for n in range(6):
            assert outcome(await attempt(one if n % 2 else two, email, "guess")) == INVALID
        assert outcome(await attempt(one, email, "guess")) == "RATE_LIMITED"
        assert outcome(await attempt(two, email, "guess")) == "RATE_LIMITED"


def fresh_email() -> str:
    # The Redis server outlives the test: its emails must be its own.
    return f"target-{uuid.uuid4().hex[:8]}@example.com"


def logged(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in record.getMessage() for record in caplog.records)


async def test_while_redis_is_down_logins_go_on_under_stricter_local_limits_and_share_again_once_back(
    settings: Settings, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sepulki.ratelimit")
    shared = settings.replace(rate_limit_storage_url="async+" + redis_server.url, rate_limit_retry_s=0.5)
    during, after = fresh_email(), fresh_email()
    async with Api.running(shared) as one, Api.running(shared) as two:
        assert outcome(await attempt(one, DEMO[0], DEMO[1])) == "signed in"
        redis_server.stop()
        try:
            started = time.monotonic()
            assert outcome(await attempt(one, DEMO[0], DEMO[1])) == "signed in"
            assert time.monotonic() - started < 2, "the login waited on the dead Redis"
            for _ in range(3):
                assert outcome(await attempt(one, DEV[0], DEV[1])) == "signed in"
            # Guesses are still limited, by this process alone and at half: "5/15 minutes" counts
            # 2, so the third failure locks the email.
            assert [outcome(await attempt(one, during, "guess")) for _ in range(3)] == [INVALID] * 3
            assert outcome(await attempt(one, during, "guess")) == "RATE_LIMITED"
            await asyncio.sleep(0.6)  # a retry of Redis fails again, silently
            assert outcome(await attempt(one, during, "guess")) == "RATE_LIMITED"
            assert logged(caplog, "rate-limit storage unavailable") == 1  # once per outage, not per request
            # Another replica does not see this process's counts.
            assert outcome(await attempt(two, during, "guess")) == INVALID
            assert logged(caplog, "rate-limit storage unavailable") == 2
        finally:
            redis_server.start()
        await asyncio.sleep(0.6)  # the next call after a retry interval asks Redis again

        # Shared again, at the full limits: six failures on one replica lock the email on the other.
        for _ in range(6):
            assert outcome(await attempt(one, after, "guess")) == INVALID
        assert outcome(await attempt(two, after, DEMO[1])) == "RATE_LIMITED"
        assert logged(caplog, "rate-limit storage answers again") == 2
        # The lock counted in memory during the outage holds until its window passes.
        assert outcome(await attempt(one, during, "guess")) == "RATE_LIMITED"
        assert outcome(await attempt(one, DEMO[0], DEMO[1])) == "signed in"


async def test_health_stays_200_and_tells_that_redis_is_down_while_it_is(
    settings: Settings, redis_server: RedisServer
) -> None:
    async with Api.running(settings) as alone:
        # Limits in memory: there is no Redis to report.
        assert (await alone.client.get("/health")).json() == {"status": "ok"}
    shared = settings.replace(rate_limit_storage_url="async+" + redis_server.url)
    async with Api.running(shared) as api:
        healthy = await api.client.get("/health")
        assert (healthy.status_code, healthy.json()) == (200, {"status": "ok", "redis": "ok"})
        redis_server.stop()
        try:
            degraded = await api.client.get("/health")
            assert (degraded.status_code, degraded.json()) == (200, {"status": "degraded", "redis": "down"})
            assert api.resources.limiter.degraded
            assert outcome(await attempt(api, DEMO[0], DEMO[1])) == "signed in"
        finally:
            redis_server.start()
        # /health asks Redis itself, so it also ends the degraded mode at once.
        back = await api.client.get("/health")
        assert (back.status_code, back.json()) == (200, {"status": "ok", "redis": "ok"})
        assert not api.resources.limiter.degraded


async def test_the_lock_can_be_lifted_once_the_owner_proved_who_they_are(api: Api) -> None:
    # What a completed password reset does for its email.
    for _ in range(6):
        assert outcome(await attempt(api, DEMO[0], "guess")) == INVALID
    assert outcome(await attempt(api, DEMO[0], DEMO[1])) == "RATE_LIMITED"
    resources = api.resources
    await sessions.clear_login_failures(Context(resources, None), DEMO[0].upper())
    assert outcome(await attempt(api, DEMO[0], DEMO[1])) == "signed in"
