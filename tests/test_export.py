"""An operator with EXPORT_TELEMETRY downloads a robot's or a fleet's telemetry as CSV or NDJSON
from the real server; the body streams, its rows counted in a header; others are refused."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from app.settings import Settings
from tests.live import Live, serving
from tests.seed_ids import ALPHA, BETA, DEV_FLEET
from tests.support import DEMO, DEV


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[Live]:
    async with serving(settings) as running:
        yield running


def window(days: float) -> dict[str, str]:
    end = datetime.now(UTC)
    return {"start": (end - timedelta(days=days)).isoformat(), "end": end.isoformat()}


async def test_a_robot_s_week_downloads_as_csv(live: Live) -> None:
    params = {"robotId": ALPHA, **window(9)}
    async with live.api.client.stream(
        "GET", "/export/telemetry", params=params, headers=await live.bearer(DEV)
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        assert response.headers["content-disposition"].startswith('attachment; filename="telemetry-robot-')
        expected = int(response.headers["x-row-count"])
        text = "".join([chunk async for chunk in response.aiter_text()])
    rows = list(csv.DictReader(io.StringIO(text)))
    # The seed's week (504 samples) and last hour (60) of ALPHA; status messages are not samples.
    assert expected == len(rows) == 504 + 60
    assert rows[0].keys() == {
        "ts",
        "robot_id",
        "fleet_id",
        "seq",
        "status",
        "battery_level",
        "health_score",
        "pose",
        "metrics",
    }
    assert {r["robot_id"] for r in rows} == {ALPHA}
    assert [r["ts"] for r in rows] == sorted(r["ts"] for r in rows)
    assert json.loads(rows[-1]["metrics"])["CPU_USAGE"] > 0


async def test_a_fleet_downloads_as_ndjson(live: Live) -> None:
    params = {"fleetId": DEV_FLEET, "format": "ndjson", **window(0.5)}
    response = await live.api.client.get("/export/telemetry", params=params, headers=await live.bearer(DEV))
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert len(lines) == int(response.headers["x-row-count"]) > 0
    assert {line["robot_id"] for line in lines} == {ALPHA, BETA}
    assert all(line["fleet_id"] == DEV_FLEET for line in lines)


async def test_export_needs_a_token_with_export_telemetry_and_good_parameters(live: Live) -> None:
    client: httpx.AsyncClient = live.api.client
    params = {"robotId": ALPHA, **window(1)}
    assert (await client.get("/export/telemetry", params=params)).status_code == 401
    smith = await client.get("/export/telemetry", params=params, headers=await live.bearer(DEMO))
    assert smith.status_code == 403 and smith.json()["code"] == "FORBIDDEN"
    headers = await live.bearer(DEV)
    for bad in (
        {"robotId": ALPHA},
        {"robotId": ALPHA, "fleetId": DEV_FLEET, **window(1)},
        {"robotId": "bot", **window(1)},
        {"robotId": ALPHA, **window(1), "format": "xml"},
        {"robotId": ALPHA, "start": "yesterday", "end": "today"},
        {"robotId": ALPHA, **window(401)},
    ):
        answer = await client.get("/export/telemetry", params=bad, headers=headers)
        assert answer.status_code == 400 and answer.json()["code"] == "BAD_USER_INPUT", bad
    unknown = {"fleetId": "40000000-0000-4000-8000-000000000099", **window(1)}
    assert (await client.get("/export/telemetry", params=unknown, headers=headers)).status_code == 404


async def test_a_client_that_stops_reading_gives_its_connection_back(live: Live, settings: Settings) -> None:
    pool = live.api.resources.db
    params = {"fleetId": DEV_FLEET, **window(9)}
    headers = await live.bearer(DEV)
    for _ in range(settings.db_pool_max + 2):
        async with live.api.client.stream("GET", "/export/telemetry", params=params, headers=headers) as r:
            assert r.status_code == 200
            async for _chunk in r.aiter_bytes():
                break  # hang up after the first chunk
    # Every export's connection went back to the pool: a new export still gets one.
    again = await live.api.client.get("/export/telemetry", params=params, headers=headers)
    assert again.status_code == 200 and pool.get_idle_size() >= 1
