"""An operator charts a fleet's stored telemetry and a robot's recent samples."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.seed_ids import ALPHA, BETA, DEV_FLEET, WAREHOUSE_FLEET
from tests.support import Api

BELLOWS = """
query($fleetId: ID!, $range: TimeRange!) {
  bellows(fleetId: $fleetId, timeRange: $range) {
    fleetId realTime
    metrics { name value unit timestamp robotId batteryLevel healthScore pose }
    events { id robotId type data timestamp message severity }
  }
}
"""
ROBOT_TELEMETRY = """
query($id: ID!, $range: String, $limit: Int) {
  robotTelemetry(robotId: $id, timeRange: $range, limit: $limit) {
    timestamp batteryLevel healthScore status
    performance { speed efficiency uptime }
    metrics { cpu memory temperature }
  }
}
"""


def last(hours: float) -> dict[str, str]:
    end = datetime.now(UTC)
    return {"start": (end - timedelta(hours=hours)).isoformat(), "end": end.isoformat()}


async def test_bellows_returns_stored_metrics_of_the_fleet_robots(api: Api) -> None:
    body = await api.data(BELLOWS, {"fleetId": DEV_FLEET, "range": last(2)})
    stream = body["bellows"]
    assert stream["fleetId"] == DEV_FLEET and stream["realTime"] is False
    metrics = stream["metrics"]
    # one sample a minute for an hour, 7 metrics each, for the 2 robots of the fleet
    assert len(metrics) == 60 * 7 * 2
    assert {m["robotId"] for m in metrics} == {ALPHA, BETA}
    assert {m["name"] for m in metrics} >= {"CPU_USAGE", "MEMORY_USAGE", "VELOCITY", "BATTERY_SOC"}
    cpu = next(m for m in metrics if m["name"] == "CPU_USAGE")
    assert cpu["unit"] == "%" and isinstance(cpu["value"], float)
    assert cpu["healthScore"] in (95.2, 98.1)
    assert cpu["pose"]["position"]["z"] == 0
    assert next(m for m in metrics if m["name"] == "SIGNAL_STRENGTH")["unit"] == "dBm"
    timestamps = [m["timestamp"] for m in metrics]
    assert timestamps == sorted(timestamps, reverse=True)
    assert stream["events"] == []


async def test_bellows_events_and_unknown_metric_units(api: Api) -> None:
    await api.resources.db.execute(
        'UPDATE telemetry SET metrics = metrics || \'{"FORCE": 12.5, "MODE": "auto"}\' WHERE fleet_id = $1',
        WAREHOUSE_FLEET,
    )
    body = await api.data(BELLOWS, {"fleetId": WAREHOUSE_FLEET, "range": last(1.5)})
    [event] = body["bellows"]["events"]
    assert event["type"] == "BATTERY_LOW" and event["severity"] == "WARNING"
    assert event["robotId"] == "70000000-0000-4000-8000-000000000003"
    assert event["data"] == {"batteryLevel": 39.5}
    assert event["message"].startswith("Battery below 40%")
    force = [m for m in body["bellows"]["metrics"] if m["name"] == "FORCE"]
    assert force and force[0]["unit"] is None and force[0]["value"] == 12.5
    # Non-numeric values are not metrics.
    assert not [m for m in body["bellows"]["metrics"] if m["name"] == "MODE"]


async def test_bellows_window_outside_the_data_is_empty(api: Api) -> None:
    start = datetime.now(UTC) - timedelta(days=10)
    window = {"start": start.isoformat(), "end": (start + timedelta(days=1)).isoformat()}
    body = await api.data(BELLOWS, {"fleetId": DEV_FLEET, "range": window})
    assert body["bellows"]["metrics"] == [] and body["bellows"]["events"] == []


async def test_bellows_rejects_bad_windows_unknown_fleets_and_missing_permission(api: Api) -> None:
    now = datetime.now(UTC)
    backwards = {"start": now.isoformat(), "end": (now - timedelta(hours=1)).isoformat()}
    assert await api.error_codes(BELLOWS, {"fleetId": DEV_FLEET, "range": backwards}) == ["BAD_USER_INPUT"]
    too_long = {"start": (now - timedelta(days=32)).isoformat(), "end": now.isoformat()}
    assert await api.error_codes(BELLOWS, {"fleetId": DEV_FLEET, "range": too_long}) == ["BAD_USER_INPUT"]
    unknown = "40000000-0000-4000-8000-000000000099"
    assert await api.error_codes(BELLOWS, {"fleetId": unknown, "range": last(1)}) == ["NOT_FOUND"]
    assert await api.error_codes(BELLOWS, {"fleetId": "f1", "range": last(1)}) == ["BAD_USER_INPUT"]
    smith = await api.create_smith("s@sepulki.com", "SMITH")
    assert await api.error_codes(BELLOWS, {"fleetId": DEV_FLEET, "range": last(1)}, as_=smith) == [
        "FORBIDDEN"
    ]


async def test_robot_telemetry_returns_the_newest_points_first(api: Api) -> None:
    body = await api.data(ROBOT_TELEMETRY, {"id": ALPHA, "range": "1h", "limit": 10})
    points = body["robotTelemetry"]
    assert len(points) == 10
    timestamps = [p["timestamp"] for p in points]
    assert timestamps == sorted(timestamps, reverse=True)
    newest = await api.resources.db.fetchval("SELECT max(ts) FROM telemetry WHERE robot_id = $1", ALPHA)
    assert datetime.fromisoformat(timestamps[0]) == newest
    for point in points:
        assert isinstance(point["metrics"]["cpu"], float)
        assert isinstance(point["metrics"]["memory"], float)
        assert isinstance(point["metrics"]["temperature"], float)
        assert point["status"] == "WORKING"
        assert point["healthScore"] == 95.2
        assert point["performance"]["uptime"] == 1.0
        assert point["performance"]["speed"] > 0
        # Every available sample of the hour is WORKING: efficiency is the WORKING share of those.
        assert point["performance"]["efficiency"] == 1.0


async def test_robot_telemetry_uptime_counts_offline_samples(api: Api) -> None:
    await api.resources.db.execute(
        "UPDATE telemetry SET status = 'OFFLINE' WHERE robot_id = $1 AND seq <= 15", BETA
    )
    body = await api.data(ROBOT_TELEMETRY, {"id": BETA, "range": "24h"})
    points = body["robotTelemetry"]
    assert len(points) == 60
    assert points[0]["performance"]["uptime"] == 0.75
    assert points[0]["performance"]["speed"] == 0
    assert points[-1]["status"] == "OFFLINE"


async def test_robot_telemetry_default_range_and_limit(api: Api) -> None:
    await api.resources.db.execute("DELETE FROM telemetry WHERE robot_id = $1", ALPHA)
    await api.resources.db.execute(
        "INSERT INTO telemetry (robot_id, fleet_id, seq, ts, metrics) "
        "SELECT $1, $2, 1000 + g, now() - g * interval '1 second', '{\"CPU_USAGE\": 1}' "
        "FROM generate_series(1, 150) g",
        ALPHA,
        DEV_FLEET,
    )
    points = (await api.data(ROBOT_TELEMETRY, {"id": ALPHA}))["robotTelemetry"]
    assert len(points) == 100
    assert all(p["metrics"]["cpu"] == 1 and p["metrics"]["memory"] is None for p in points)


async def test_robot_telemetry_rejects_bad_ranges_and_unknown_robots(api: Api) -> None:
    for bad in ("1w", "h", "-1h", "1.5h", "32d", "0m", ""):
        assert await api.error_codes(ROBOT_TELEMETRY, {"id": ALPHA, "range": bad}) == ["BAD_USER_INPUT"], bad
    assert (
        len((await api.data(ROBOT_TELEMETRY, {"id": ALPHA, "range": "31d", "limit": 1}))["robotTelemetry"])
        == 1
    )
    unknown = "70000000-0000-4000-8000-000000000099"
    assert await api.error_codes(ROBOT_TELEMETRY, {"id": unknown}) == ["NOT_FOUND"]
    assert await api.error_codes(ROBOT_TELEMETRY, {"id": "bot"}) == ["BAD_USER_INPUT"]
    assert await api.error_codes(ROBOT_TELEMETRY, {"id": ALPHA, "limit": -5}) == ["BAD_USER_INPUT"]


async def test_telemetry_of_many_windows_is_one_query_per_window_and_kind(api: Api) -> None:
    from app.bellows import events_by_window, metrics_by_window

    pool = api.resources.db
    now = datetime.now(UTC)
    hour = (now - timedelta(hours=1), now)
    day = (now - timedelta(days=1), now)
    keys = [(DEV_FLEET, *hour), (WAREHOUSE_FLEET, *hour), (DEV_FLEET, *day)]
    with api.count_statements() as statements:
        metrics = await metrics_by_window(pool, keys)
        events = await events_by_window(pool, keys)
    assert sum("jsonb_each" in s for s in statements) == 2
    assert sum("robot_events" in s for s in statements) == 2
    assert {m["robot_id"] for m in metrics[0]} == {ALPHA, BETA}
    assert metrics[1] and all(m["robot_id"].endswith(("3", "4")) for m in metrics[1])
    assert len(metrics[2]) >= len(metrics[0])
    assert [len(e) for e in events] == [0, 1, 0]
