"""A smith's sessions: refresh tokens rotate, a replayed one ends its session, logging out or
revoking a session stops its tokens at once and closes its websockets, on every API replica."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from websockets.exceptions import ConnectionClosed

from app import sessions
from app.core.channels import channels
from app.sessions import announce, revoke_smith_sessions
from app.settings import Settings
from tests.live import Live, serving
from tests.seed_ids import ALPHA, DEV_ID
from tests.servers import RedisServer
from tests.support import DEMO, DEV, LOGIN, Api
from tests.test_subscriptions import ROBOT_STATUS
from tests.wsclient import Subscription, connected

ME = "{ me { email } }"
REFRESH = """
mutation($t: String!) {
  refreshToken(refreshToken: $t) { session { token refreshToken } smith { email } errors { code message } }
}
"""
MY_SESSIONS = "{ mySessions { id ipAddress userAgent createdAt lastUsedAt expiresAt current } }"
REVOKE = "mutation($id: ID!) { revokeSession(id: $id) }"


async def sign_in(api: Api, who: tuple[str, str] = DEV) -> dict[str, Any]:
    """A new session: its access token, refresh token and id."""
    body = await api.execute(LOGIN, {"email": who[0], "password": who[1]}, as_=None)
    session: dict[str, Any] = body["data"]["login"]["session"]
    assert session, body
    return session | {"id": session_id(session["token"])}


def session_id(token: str) -> str:
    sid: str = jwt.decode(token, options={"verify_signature": False})["sid"]
    return sid


async def refresh(api: Api, refresh_token: str) -> dict[str, Any]:
    body = await api.execute(REFRESH, {"t": refresh_token}, as_=None)
    assert not body.get("errors"), body
    answer: dict[str, Any] = body["data"]["refreshToken"]
    return answer


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def session_row(api: Api, sid: str) -> dict[str, Any]:
    return dict(await api.resources.db.fetchrow("SELECT * FROM sessions WHERE id = $1", sid))


async def audit_rows(api: Api, action: str) -> list[dict[str, Any]]:
    rows = await api.resources.db.fetch(
        "SELECT smith_id, resource_type, resource_id, changes FROM audit_logs WHERE action = $1 ORDER BY id",
        action,
    )
    return [dict(row) for row in rows]


async def revoked_events(api: Api) -> list[list[str]]:
    rows = await api.resources.db.fetch(
        "SELECT payload FROM event_log WHERE channels @> ARRAY[$1::text] ORDER BY id",
        channels.SESSIONS_REVOKED,
    )
    return [row["payload"]["sessionIds"] for row in rows]


# -- refresh ------------------------------------------------------------------------------


async def test_refresh_rotates_the_token_and_stores_only_hashes(api: Api) -> None:
    first = await sign_in(api)
    stored = await session_row(api, first["id"])
    assert stored["refresh_token_hash"] == sha256(first["refreshToken"]) != first["refreshToken"]
    week = timedelta(seconds=api.resources.settings.refresh_token_ttl_s)
    assert week == timedelta(days=7)
    assert abs(stored["expires_at"] - (datetime.now(UTC) + week)) < timedelta(minutes=1)

    answer = await refresh(api, first["refreshToken"])
    second = answer["session"]
    assert answer["errors"] is None and answer["smith"]["email"] == DEV[0]
    assert second["refreshToken"] != first["refreshToken"]
    assert session_id(second["token"]) == first["id"]
    assert (await api.data(ME, token=second["token"]))["me"]["email"] == DEV[0]
    rotated = await session_row(api, first["id"])
    assert rotated["refresh_token_hash"] == sha256(second["refreshToken"])
    retired = await api.resources.db.fetch("SELECT token_hash, session_id FROM retired_refresh_tokens")
    assert [tuple(row) for row in retired] == [(sha256(first["refreshToken"]), first["id"])]
    [audited] = await audit_rows(api, "refreshToken")
    assert (audited["smith_id"], audited["resource_id"]) == (DEV_ID, first["id"])
    assert first["refreshToken"] not in str(audited) and second["refreshToken"] not in str(audited)


async def test_refresh_lifetime_comes_from_the_settings_and_an_expired_session_cannot_refresh(
    settings: Settings,
) -> None:
    async with Api.running(settings.replace(refresh_token_ttl_s=3600)) as api:
        session = await sign_in(api)
        stored = await session_row(api, session["id"])
        assert abs(stored["expires_at"] - (datetime.now(UTC) + timedelta(hours=1))) < timedelta(minutes=1)
        await api.resources.db.execute(
            "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE id = $1", session["id"]
        )
        answer = await refresh(api, session["refreshToken"])
        assert answer["session"] is None
        assert answer["errors"] == [
            {"code": "UNAUTHENTICATED", "message": "Invalid or expired refresh token"}
        ]
        assert await api.error_codes(ME, token=session["token"], as_=None) == ["UNAUTHENTICATED"]


async def test_a_replayed_refresh_token_ends_its_whole_session(api: Api) -> None:
    stolen = await sign_in(api)
    other = await sign_in(api)
    legit = (await refresh(api, stolen["refreshToken"]))["session"]
    latest = (await refresh(api, legit["refreshToken"]))["session"]

    replayed = await refresh(api, stolen["refreshToken"])
    invalid = await refresh(api, "not-a-token-we-ever-issued")
    assert replayed == invalid
    assert replayed["session"] is None and replayed["errors"][0]["code"] == "UNAUTHENTICATED"

    row = await session_row(api, stolen["id"])
    assert row["revoked_at"] is not None and row["revoked_reason"] == "refresh_token_reuse"
    # Everything of that family stops: the newest refresh token and the access tokens.
    assert (await refresh(api, latest["refreshToken"]))["session"] is None
    assert await api.error_codes(ME, token=latest["token"], as_=None) == ["UNAUTHENTICATED"]
    # The smith's other session is untouched.
    assert (await api.data(ME, token=other["token"]))["me"]["email"] == DEV[0]
    assert (await refresh(api, other["refreshToken"]))["session"] is not None
    reuse = [row for row in await audit_rows(api, "refreshToken") if row["changes"]["outcome"] == "reuse"]
    assert [(r["smith_id"], r["resource_id"]) for r in reuse] == [(DEV_ID, stolen["id"])]
    assert await revoked_events(api) == [[stolen["id"]]]
    # Replaying it once more changes nothing further.
    assert (await refresh(api, stolen["refreshToken"]))["session"] is None
    assert len(await revoked_events(api)) == 1


async def test_two_concurrent_refreshes_with_one_token_count_as_reuse(api: Api) -> None:
    session = await sign_in(api)
    answers = await asyncio.gather(*(refresh(api, session["refreshToken"]) for _ in range(2)))
    winners = [a["session"] for a in answers if a["session"] is not None]
    assert len(winners) == 1
    # The rotation and the reuse check are strict: the second one revoked the session.
    row = await session_row(api, session["id"])
    assert row["revoked_reason"] == "refresh_token_reuse"
    assert (await refresh(api, winners[0]["refreshToken"]))["session"] is None


async def test_a_deactivated_smith_cannot_refresh(api: Api) -> None:
    session = await sign_in(api)
    await api.resources.db.execute("UPDATE smiths SET is_active = false WHERE id = $1", DEV_ID)
    answer = await refresh(api, session["refreshToken"])
    assert answer["session"] is None and answer["errors"][0]["code"] == "UNAUTHENTICATED"
    # Not rotated: the token still is the session's, nothing was retired.
    assert (await session_row(api, session["id"]))["refresh_token_hash"] == sha256(session["refreshToken"])
    assert await api.error_codes(ME, token=session["token"], as_=None) == ["UNAUTHENTICATED"]


# -- logout, mySessions, revokeSession ----------------------------------------------------


async def test_logout_ends_the_session_at_once_and_is_audited(api: Api) -> None:
    session = await sign_in(api)
    other = await sign_in(api)
    assert (await api.data("mutation { logout }", token=session["token"]))["logout"] is True
    assert await api.error_codes(ME, token=session["token"], as_=None) == ["UNAUTHENTICATED"]
    assert (await refresh(api, session["refreshToken"]))["session"] is None
    assert (await api.data(ME, token=other["token"]))["me"]["email"] == DEV[0]
    assert (await session_row(api, session["id"]))["revoked_reason"] == "logout"
    [audited] = await audit_rows(api, "logout")
    assert (audited["smith_id"], audited["resource_type"], audited["resource_id"]) == (
        DEV_ID,
        "SmithSession",
        session["id"],
    )
    assert await revoked_events(api) == [[session["id"]]]
    assert await api.error_codes("mutation { logout }", as_=None) == ["UNAUTHENTICATED"]


async def test_my_sessions_lists_the_live_ones_and_marks_the_current(api: Api) -> None:
    laptop = await sign_in(api)
    phone = await sign_in(api)
    ended = await sign_in(api)
    await api.data("mutation { logout }", token=ended["token"])
    await sign_in(api, DEMO)  # someone else's
    await refresh(api, phone["refreshToken"])  # the phone was used last

    listed = (await api.data(MY_SESSIONS, token=laptop["token"]))["mySessions"]
    assert [s["id"] for s in listed] == [phone["id"], laptop["id"]]
    assert [s["current"] for s in listed] == [False, True]
    assert {s["ipAddress"] for s in listed} == {"127.0.0.1"}
    assert all(s["userAgent"].startswith("python-httpx") for s in listed)
    assert all(s["expiresAt"] > s["lastUsedAt"] >= s["createdAt"] for s in listed)
    assert await api.error_codes(MY_SESSIONS, as_=None) == ["UNAUTHENTICATED"]


async def test_long_ended_sessions_are_pruned_with_their_retired_tokens(api: Api) -> None:
    live = await sign_in(api)
    old_logout = await sign_in(api)
    recent_logout = await sign_in(api)
    long_expired = await sign_in(api)
    await refresh(api, old_logout["refreshToken"])  # leaves a retired token behind
    db = api.resources.db
    await db.execute(
        "UPDATE sessions SET revoked_at = now() - interval '31 days' WHERE id = $1", old_logout["id"]
    )
    await db.execute(
        "UPDATE sessions SET revoked_at = now() - interval '1 day' WHERE id = $1", recent_logout["id"]
    )
    await db.execute(
        "UPDATE sessions SET expires_at = now() - interval '31 days' WHERE id = $1", long_expired["id"]
    )

    assert await sessions.prune(db) == (2, 0)

    remaining = {r["id"] for r in await db.fetch("SELECT id FROM sessions")}
    assert {live["id"], recent_logout["id"]} <= remaining
    assert not {old_logout["id"], long_expired["id"]} & remaining
    assert (
        await db.fetchval(
            "SELECT count(*) FROM retired_refresh_tokens WHERE session_id = $1", old_logout["id"]
        )
        == 0
    )
    assert (await api.data("{ me { id } }", token=live["token"]))["me"]["id"] == DEV_ID


async def test_a_smith_revokes_one_of_their_other_sessions(api: Api) -> None:
    laptop = await sign_in(api)
    lost_phone = await sign_in(api)
    assert (await api.data(REVOKE, {"id": lost_phone["id"]}, token=laptop["token"]))["revokeSession"] is True
    assert await api.error_codes(ME, token=lost_phone["token"], as_=None) == ["UNAUTHENTICATED"]
    assert (await refresh(api, lost_phone["refreshToken"]))["session"] is None
    assert [s["id"] for s in (await api.data(MY_SESSIONS, token=laptop["token"]))["mySessions"]] == [
        laptop["id"]
    ]
    assert (await session_row(api, lost_phone["id"]))["revoked_reason"] == "revoked"
    [audited] = await audit_rows(api, "revokeSession")
    assert (audited["smith_id"], audited["resource_id"]) == (DEV_ID, lost_phone["id"])
    assert await revoked_events(api) == [[lost_phone["id"]]]
    # Revoked already: there is no such live session any more.
    assert await api.error_codes(REVOKE, {"id": lost_phone["id"]}, token=laptop["token"]) == ["NOT_FOUND"]


async def test_sessions_of_other_smiths_cannot_be_revoked(api: Api) -> None:
    mine = await sign_in(api)
    theirs = await sign_in(api, DEMO)
    for ident in (theirs["id"], "00000000-0000-4000-8000-00000000beef"):
        assert await api.error_codes(REVOKE, {"id": ident}, token=mine["token"]) == ["NOT_FOUND"]
    assert await api.error_codes(REVOKE, {"id": "not-an-id"}, token=mine["token"]) == ["BAD_USER_INPUT"]
    assert (await api.data(ME, token=theirs["token"]))["me"]["email"] == DEMO[0]
    assert await api.error_codes(REVOKE, {"id": theirs["id"]}, as_=None) == ["UNAUTHENTICATED"]
    assert await audit_rows(api, "revokeSession") == []


# -- websockets ---------------------------------------------------------------------------


async def until(condition: Callable[[], bool], within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def closed_with(subscription: Subscription, within: float = 10) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as closed:
        await subscription.next(timeout=within)
    assert closed.value.rcvd is not None, "closed without a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def still_open(live: Live, subscription: Subscription) -> None:
    """The subscription still receives what is published."""
    row = await live.row("robots", ALPHA) | {"status": "CHARGING"}
    await live.publish(channels.robot(ALPHA), row)
    assert (await subscription.next())["robotStatus"]["status"] == "CHARGING"


def watching(live: Live, sockets: int) -> Callable[[], bool]:
    channel = channels.robot_status(ALPHA)
    return lambda: live.api.resources.events.subscribers(channel) >= sockets


@pytest.fixture
async def live(settings: Settings) -> Any:
    async with serving(settings) as running:
        yield running


async def test_logout_over_http_closes_every_socket_of_that_session_and_only_those(live: Live) -> None:
    # The process's viewer cache listens for revocations for its whole life; the sockets add one.
    listeners = 1
    await until(lambda: live.api.resources.events.subscribers(channels.SESSIONS_REVOKED) == listeners)
    leaving = await sign_in(live.api)
    staying = await sign_in(live.api)
    variables = {"robotId": ALPHA}
    async with (
        connected(live.ws_url, {"authToken": leaving["token"]}) as tab_one,
        connected(live.ws_url, {"authorization": f"Bearer {leaving['token']}"}) as tab_two,
        connected(live.ws_url, {"authToken": staying["token"]}) as other_device,
        tab_one.subscribe(ROBOT_STATUS, variables) as first,
        tab_two.subscribe(ROBOT_STATUS, variables) as second,
        other_device.subscribe(ROBOT_STATUS, variables) as third,
    ):
        await until(watching(live, 3))
        assert (await live.api.data("mutation { logout }", token=leaving["token"]))["logout"] is True
        assert await closed_with(first) == (4403, "Session revoked")
        assert await closed_with(second) == (4403, "Session revoked")
        await still_open(live, third)
    # With no signed-in socket left, the sockets' listener of revocations stops.
    await until(lambda: live.api.resources.events.subscribers(channels.SESSIONS_REVOKED) == listeners)


async def test_revocations_from_password_change_revoke_session_and_token_reuse_close_sockets(
    live: Live,
) -> None:
    current, stale, lost, replayed = [await sign_in(live.api) for _ in range(4)]
    variables = {"robotId": ALPHA}
    async with (
        connected(live.ws_url, {"authToken": current["token"]}) as a,
        connected(live.ws_url, {"authToken": stale["token"]}) as b,
        connected(live.ws_url, {"authToken": lost["token"]}) as c,
        connected(live.ws_url, {"authToken": replayed["token"]}) as d,
        a.subscribe(ROBOT_STATUS, variables) as kept,
        b.subscribe(ROBOT_STATUS, variables) as by_password,
        c.subscribe(ROBOT_STATUS, variables) as by_revoke,
        d.subscribe(ROBOT_STATUS, variables) as by_reuse,
    ):
        await until(watching(live, 4))
        # revokeSession from the current session.
        await live.api.data(REVOKE, {"id": lost["id"]}, token=current["token"])
        assert await closed_with(by_revoke) == (4403, "Session revoked")
        # A refresh token presented twice.
        await refresh(live.api, replayed["refreshToken"])
        await refresh(live.api, replayed["refreshToken"])
        assert await closed_with(by_reuse) == (4403, "Session revoked")
        # What changePassword does: every other session ends, in the caller's transaction.
        resources = live.api.resources
        async with resources.db.acquire() as conn, conn.transaction():
            revoked = await revoke_smith_sessions(conn, DEV_ID, reason="password_changed", keep=current["id"])
        await announce(resources.events, revoked)
        assert await closed_with(by_password) == (4403, "Session revoked")
        await still_open(live, kept)
    assert (await session_row(live.api, stale["id"]))["revoked_reason"] == "password_changed"


@pytest.fixture
def redis_settings(settings: Settings, redis_server: RedisServer) -> Settings:
    # Limiter counts stay per process: the Redis server outlives this test.
    return settings.replace(broadcast_url=redis_server.url, rate_limit_storage_url="async+memory://")


async def test_a_logout_on_another_replica_closes_the_sockets_here(redis_settings: Settings) -> None:
    async with serving(redis_settings) as here, serving(redis_settings) as there:
        session = await sign_in(here.api)
        async with (
            connected(here.ws_url, {"authToken": session["token"]}) as socket,
            socket.subscribe(ROBOT_STATUS, {"robotId": ALPHA}) as updates,
        ):
            await until(watching(here, 1))
            assert (await there.api.data("mutation { logout }", token=session["token"]))["logout"] is True
            assert await closed_with(updates) == (4403, "Session revoked")


async def test_a_session_revoked_unannounced_during_a_redis_outage_closes_its_sockets_once_redis_is_back(
    redis_settings: Settings, redis_server: RedisServer
) -> None:
    async with serving(redis_settings) as live:
        session = await sign_in(live.api)
        async with (
            connected(live.ws_url, {"authToken": session["token"]}) as socket,
            socket.subscribe(ROBOT_STATUS, {"robotId": ALPHA}) as updates,
        ):
            await until(watching(live, 1))
            redis_server.stop()
            try:
                # Whatever was published meanwhile may be lost: the sessions are checked at BACK.
                await live.api.resources.db.execute(
                    "UPDATE sessions SET revoked_at = now(), revoked_reason = 'deactivated' WHERE id = $1",
                    session["id"],
                )
            finally:
                redis_server.start()
            assert await closed_with(updates, within=20) == (4403, "Session revoked")
