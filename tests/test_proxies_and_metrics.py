"""Whose address a request has (X-Forwarded-For only from trusted proxies, checked on a real
`sepulki serve` process), and who may read GET /metrics."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.settings import Settings, SettingsError
from tests.processes import sepulki_serve
from tests.support import ADMIN, LOGIN, Api

SESSIONS = "{ mySessions { ipAddress current } }"
LOGINS = '{ auditLogs(first: 1, filter: {action: "login"}) { edges { node { ipAddress } } } }'


@contextlib.asynccontextmanager
async def sepulki_serve_client(
    database_url: str, tmp: Path, **variables: str
) -> AsyncIterator[httpx.AsyncClient]:
    """`sepulki serve` in its own process on a free loopback port; a client talking to it."""
    async with (
        sepulki_serve(database_url, tmp, **variables) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        yield client


async def graphql(
    client: httpx.AsyncClient,
    query: str,
    *,
    forwarded: str | None = None,
    token: str | None = None,
    **variables: str,
) -> httpx.Response:
    headers = {"x-forwarded-for": forwarded} if forwarded else {}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return await client.post("/graphql", json={"query": query, "variables": variables}, headers=headers)


async def signed_in_from(client: httpx.AsyncClient, forwarded: str) -> tuple[str | None, str | None]:
    """Signs in as the admin claiming `forwarded`; the address its session and audit row got."""
    login = await graphql(client, LOGIN, forwarded=forwarded, email=ADMIN[0], password=ADMIN[1])
    token = login.json()["data"]["login"]["session"]["token"]
    sessions = (await graphql(client, SESSIONS, forwarded=forwarded, token=token)).json()["data"]
    [current] = [s for s in sessions["mySessions"] if s["current"]]
    [audited] = (await graphql(client, LOGINS, forwarded=forwarded, token=token)).json()["data"]["auditLogs"][
        "edges"
    ]
    return current["ipAddress"], audited["node"]["ipAddress"]


async def test_a_forged_forwarded_for_from_loopback_is_ignored_by_default(
    database_url: str, tmp_path: Path
) -> None:
    async with sepulki_serve_client(database_url, tmp_path, request_rate_limit_ip="5/minute") as client:
        # The session and the audit trail keep the socket's address, not the claimed one.
        assert await signed_in_from(client, "203.0.113.9") == ("127.0.0.1", "127.0.0.1")
        # Three requests spent; claiming a new address for each does not buy a new budget.
        statuses = [
            (await graphql(client, "{ __typename }", forwarded=f"198.51.100.{i}")).status_code
            for i in range(1, 4)
        ]
        assert statuses == [200, 200, 429]


async def test_a_configured_proxy_forwards_the_client_address(database_url: str, tmp_path: Path) -> None:
    async with sepulki_serve_client(
        database_url, tmp_path, request_rate_limit_ip="5/minute", trusted_proxies="127.0.0.1"
    ) as client:
        assert await signed_in_from(client, "203.0.113.9") == ("203.0.113.9", "203.0.113.9")
        # Each forwarded client has its budget: other addresses pass while 203.0.113.9 runs out.
        for i in range(1, 6):
            assert (await graphql(client, "{ __typename }", forwarded=f"198.51.100.{i}")).status_code == 200
        spent = [
            (await graphql(client, "{ __typename }", forwarded="203.0.113.9")).status_code for _ in range(3)
        ]
        assert spent == [200, 200, 429]
        # A proxy appends the peer it saw: the rightmost address not of a trusted proxy is the client.
        chained = await graphql(client, "{ __typename }", forwarded="203.0.113.9, 198.51.100.77")
        assert chained.status_code == 200
        # The proxy's own requests count as its address.
        assert (await graphql(client, "{ __typename }")).status_code == 200


def test_trusted_proxies_are_ip_addresses_or_networks() -> None:
    settings = Settings.from_env({"SEPULKI_TRUSTED_PROXIES": " 127.0.0.1, 10.0.0.0/8,,::1 "})
    assert settings.trusted_proxies == ("127.0.0.1/32", "10.0.0.0/8", "::1/128")
    assert Settings.from_env({}).trusted_proxies == ()
    for value in ("*", "proxy.internal", "10.0.0.0/33"):
        with pytest.raises(SettingsError, match="SEPULKI_TRUSTED_PROXIES"):
            Settings.from_env({"SEPULKI_TRUSTED_PROXIES": value})


METRICS_TOKEN = "m3tr1cs-" + "t" * 24  # noqa: S105 - a test value


def production(settings: Settings, **changes: object) -> Settings:
    return settings.replace(env="production", jwt_secret="p" * 40, **changes)


async def test_production_keeps_metrics_private_without_a_token(settings: Settings) -> None:
    async with Api.running(production(settings)) as api:
        for headers in ({}, {"authorization": "Bearer anything-at-all-here"}):
            response = await api.client.get("/metrics", headers=headers)
            assert response.status_code == 404
            assert "sepulki_" not in response.text


async def test_a_metrics_token_admits_only_its_bearer(settings: Settings) -> None:
    async with Api.running(production(settings, metrics_token=METRICS_TOKEN)) as api:
        for authorization in (
            None,
            f"Bearer {METRICS_TOKEN}x",
            f"Basic {METRICS_TOKEN}",
            METRICS_TOKEN,
            "Bearer ",
        ):
            headers = {"authorization": authorization} if authorization else {}
            refused = await api.client.get("/metrics", headers=headers)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == 'Bearer realm="metrics"'
            assert "sepulki_" not in refused.text
        scraped = await api.client.get("/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"})
        assert scraped.status_code == 200
        assert "# TYPE sepulki_ingest_messages_total counter" in scraped.text


async def test_development_serves_metrics_to_anyone(api: Api) -> None:
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE sepulki_ingest_messages_total counter" in response.text


def test_a_short_metrics_token_is_refused_without_being_echoed() -> None:
    with pytest.raises(SettingsError, match="SEPULKI_METRICS_TOKEN") as refused:
        Settings.from_env({"SEPULKI_METRICS_TOKEN": "short-secret"})
    assert "short-secret" not in str(refused.value)
