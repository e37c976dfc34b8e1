"""A smith signs in, is known by their token, and is refused what their role does not allow."""

from __future__ import annotations

import time

import jwt

from tests.support import ADMIN, DEMO, LOGIN, Api

ME = "{ me { id email role permissions } }"
REFRESH = """
mutation($t: String!) {
  refreshToken(refreshToken: $t) { session { token refreshToken } errors { code } }
}
"""


async def test_admin_signs_in_and_is_recognised_by_the_token(api: Api) -> None:
    body = await api.execute(LOGIN, {"email": ADMIN[0], "password": ADMIN[1]}, as_=None)
    login = body["data"]["login"]
    assert login["errors"] is None
    assert login["session"]["role"] == "ADMIN"
    assert len(login["session"]["permissions"]) == 26
    me = await api.data(ME, token=login["session"]["token"])
    assert me["me"]["email"] == ADMIN[0]


async def test_wrong_password_and_unknown_email_get_the_same_answer(api: Api) -> None:
    wrong = await api.execute(LOGIN, {"email": ADMIN[0], "password": "nope"}, as_=None)
    unknown = await api.execute(LOGIN, {"email": "ghost@sepulki.com", "password": "x"}, as_=None)
    assert wrong["data"]["login"]["session"] is None
    assert wrong["data"]["login"]["errors"] == unknown["data"]["login"]["errors"]
    assert wrong["data"]["login"]["errors"][0]["code"] == "UNAUTHENTICATED"


async def test_password_is_stored_as_argon2id(api: Api) -> None:
    stored = await api.services.db.fetchval("SELECT password_hash FROM smiths WHERE email = $1", ADMIN[0])
    assert stored.startswith("$argon2id$")


async def test_protected_query_without_token_is_unauthenticated(api: Api) -> None:
    assert await api.error_codes("{ fleets { id } }", as_=None) == ["UNAUTHENTICATED"]


async def test_missing_permission_is_forbidden(api: Api) -> None:
    smith = await api.create_smith("plain@sepulki.com", "SMITH")
    assert await api.error_codes("{ edicts { id } }", as_=smith) == ["FORBIDDEN"]


async def test_expired_and_forged_tokens_are_rejected(api: Api) -> None:
    settings = api.services.settings
    now = int(time.time())
    expired = jwt.encode(
        {"sub": "00000000-0000-4000-8000-000000000001", "sid": "x", "iat": now - 100, "exp": now - 10},
        settings.jwt_secret,
        algorithm="HS256",
    )
    body = await api.execute("{ fleets { id } }", token=expired, as_=None)
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert "expired" in body["errors"][0]["message"].lower()
    forged = jwt.encode(
        {"sub": "00000000-0000-4000-8000-000000000001", "iat": now, "exp": now + 100},
        "another-secret-of-at-least-32-chars!!",
        algorithm="HS256",
    )
    assert await api.error_codes("{ fleets { id } }", token=forged, as_=None) == ["UNAUTHENTICATED"]
    unsigned = jwt.encode(
        {"sub": "00000000-0000-4000-8000-000000000001", "iat": now, "exp": now + 100}, None, algorithm="none"
    )
    assert await api.error_codes("{ fleets { id } }", token=unsigned, as_=None) == ["UNAUTHENTICATED"]
    mock = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.mock-signature-for-development"
    assert await api.error_codes("{ fleets { id } }", token=mock, as_=None) == ["UNAUTHENTICATED"]


async def test_refresh_rotates_and_logout_revokes(api: Api) -> None:
    body = await api.execute(LOGIN, {"email": DEMO[0], "password": DEMO[1]}, as_=None)
    session = body["data"]["login"]["session"]
    refreshed = await api.execute(
        REFRESH,
        {"t": session["refreshToken"]},
        as_=None,
    )
    new = refreshed["data"]["refreshToken"]["session"]
    assert new["refreshToken"] != session["refreshToken"]
    # The old refresh token was rotated away.
    again = await api.execute(
        REFRESH,
        {"t": session["refreshToken"]},
        as_=None,
    )
    assert again["data"]["refreshToken"]["session"] is None
    assert (await api.data("mutation { logout }", token=new["token"]))["logout"] is True
    assert await api.error_codes(ME, token=new["token"], as_=None) == ["UNAUTHENTICATED"]


async def test_over_smith_holds_every_smith_permission(api: Api) -> None:
    from app.permissions import ROLE_PERMISSIONS, Role

    assert ROLE_PERMISSIONS[Role.SMITH] < ROLE_PERMISSIONS[Role.OVER_SMITH]
    assert ROLE_PERMISSIONS[Role.OVER_SMITH] < ROLE_PERMISSIONS[Role.ADMIN]
