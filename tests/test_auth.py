"""A smith signs in, is known by their token, and is refused what their role does not allow."""

from __future__ import annotations

import time
import warnings
from typing import Any

import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning

from app.settings import DEV_JWT_SECRET, Settings, SettingsError
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
    stored = await api.resources.db.fetchval("SELECT password_hash FROM smiths WHERE email = $1", ADMIN[0])
    assert stored.startswith("$argon2id$")


async def test_protected_query_without_token_is_unauthenticated(api: Api) -> None:
    assert await api.error_codes("{ fleets { id } }", as_=None) == ["UNAUTHENTICATED"]


async def test_missing_permission_is_forbidden(api: Api) -> None:
    smith = await api.create_smith("plain@sepulki.com", "SMITH")
    assert await api.error_codes("{ edicts { id } }", as_=smith) == ["FORBIDDEN"]


async def test_expired_and_forged_tokens_are_rejected(api: Api) -> None:
    settings = api.resources.settings
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
    refreshed = await api.execute(REFRESH, {"t": session["refreshToken"]}, as_=None)
    new = refreshed["data"]["refreshToken"]["session"]
    assert new["refreshToken"] != session["refreshToken"]
    assert (await api.data(ME, token=new["token"]))["me"]["email"] == DEMO[0]
    assert (await api.data("mutation { logout }", token=new["token"]))["logout"] is True
    assert await api.error_codes(ME, token=new["token"], as_=None) == ["UNAUTHENTICATED"]
    after_logout = await api.execute(REFRESH, {"t": new["refreshToken"]}, as_=None)
    assert after_logout["data"]["refreshToken"]["session"] is None


def claims_of(api: Api, token: str) -> dict[str, Any]:
    settings = api.resources.settings
    claims: dict[str, Any] = jwt.decode(token, settings.jwt_secret, algorithms=[settings.jwt_algorithm])
    return claims


async def test_access_token_lives_15_minutes_and_names_its_smith_and_session(api: Api) -> None:
    body = await api.execute(LOGIN, {"email": DEMO[0], "password": DEMO[1]}, as_=None)
    login = body["data"]["login"]
    claims = claims_of(api, login["session"]["token"])
    assert claims["exp"] - claims["iat"] == 15 * 60 == api.resources.settings.access_token_ttl_s
    assert claims["sub"] == login["smith"]["id"]
    stored = await api.resources.db.fetchval("SELECT smith_id FROM sessions WHERE id = $1", claims["sid"])
    assert stored == claims["sub"]
    assert jwt.get_unverified_header(login["session"]["token"])["alg"] == "HS256"


async def test_tokens_signed_otherwise_or_without_a_session_are_refused(api: Api) -> None:
    secret = api.resources.settings.jwt_secret
    genuine = claims_of(api, await api.token(*DEMO))
    assert await api.error_codes(ME, token=jwt.encode(genuine, secret, algorithm="HS256"), as_=None) == []
    # The algorithm is pinned: the right secret under another algorithm does not make a token.
    for algorithm in ("HS384", "HS512"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecureKeyLengthWarning)  # the development secret
            other = jwt.encode(genuine, secret, algorithm=algorithm)
        assert await api.error_codes(ME, token=other, as_=None) == ["UNAUTHENTICATED"]
    unsigned = jwt.encode(genuine, None, algorithm="none")
    assert await api.error_codes(ME, token=unsigned, as_=None) == ["UNAUTHENTICATED"]
    without_session = {k: v for k, v in genuine.items() if k not in {"sid", "sessionId"}}
    token = jwt.encode(without_session, secret, algorithm="HS256")
    assert await api.error_codes(ME, token=token, as_=None) == ["UNAUTHENTICATED"]
    for sid in ("not-a-session", "00000000-0000-4000-8000-00000000dead", 42):
        token = jwt.encode(genuine | {"sid": sid}, secret, algorithm="HS256")
        assert await api.error_codes(ME, token=token, as_=None) == ["UNAUTHENTICATED"]
    without_expiry = {k: v for k, v in genuine.items() if k != "exp"}
    token = jwt.encode(without_expiry, secret, algorithm="HS256")
    assert await api.error_codes(ME, token=token, as_=None) == ["UNAUTHENTICATED"]


def test_production_refuses_the_development_secret() -> None:
    with pytest.raises(SettingsError, match="JWT_SECRET"):
        Settings.from_env({"SEPULKI_ENV": "production"})
    with pytest.raises(SettingsError, match="JWT_SECRET"):
        Settings.from_env({"SEPULKI_ENV": "production", "SEPULKI_JWT_SECRET": DEV_JWT_SECRET})
    with pytest.raises(SettingsError, match="32 characters"):
        Settings.from_env({"SEPULKI_ENV": "production", "SEPULKI_JWT_SECRET": "short"})
    secret = "a-production-secret-of-more-than-32-characters"
    settings = Settings.from_env({"SEPULKI_ENV": "production", "SEPULKI_JWT_SECRET": secret})
    assert settings.production and settings.jwt_secret == secret


async def test_over_smith_holds_every_smith_permission(api: Api) -> None:
    from app.core.permissions import ROLE_PERMISSIONS, Role

    assert ROLE_PERMISSIONS[Role.SMITH] < ROLE_PERMISSIONS[Role.OVER_SMITH]
    assert ROLE_PERMISSIONS[Role.OVER_SMITH] < ROLE_PERMISSIONS[Role.ADMIN]
