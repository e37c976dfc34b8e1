"""Robots breach edicts; operators see the breach live, work the alert, and it resolves by itself.

Telemetry goes through the app's real ingest pipeline; the evaluator, PostgreSQL, the event bus,
the mail server (SMTP sink), the webhook receiver (a local HTTP server) and the websockets are
the real ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app import webhooks
from app.settings import Settings
from tests.alerting import (
    ALERTS,
    DEACTIVATE,
    Robot,
    battery_rules,
    edict,
    fast,
    receiving,
    rows,
    settled,
)
from tests.live import Live, serving
from tests.mailsink import SmtpSink
from tests.seed_ids import ALPHA, BATTERY_EDICT, BETA, DEV_FLEET, DEV_ID, SPEED_EDICT, WAREHOUSE_FLEET
from tests.support import ADMIN, DEV, Api, eventually
from tests.wsclient import connected

BREACHES = """
subscription($fleetId: ID, $after: String) {
  policyBreaches(fleetId: $fleetId, after: $after) {
    id edictId robotId fleetId severity message alertId eventId commands { type state }
  }
}
"""
ALERT_UPDATES = """
subscription($fleetId: ID, $after: String) {
  alertUpdates(fleetId: $fleetId, after: $after) { id state occurrences eventId }
}
"""
ACKNOWLEDGE = (
    "mutation($id: ID!) { acknowledgeAlert(id: $id) { id state acknowledgedBy acknowledger { id name } } }"
)
RESOLVE = """
mutation($id: ID!, $note: String) {
  resolveAlert(id: $id, note: $note) { id state resolutionNote resolver { id } }
}
"""
PREFERENCES = """
mutation($input: NotificationPreferencesInput!) {
  updateNotificationPreferences(input: $input) { severities channels fleets }
}
"""
ADD_WEBHOOK = "mutation($input: WebhookInput!) { addWebhook(input: $input) { secret webhook { id } } }"


@pytest.fixture
async def live(settings: Settings, smtp_sink: SmtpSink) -> AsyncIterator[Live]:
    async with serving(fast(settings, smtp_url=smtp_sink.url)) as running:
        yield running


async def alerts_of(api: Api, edict_id: str) -> list[dict]:
    return await rows(api, "SELECT * FROM alerts WHERE edict_id = $1 ORDER BY created_at", edict_id)


async def test_low_battery_opens_one_alert_despite_jitter_and_resolves_when_charged(
    live: Live, smtp_sink: SmtpSink
) -> None:
    api = live.api
    # The on-call smith wants mail too; the fleet's webhook receiver is registered by an admin.
    await api.data(PREFERENCES, {"input": {"channels": ["IN_APP", "EMAIL"]}}, as_=DEV)
    async with receiving() as receiver:
        added = (await api.data(ADD_WEBHOOK, {"input": {"url": receiver.url}}, as_=ADMIN))["addWebhook"]
        await api.data(DEACTIVATE, {"id": BATTERY_EDICT}, as_=ADMIN)
        rules = battery_rules(20, hysteresis=5, debounce={"samples": 2})
        low = await edict(api, "Battery low (on call)", rules, appliesTo={"fleets": [DEV_FLEET]})
        robot = Robot(api, ALPHA)
        init = await live.bearer(DEV)
        async with connected(live.ws_url, init) as socket:
            async with socket.subscribe(BREACHES, {"fleetId": DEV_FLEET}) as breaches:
                await eventually(
                    lambda: _listening(live, f"breaches:{DEV_FLEET}"), what="breach subscriber registered"
                )
                # Battery drains, jittering around the threshold: a single dip is debounced, two
                # in a row breach, and the jitter after that stays within the hysteresis (25).
                await robot.battery(35, 24, 19.5, 21, 19, 18.5, 21, 19.2, 22, 18)
                breach = (await breaches.next())["policyBreaches"]
        assert breach["edictId"] == low and breach["robotId"] == ALPHA and breach["fleetId"] == DEV_FLEET
        assert breach["severity"] == "WARNING" and "battery_level 18.5" in breach["message"]
        assert breach["eventId"] is not None and breach["commands"] == []
        assert await settled(api, "SELECT count(*) FROM policy_violations WHERE edict_id = $1", low) == 1
        (alert,) = await alerts_of(api, low)
        assert (alert["state"], alert["occurrences"], alert["id"]) == ("OPEN", 1, breach["alertId"])

        # The operator takes it on.
        acked = (await api.data(ACKNOWLEDGE, {"id": alert["id"]}, as_=DEV))["acknowledgeAlert"]
        assert acked["state"] == "ACKNOWLEDGED" and acked["acknowledgedBy"] == DEV_ID
        assert acked["acknowledger"]["id"] == DEV_ID
        assert await api.error_codes(ACKNOWLEDGE, {"id": alert["id"]}, as_=DEV) == ["CONFLICT"]

        # Charging: 23 is still within the hysteresis (20 + 5), 26 clears it.
        await robot.battery(23, 24.5)
        assert (await settled(api, "SELECT state FROM alerts WHERE id = $1", alert["id"])) == "ACKNOWLEDGED"
        await robot.battery(26, 40)
        resolved = await eventually(
            lambda: api.resources.db.fetchrow(
                "SELECT * FROM alerts WHERE id = $1 AND state = 'RESOLVED'", alert["id"]
            ),
            what="alert resolved by itself",
        )
        assert resolved["resolution_note"] == "condition cleared" and resolved["resolved_by"] is None
        assert await api.resources.db.fetchval(
            "SELECT resolved FROM policy_violations WHERE alert_id = $1", alert["id"]
        )

        # One mail to the on-call smith; the webhook is told of the opening, the
        # acknowledgement and the resolution, each call signed.
        mail = await smtp_sink.wait_for(DEV[0])
        assert "Battery low (on call)" in str(mail["Subject"]) and ALPHA in mail.get_content()
        await eventually(lambda: _has(receiver.calls, 3), what="three webhook calls")
        await settled(api, "SELECT count(*) FROM notification_deliveries WHERE state = 'DELIVERED'")
    assert len(smtp_sink.to(DEV[0])) == 1
    assert len(receiver.calls) == 3
    for call in receiver.calls:
        assert webhooks.verify(added["secret"], call.body, call.headers["x-sepulki-signature"])
        assert not webhooks.verify("whsec_other", call.body, call.headers["x-sepulki-signature"])
    told = sorted((b["event"], b["alert"]["id"], b["alert"]["state"]) for b in receiver.bodies())
    assert told == [
        ("alert.acknowledged", alert["id"], "ACKNOWLEDGED"),
        ("alert.opened", alert["id"], "OPEN"),
        ("alert.resolved", alert["id"], "RESOLVED"),
    ]
    assert sorted(c.headers["x-sepulki-event"] for c in receiver.calls) == [t[0] for t in told]


async def _listening(live: Live, channel: str) -> bool:
    return live.api.resources.events.subscribers(channel) > 0


async def _has(items: list, count: int) -> bool:
    return len(items) >= count


async def test_speeding_robot_is_throttled_through_the_command_outbox(live: Live) -> None:
    api = live.api
    robot = Robot(api, BETA)
    await robot.send(metrics={"VELOCITY": 1.2})
    await robot.send(metrics={"VELOCITY": 3.4})
    (violation,) = await eventually(
        lambda: rows(api, "SELECT * FROM policy_violations WHERE edict_id = $1", SPEED_EDICT),
        what="speed breach recorded",
    )
    (command,) = await rows(
        api, "SELECT * FROM robot_commands WHERE id = ANY($1::uuid[])", violation["command_ids"]
    )
    assert (command["type"], command["robot_id"], command["params"]["maxSpeed"]) == ("THROTTLE", BETA, 2.0)
    assert command["params"]["violationId"] == violation["id"]
    body = await api.data(ALERTS, {"filter": {"robotId": BETA, "severity": "CRITICAL"}}, as_=DEV)
    (edge,) = body["alerts"]["edges"]
    node = edge["node"]
    assert node["edict"]["name"] == "Maximum Speed Limit" and node["state"] == "OPEN"
    (linked,) = node["breaches"]
    assert linked["commands"] == [{"id": command["id"], "type": "THROTTLE", "state": command["state"]}]


async def test_emergency_stop_edict_stops_the_robot(live: Live) -> None:
    api = live.api
    rules = {
        "condition": {
            "type": "metric",
            "operator": "AND",
            "rules": [{"metric": "FORCE", "op": "gt", "value": 150}],
        },
        "actions": [{"type": "EMERGENCY_STOP", "parameters": {"reason": "force"}, "immediate": True}],
    }
    force = await edict(api, "Force stop", rules, severity="CRITICAL", appliesTo={"robots": [ALPHA]})
    await Robot(api, ALPHA).send(metrics={"FORCE": 180.0})
    (violation,) = await eventually(
        lambda: rows(api, "SELECT * FROM policy_violations WHERE edict_id = $1", force), what="force breach"
    )
    (command,) = await rows(
        api, "SELECT * FROM robot_commands WHERE id = ANY($1::uuid[])", violation["command_ids"]
    )
    assert command["type"] == "EMERGENCY_STOP" and command["robot_id"] == ALPHA


async def test_a_flapping_robot_counts_repeats_on_one_alert_and_an_operator_resolves_it(live: Live) -> None:
    api = live.api
    rules = battery_rules(20, cooldownSeconds=600)
    flappy = await edict(api, "Battery low", rules, appliesTo={"robots": [ALPHA]})
    # Recovers and drops again twice within the cooldown: repeats of one alert, not new ones.
    await Robot(api, ALPHA).battery(15, 30, 12, 35, 11)
    await eventually(
        lambda: api.resources.db.fetchval(
            "SELECT occurrences = 3 FROM alerts WHERE edict_id = $1 AND state = 'OPEN'", flappy
        ),
        what="three occurrences on one open alert",
    )
    (alert,) = await alerts_of(api, flappy)
    assert (
        await api.resources.db.fetchval(
            "SELECT count(*) FROM policy_violations WHERE alert_id = $1", alert["id"]
        )
        == 3
    )
    assert (
        await api.resources.db.fetchval(
            "SELECT count(*) FROM notifications WHERE alert_id = $1 AND smith_id = $2", alert["id"], DEV_ID
        )
        == 1
    )
    body = await api.data(RESOLVE, {"id": alert["id"], "note": "battery swapped"}, as_=DEV)
    assert body["resolveAlert"] == {
        "id": alert["id"],
        "state": "RESOLVED",
        "resolutionNote": "battery swapped",
        "resolver": {"id": DEV_ID},
    }
    assert await api.error_codes(RESOLVE, {"id": alert["id"]}, as_=DEV) == ["CONFLICT"]
    unknown = "a0000000-0000-4000-8000-000000000099"
    assert await api.error_codes(RESOLVE, {"id": unknown}, as_=DEV) == ["NOT_FOUND"]
    assert await api.error_codes(ACKNOWLEDGE, {"id": "nope"}, as_=DEV) == ["BAD_USER_INPUT"]
    smith = await api.create_smith("floor@sepulki.com", "SMITH")
    assert await api.error_codes(RESOLVE, {"id": alert["id"]}, as_=smith) == ["FORBIDDEN"]
    assert (
        await api.resources.db.fetchval(
            "SELECT count(*) FROM audit_logs WHERE action = 'resolveAlert' AND resource_id = $1", alert["id"]
        )
        == 1
    )


async def test_breaches_and_alert_updates_resume_after_a_disconnect(live: Live) -> None:
    api = live.api
    await api.data(DEACTIVATE, {"id": BATTERY_EDICT}, as_=ADMIN)  # only this story's edict speaks
    low = await edict(api, "Battery low", battery_rules(20), appliesTo={"robots": [ALPHA]})
    robot = Robot(api, ALPHA)
    init = await live.bearer(DEV)
    async with connected(live.ws_url, init) as socket:
        async with socket.subscribe(BREACHES) as breaches, socket.subscribe(ALERT_UPDATES) as updates:
            await eventually(lambda: _listening(live, "alerts:*"), what="alert subscriber")
            await eventually(lambda: _listening(live, "breaches"), what="breach subscriber")
            await robot.battery(10)
            first = (await breaches.next())["policyBreaches"]
            opened = (await updates.next())["alertUpdates"]
    assert opened["state"] == "OPEN"
    # While nobody listens: the robot recovers (resolved) and drops again (a new breach).
    await robot.battery(50, 5)
    await eventually(
        lambda: api.resources.db.fetchval(
            "SELECT count(*) = 2 FROM policy_violations WHERE edict_id = $1", low
        ),
        what="second breach",
    )
    async with connected(live.ws_url, init) as socket:
        async with socket.subscribe(BREACHES, {"after": first["eventId"]}) as breaches:
            missed = (await breaches.next())["policyBreaches"]
        async with socket.subscribe(ALERT_UPDATES, {"after": opened["eventId"]}) as updates:
            states = [(await updates.next())["alertUpdates"]["state"] for _ in range(2)]
    assert missed["id"] != first["id"] and missed["edictId"] == low
    assert states == ["RESOLVED", "OPEN"]


async def test_alerts_page_and_filter_with_a_constant_number_of_statements(api_fast: Api) -> None:
    api = api_fast
    low = await edict(api, "Battery low", battery_rules(20))
    for robot_id in (ALPHA, BETA):
        await Robot(api, robot_id).battery(10)
    await eventually(
        lambda: api.resources.db.fetchval("SELECT count(*) = 2 FROM alerts WHERE edict_id = $1", low),
        what="two alerts",
    )
    with api.count_statements() as one_page:
        page = (await api.data(ALERTS, {"first": 1}, as_=DEV))["alerts"]
    assert page["pageInfo"]["hasNextPage"] is True
    rest = (await api.data(ALERTS, {"after": page["pageInfo"]["endCursor"]}, as_=DEV))["alerts"]
    everything = page["edges"] + rest["edges"]
    assert len(everything) >= 2 and len({e["node"]["id"] for e in everything}) == len(everything)
    with api.count_statements() as all_rows:
        await api.data(ALERTS, {"first": 50}, as_=DEV)
    assert len(_ours(all_rows)) == len(_ours(one_page)) <= 4
    dev_only = (await api.data(ALERTS, {"filter": {"fleetId": DEV_FLEET, "state": "OPEN"}}, as_=DEV))[
        "alerts"
    ]
    assert {e["node"]["robotId"] for e in dev_only["edges"]} == {ALPHA, BETA}
    none = (await api.data(ALERTS, {"filter": {"fleetId": WAREHOUSE_FLEET}}, as_=DEV))["alerts"]
    assert none["edges"] == []
    assert await api.error_codes(ALERTS, {"after": "not-a-cursor"}, as_=DEV) == ["BAD_USER_INPUT"]
    assert await api.error_codes(ALERTS, {"first": 0}, as_=DEV) == ["BAD_USER_INPUT"]


def _ours(statements: list[str]) -> list[str]:
    """The page's statements (background components run their own meanwhile)."""
    return [s for s in statements if any(t in s for t in ("alerts", "policy_violations", "edicts WHERE id"))]


@pytest.fixture
async def api_fast(settings: Settings) -> AsyncIterator[Api]:
    async with Api.running(fast(settings)) as running:
        yield running
