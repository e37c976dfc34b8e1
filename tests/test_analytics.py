"""A fleet manager reads the fleet's performance, a robot's health, battery usage and how the
robots spent their time, on the development seed's week of history; each answer costs the same
few SQL statements however many robots the fleet has."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.seed_ids import ALPHA, BETA, DEV_FLEET, WAREHOUSE_FLEET
from tests.support import DEMO, Api, request_work
from tests.telemetry_support import send

WAREHOUSE_BOT_04 = "70000000-0000-4000-8000-000000000004"
PERFORMANCE = """
query($fleet: ID!, $range: TimeRange!) {
  fleetPerformance(fleetId: $fleet, timeRange: $range) {
    fleetId resolution robotCount samples uptime efficiency averageSpeed
    averageBatteryLevel averageHealthScore
    robots { robotId samples uptime efficiency averageSpeed averageBatteryLevel averageHealthScore }
  }
}
"""
HEALTH = """
query($robot: ID!) {
  robotHealth(robotId: $robot) {
    robotId healthScore trendPerDay daysUntilMaintenanceThreshold maintenanceRecommended
    history { day healthScore minHealthScore }
    factors { name value unit warning }
  }
}
"""
BATTERY = """
query($fleet: ID!) {
  batteryAnalytics(fleetId: $fleet) {
    fleetId averageBatteryLevel averageDrainRatePerHour chargeCyclesLastWeek
    robots { robotId batteryLevel drainRatePerHour chargeRatePerHour chargeCyclesLastWeek hoursToEmpty }
  }
}
"""
UTILIZATION = """
query($fleet: ID!, $range: TimeRange!) {
  utilizationReport(fleetId: $fleet, timeRange: $range) {
    fleetId trackedSeconds working idle charging maintenance error offline
    robots { robotId trackedSeconds working idle charging }
    days { day trackedSeconds working }
  }
}
"""


def last(days: float) -> dict[str, str]:
    end = datetime.now(UTC)
    return {"start": (end - timedelta(days=days)).isoformat(), "end": end.isoformat()}


async def test_fleet_performance_over_the_seeded_week(api: Api) -> None:
    body = await api.data(PERFORMANCE, {"fleet": DEV_FLEET, "range": last(9)}, as_=DEMO)
    perf = body["fleetPerformance"]
    assert perf["fleetId"] == DEV_FLEET and perf["resolution"] == "DAY"
    assert perf["robotCount"] == 2 and {r["robotId"] for r in perf["robots"]} == {ALPHA, BETA}
    # 504 samples of history and 60 of the last hour per robot, none OFFLINE or ERROR.
    assert perf["samples"] == 2 * (504 + 60)
    assert perf["uptime"] == 1.0
    # Half of each 6-hour cycle of the history is WORKING, and ALPHA worked all of the last hour.
    assert 0.45 < perf["efficiency"] < 0.6
    assert perf["averageSpeed"] > 0.3 and 30 < perf["averageBatteryLevel"] < 90
    assert 90 < perf["averageHealthScore"] <= 100


async def test_robot_health_shows_a_falling_trend_and_its_factors(api: Api) -> None:
    health = (await api.data(HEALTH, {"robot": WAREHOUSE_BOT_04}))["robotHealth"]
    assert health["robotId"] == WAREHOUSE_BOT_04 and health["healthScore"] is not None
    days = health["history"]
    assert 7 <= len(days) <= 9
    assert [d["day"] for d in days] == sorted(d["day"] for d in days)
    assert all(d["minHealthScore"] <= d["healthScore"] for d in days)
    # The seed lets robot 4's health fall about 1.2 points a day.
    assert -3 < health["trendPerDay"] < -0.5
    assert health["daysUntilMaintenanceThreshold"] > 0
    factors = {f["name"]: f for f in health["factors"]}
    assert set(factors) == {
        "MOTOR_TEMPERATURE_AVG",
        "MOTOR_TEMPERATURE_MAX",
        "VIBRATION_MAX",
        "BATTERY_MIN",
        "UPTIME",
        "ERROR_EVENTS_7D",
    }
    assert factors["MOTOR_TEMPERATURE_MAX"]["unit"] == "C" and factors["ERROR_EVENTS_7D"]["value"] == 0
    assert isinstance(health["maintenanceRecommended"], bool)


async def test_battery_analytics_report_drain_cycles_and_time_to_empty(api: Api) -> None:
    battery = (await api.data(BATTERY, {"fleet": WAREHOUSE_FLEET}))["batteryAnalytics"]
    robots = battery["robots"]
    assert len(robots) == 2
    for robot in robots:
        # 4.4 points per 20 minutes while discharging: about 13 an hour, hour to hour.
        assert 5 < robot["drainRatePerHour"] < 20
        assert robot["chargeRatePerHour"] > 10
        # A charge every 6 hours over the week, from the status history.
        assert 20 <= robot["chargeCyclesLastWeek"] <= 30
        assert robot["hoursToEmpty"] == robot["batteryLevel"] / robot["drainRatePerHour"]
    assert battery["chargeCyclesLastWeek"] == sum(r["chargeCyclesLastWeek"] for r in robots)


async def test_utilization_report_shares_of_the_status_history(api: Api) -> None:
    report = (await api.data(UTILIZATION, {"fleet": DEV_FLEET, "range": last(7)}))["utilizationReport"]
    shares = [report[s] for s in ("working", "idle", "charging", "maintenance", "error", "offline")]
    assert abs(sum(shares) - 1) < 1e-9
    assert report["working"] > report["idle"] > report["charging"] > 0
    assert report["offline"] == 0 and report["trackedSeconds"] > 2 * 6 * 86400
    assert {r["robotId"] for r in report["robots"]} == {ALPHA, BETA}
    assert 7 <= len(report["days"]) <= 8


async def _seconds(api: Api, robot_id: str) -> dict[str, float]:
    row = await api.resources.db.fetchrow(
        "SELECT sum(maintenance_s) AS maintenance, sum(error_s) AS error FROM robot_utilization_daily "
        "WHERE robot_id = $1 AND day >= $2",
        robot_id,
        (datetime.now(UTC) - timedelta(hours=4)).date(),
    )
    return dict(row)


async def test_utilization_counts_status_changes_made_through_the_api(api: Api) -> None:
    # Given BETA idle (its status rows), then set to MAINTENANCE by an operator and its fleet
    # emergency-stopped, each 3 hours ago (the change rows moved back, as if made then)
    now = datetime.now(UTC)
    update = "mutation($r: ID!) { updateRobotStatus(robotId: $r, status: MAINTENANCE) { status } }"
    assert (await api.data(update, {"r": BETA}))["updateRobotStatus"]["status"] == "MAINTENANCE"
    await api.data("mutation($f: ID!) { emergencyStop(fleetId: $f) { id } }", {"f": WAREHOUSE_FLEET})
    moved = await api.resources.db.execute(
        "UPDATE robot_status_changes SET changed_at = $1 WHERE cause IN ('OPERATOR', 'EMERGENCY_STOP')",
        now - timedelta(hours=3),
    )
    assert moved == "UPDATE 3"  # BETA, and the two robots of the warehouse fleet
    # And BETA reporting ERROR itself an hour ago (a status row, and a REPORTED change row)
    assert await send(
        api, BETA, "status", {"status": "ERROR", "ts": (now - timedelta(hours=1)).isoformat()}
    ) == ["stored"]
    # When the view is refreshed (the worker does it every SEPULKI_UTILIZATION_REFRESH_S)
    await api.components.telemetry.refresh_utilization()
    # Then BETA spent 2 hours in MAINTENANCE, then an hour in ERROR, counted once each
    after = await _seconds(api, BETA)
    assert abs(after["maintenance"] - 2 * 3600) < 60
    assert 3600 - 60 < after["error"] < 3600 + 60
    report = (await api.data(UTILIZATION, {"fleet": DEV_FLEET, "range": last(1)}))["utilizationReport"]
    assert report["maintenance"] > 0 and report["error"] > 0
    # And the emergency stop counts for every robot of the stopped fleet
    stopped = (await api.data(UTILIZATION, {"fleet": WAREHOUSE_FLEET, "range": last(1)}))["utilizationReport"]
    assert stopped["maintenance"] > 0
    for robot in ("70000000-0000-4000-8000-000000000003", WAREHOUSE_BOT_04):
        assert abs((await _seconds(api, robot))["maintenance"] - 3 * 3600) < 60


async def test_analytics_refuse_bad_input(api: Api) -> None:
    now = datetime.now(UTC)
    backwards = {"start": now.isoformat(), "end": (now - timedelta(hours=1)).isoformat()}
    unknown = "40000000-0000-4000-8000-000000000099"
    assert await api.error_codes(PERFORMANCE, {"fleet": DEV_FLEET, "range": backwards}) == ["BAD_USER_INPUT"]
    assert await api.error_codes(UTILIZATION, {"fleet": unknown, "range": last(1)}) == ["NOT_FOUND"]
    assert await api.error_codes(BATTERY, {"fleet": "nope"}) == ["BAD_USER_INPUT"]
    assert await api.error_codes(HEALTH, {"robot": "70000000-0000-4000-8000-000000000099"}) == ["NOT_FOUND"]
    assert await api.error_codes(HEALTH, {"robot": ALPHA}, as_=None) == ["UNAUTHENTICATED"]


async def _grow_fleet(api: Api, robots: int) -> None:
    """Copies of ALPHA in DEV_FLEET, each with ALPHA's telemetry, rolled up."""
    db = api.resources.db
    await db.execute(
        """
        INSERT INTO robots (id, name, sepulka_id, fleet_id, current_ingot_id, status, battery_level,
                            health_score)
        SELECT gen_random_uuid(), 'Copy ' || g, sepulka_id, fleet_id, current_ingot_id, status,
               battery_level, health_score
        FROM robots, generate_series(1, $2) AS g WHERE id = $1
        """,
        ALPHA,
        robots,
    )
    await db.execute(
        """
        INSERT INTO telemetry (robot_id, fleet_id, seq, ts, status, battery_level, health_score, metrics,
                               is_status)
        SELECT r.id, t.fleet_id, t.seq, t.ts, t.status, t.battery_level, t.health_score, t.metrics,
               t.is_status
        FROM telemetry t CROSS JOIN robots r WHERE t.robot_id = $1 AND r.name LIKE 'Copy %'
        """,
        ALPHA,
    )
    await db.execute(
        "INSERT INTO telemetry_rollup_pending SELECT DISTINCT robot_id, date_trunc('minute', ts, 'UTC') "
        "FROM telemetry WHERE NOT is_status ON CONFLICT DO NOTHING"
    )
    await api.components.telemetry.roll_up()
    await api.components.telemetry.refresh_utilization()


async def test_each_analytics_query_is_a_constant_number_of_statements(api: Api) -> None:
    queries: list[tuple[str, str, dict[str, Any]]] = [
        ("fleetPerformance", PERFORMANCE, {"fleet": DEV_FLEET, "range": last(8)}),
        ("batteryAnalytics", BATTERY, {"fleet": DEV_FLEET}),
        ("utilizationReport", UTILIZATION, {"fleet": DEV_FLEET, "range": last(7)}),
        ("robotHealth", HEALTH, {"robot": ALPHA}),
    ]
    await api.token("admin@sepulki.com", "admin123")
    await api.data("{ __typename }")  # sign-in outside the counts

    async def counts() -> dict[str, tuple[int, int]]:
        found = {}
        for name, query, variables in queries:
            with api.count_statements() as statements:
                body = await api.data(query, variables)
            robots = body[name].get("robots")
            found[name] = (len(request_work(statements)), len(robots) if robots is not None else 0)
        return found

    small = await counts()
    await _grow_fleet(api, 20)
    big = await counts()
    for name in small:
        assert small[name][0] == big[name][0], name
    assert big["fleetPerformance"][1] == small["fleetPerformance"][1] + 20
    assert big["batteryAnalytics"][1] == small["batteryAnalytics"][1] + 20
    assert big["utilizationReport"][1] == small["utilizationReport"][1] + 20
