"""Every kind of rule on live telemetry: rate of change, silence, anomalies, per-robot thresholds,
and rule state that outlives the process evaluating it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from app.settings import Settings
from tests.alerting import DEACTIVATE, Robot, battery_rules, edict, fast, rows, settled
from tests.seed_ids import ALPHA, BATTERY_EDICT, BETA
from tests.support import ADMIN, Api, eventually


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    async with Api.running(fast(settings)) as running:
        await running.data(DEACTIVATE, {"id": BATTERY_EDICT}, as_=ADMIN)
        yield running


def one(rule: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "condition": {"type": "metric", "operator": "AND", "rules": [rule]},
        "actions": [{"type": "ALERT"}],
    } | extra


async def breaches(api: Api, edict_id: str) -> list[dict[str, Any]]:
    return await rows(
        api, "SELECT * FROM policy_violations WHERE edict_id = $1 ORDER BY created_at", edict_id
    )


async def test_a_motor_heating_too_fast_breaches_a_rate_of_change_rule(api: Api) -> None:
    heating = await edict(
        api, "Motor heats fast", one({"kind": "rate", "metric": "MOTOR_TEMPERATURE", "op": "gt", "value": 2})
    )
    robot = Robot(api, ALPHA)
    # +1 degree per second is fine however hot it gets; +5 per second is not.
    for temperature in (40, 41, 42, 43, 48):
        await robot.send(metrics={"MOTOR_TEMPERATURE": temperature})
    (breach,) = await eventually(lambda: breaches(api, heating), what="rate breach")
    assert breach["data"]["values"]["MOTOR_TEMPERATURE"] == pytest.approx(5.0)
    assert "MOTOR_TEMPERATURE rate 5" in breach["message"]


async def test_a_robot_that_falls_silent_breaches_a_missing_data_rule_until_it_reports(api: Api) -> None:
    silent = await edict(
        api, "Silent robot", one({"kind": "missing", "seconds": 60}), appliesTo={"robots": [BETA]}
    )
    await api.resources.db.execute(
        "UPDATE robots SET last_seen = now() - interval '5 minutes' WHERE id = $1", BETA
    )
    (breach,) = await eventually(lambda: breaches(api, silent), what="silence noticed")
    assert breach["robot_id"] == BETA and "no telemetry for 60 s" in breach["message"]
    # Checked again and again while silent: still one breach.
    assert await settled(api, "SELECT count(*) FROM policy_violations WHERE edict_id = $1", silent) == 1
    await Robot(api, BETA).send(batteryLevel=80)
    await eventually(
        lambda: api.resources.db.fetchval(
            "SELECT state = 'RESOLVED' FROM alerts WHERE edict_id = $1", silent
        ),
        what="resolved once it reports",
    )


async def test_anomalies_are_graded_by_their_z_score_tier(api: Api) -> None:
    tiers = [{"z": 4, "severity": "WARNING"}, {"z": 12, "severity": "CRITICAL"}]
    rule = {"kind": "anomaly", "metric": "VIBRATION", "alpha": 0.2, "minSamples": 10, "tiers": tiers}
    shaky = await edict(api, "Vibration anomaly", one(rule), appliesTo={"robots": [ALPHA]})
    robot = Robot(api, ALPHA)
    for i in range(30):
        await robot.send(metrics={"VIBRATION": 1.0 + (0.05 if i % 2 else -0.05)})
    assert await settled(api, "SELECT count(*) FROM policy_violations WHERE edict_id = $1", shaky) == 0
    await robot.send(metrics={"VIBRATION": 5.0})
    (breach,) = await eventually(lambda: breaches(api, shaky), what="anomaly")
    assert breach["severity"] == "CRITICAL"
    (state,) = await rows(api, "SELECT state FROM edict_rule_state WHERE edict_id = $1", shaky)
    assert state["state"]["ewma"]["VIBRATION"][2] == 31  # the baseline is kept per robot


async def test_a_per_robot_override_moves_one_robots_threshold(api: Api) -> None:
    rules = one({"metric": "battery_level", "op": "lt", "value": 20, "overrides": {BETA: 50}})
    low = await edict(api, "Battery low", rules, appliesTo={"robots": [ALPHA, BETA]})
    await Robot(api, ALPHA).battery(40)
    await Robot(api, BETA).battery(40)
    (breach,) = await eventually(lambda: breaches(api, low), what="override breach")
    assert breach["robot_id"] == BETA
    assert await settled(api, "SELECT count(*) FROM policy_violations WHERE edict_id = $1", low) == 1


async def test_rule_state_survives_a_restart_of_the_evaluating_process(settings: Settings) -> None:
    rules = battery_rules(20, debounce={"samples": 3})
    async with Api.running(fast(settings)) as first:
        await first.data(DEACTIVATE, {"id": BATTERY_EDICT}, as_=ADMIN)
        low = await edict(first, "Battery low", rules, appliesTo={"robots": [ALPHA]})
        robot = Robot(first, ALPHA)
        await robot.battery(15, 14)
        await eventually(
            lambda: first.resources.db.fetchval(
                "SELECT state->>'n' = '2' FROM edict_rule_state WHERE edict_id = $1", low
            ),
            what="two of three samples counted",
        )
    async with Api.running(fast(settings)) as second:
        robot.api = second
        await robot.battery(13)
        (breach,) = await eventually(lambda: breaches(second, low), what="third sample breaches")
        assert "battery_level 13" in breach["message"]


async def test_two_ingest_workers_sharing_a_robots_samples_count_them_in_one_state(
    settings: Settings,
) -> None:
    # MQTT shared subscriptions spread one robot's messages over the ingest workers: the debounce
    # must count the samples of both, and the breach happen once.
    rules = battery_rules(20, debounce={"samples": 3})
    async with Api.running(fast(settings)) as one, Api.running(fast(settings)) as other:
        await one.data(DEACTIVATE, {"id": BATTERY_EDICT}, as_=ADMIN)
        low = await edict(one, "Battery low", rules, appliesTo={"robots": [ALPHA]})
        robot = Robot(one, ALPHA)
        await robot.battery(15)
        robot.api = other
        await robot.battery(14)
        counted = "SELECT state->>'n' FROM edict_rule_state WHERE edict_id = $1 AND robot_id = $2"
        assert await settled(one, counted, low, ALPHA) == "2"
        assert await breaches(one, low) == []
        # The third sample below, and more, through both at once.
        robot.api = one
        also = Robot(other, ALPHA)
        also.clock = robot.clock + timedelta(milliseconds=500)
        await asyncio.gather(robot.battery(13, 11), also.battery(12, 10))
        (breach,) = await eventually(lambda: breaches(one, low), what="the third sample breaches")
        assert await settled(one, "SELECT count(*) FROM policy_violations WHERE edict_id = $1", low) == 1
        alerts = await rows(one, "SELECT state, occurrences FROM alerts WHERE edict_id = $1", low)
        assert alerts == [{"state": "OPEN", "occurrences": 1}]
        assert breach["robot_id"] == ALPHA
