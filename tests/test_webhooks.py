"""Admins register webhook endpoints; alerts reach them as signed POSTs, retried with backoff,
logged, and an endpoint that keeps failing is disabled. A worker killed mid-delivery loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app import webhooks
from app.settings import Settings
from tests.alerting import DEACTIVATE, FAST, Robot, battery_rules, edict, fast, receiving
from tests.seed_ids import ALPHA, BATTERY_EDICT, BETA, WAREHOUSE_FLEET
from tests.support import ADMIN, DEV, ROOT, Api, eventually

ADD = "mutation($input: WebhookInput!) { addWebhook(input: $input) { secret webhook { id url active } } }"
UPDATE = """
mutation($id: ID!, $input: WebhookUpdate!) {
  updateWebhook(id: $id, input: $input) { id active consecutiveFailures disabledAt }
}
"""
REMOVE = "mutation($id: ID!) { removeWebhook(id: $id) }"
HOOKS = "query { webhooks { id url active consecutiveFailures severities fleets } }"
LOG = """
query($filter: DeliveryFilter) {
  notificationDeliveries(filter: $filter) {
    edges { node { id channel webhookId state attempts lastStatus lastError
                   attemptLog { attempt status error durationMs } } }
  }
}
"""


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    async with Api.running(fast(settings, webhook_disable_after=3, notify_max_attempts=5)) as running:
        await running.data(DEACTIVATE, {"id": BATTERY_EDICT}, as_=ADMIN)
        yield running


async def test_only_admins_manage_webhooks_and_a_bad_url_is_refused(api: Api) -> None:
    added = (await api.data(ADD, {"input": {"url": "https://hooks.example.com/x"}}))["addWebhook"]
    assert added["secret"].startswith("whsec_") and added["webhook"]["active"] is True
    (hook,) = (await api.data(HOOKS))["webhooks"]
    assert hook["severities"] == ["INFO", "WARNING", "CRITICAL"] and "secret" not in hook
    for url in ("ftp://hooks.example.com", "not a url", "http://"):
        error = (await api.execute(ADD, {"input": {"url": url}}))["errors"][0]
        assert (error["extensions"]["code"], error["extensions"]["field"]) == ("BAD_USER_INPUT", "url")
    assert await api.error_codes(ADD, {"input": {"url": "https://a.example"}}, as_=DEV) == ["FORBIDDEN"]
    assert await api.error_codes(HOOKS, as_=DEV) == ["FORBIDDEN"]
    assert (await api.data(REMOVE, {"id": hook["id"]}))["removeWebhook"] == hook["id"]
    assert await api.error_codes(REMOVE, {"id": hook["id"]}) == ["NOT_FOUND"]
    assert await api.resources.db.fetchval("SELECT count(*) FROM audit_logs WHERE action = 'addWebhook'") == 1


async def test_a_failing_endpoint_is_retried_with_backoff_then_disabled_and_enabled_again(api: Api) -> None:
    async with receiving(statuses=[500, 502, 503]) as receiver:
        added = (await api.data(ADD, {"input": {"url": receiver.url}}))["addWebhook"]
        hook_id = added["webhook"]["id"]
        await edict(api, "Battery low", battery_rules(20), appliesTo={"robots": [ALPHA]})
        await Robot(api, ALPHA).battery(10)
        await eventually(lambda: _disabled(api, hook_id), within=10, what="endpoint disabled")
        (delivery,) = (await api.data(LOG, {"filter": {"webhookId": hook_id}}))["notificationDeliveries"][
            "edges"
        ]
        node = delivery["node"]
        # Three failures in a row disabled the endpoint; the call waits for it, PENDING.
        assert (node["state"], node["attempts"], node["lastStatus"]) == ("PENDING", 3, 503)
        assert [a["status"] for a in node["attemptLog"]] == [500, 502, 503]
        assert node["lastError"] == "HTTP 503"
        waits = await api.resources.db.fetchrow(
            "SELECT d.next_attempt_at - max(a.at) AS next_wait FROM notification_deliveries d "
            "JOIN notification_attempts a ON a.delivery_id = d.id WHERE d.id = $1 GROUP BY d.id",
            node["id"],
        )
        assert waits["next_wait"].total_seconds() >= 0.35  # 0.1 s doubled twice
        # Every retry is the same delivery, signed anew.
        assert {c.headers["x-sepulki-delivery"] for c in receiver.calls} == {node["id"]}
        # While disabled, a new alert queues nothing for it.
        await edict(api, "Battery low beta", battery_rules(60), appliesTo={"robots": [BETA]})
        await Robot(api, BETA).battery(40)
        await eventually(
            lambda: api.resources.db.fetchval("SELECT count(*) = 2 FROM alerts WHERE state = 'OPEN'"),
            what="second alert",
        )
        await asyncio.sleep(0.5)
        assert len(receiver.calls) == 3
        assert await api.resources.db.fetchval("SELECT count(*) FROM notification_deliveries") == 1
        enabled = (await api.data(UPDATE, {"id": hook_id, "input": {"active": True}}))["updateWebhook"]
        assert enabled["active"] is True and enabled["consecutiveFailures"] == 0
        await eventually(lambda: _calls(receiver, 4), what="the waiting call delivered once enabled")
        call = receiver.calls[-1]
        assert webhooks.verify(added["secret"], call.body, call.headers["x-sepulki-signature"])
        assert receiver.bodies()[-1]["alert"]["robot_id"] == ALPHA
        await eventually(
            lambda: api.resources.db.fetchval(
                "SELECT state = 'DELIVERED' AND attempts = 4 FROM notification_deliveries WHERE id = $1",
                node["id"],
            ),
            what="delivered on the fourth attempt",
        )


async def test_a_call_that_keeps_failing_is_given_up_after_the_last_attempt(settings: Settings) -> None:
    changes = {"webhook_disable_after": 100, "notify_max_attempts": 2}
    async with receiving(statuses=[500] * 10) as receiver, Api.running(fast(settings, **changes)) as api:
        await api.data(DEACTIVATE, {"id": BATTERY_EDICT}, as_=ADMIN)
        await api.data(ADD, {"input": {"url": receiver.url}})
        await edict(api, "Battery low", battery_rules(5), appliesTo={"robots": [ALPHA]})
        await Robot(api, ALPHA).battery(1)
        await eventually(
            lambda: api.resources.db.fetchval(
                "SELECT state = 'FAILED' AND attempts = 2 FROM notification_deliveries "
                "WHERE channel = 'WEBHOOK'"
            ),
            what="given up after two attempts",
        )
        await asyncio.sleep(0.5)
    assert len(receiver.calls) == 2


async def test_an_endpoint_hears_only_its_severities_and_fleets(api: Api) -> None:
    async with receiving() as receiver:
        await api.data(ADD, {"input": {"url": receiver.url, "severities": ["CRITICAL"]}})
        await api.data(ADD, {"input": {"url": receiver.url + "/warehouse", "fleets": [WAREHOUSE_FLEET]}})
        await edict(api, "Battery low", battery_rules(20), appliesTo={"robots": [ALPHA]})
        await edict(
            api, "Battery empty", battery_rules(5), severity="CRITICAL", appliesTo={"robots": [ALPHA]}
        )
        await Robot(api, ALPHA).battery(3)
        await eventually(lambda: _calls(receiver, 1), what="one call")
        await asyncio.sleep(0.5)
    assert [b["alert"]["severity"] for b in receiver.bodies()] == ["CRITICAL"]


async def _disabled(api: Api, hook_id: str) -> bool:
    return await api.resources.db.fetchval("SELECT NOT active FROM webhooks WHERE id = $1", hook_id)


async def _calls(receiver: object, count: int) -> bool:
    return len(receiver.calls) >= count  # type: ignore[attr-defined]


async def test_a_worker_killed_mid_delivery_loses_nothing(settings: Settings, tmp_path: Path) -> None:
    # The API delivers nothing here (SEPULKI_NOTIFY_IN_API=false): `sepulki worker` processes do.
    async with receiving(hang=1) as receiver, Api.running(fast(settings, notify_in_api=False)) as api:
        await api.data(DEACTIVATE, {"id": BATTERY_EDICT}, as_=ADMIN)
        added = (await api.data(ADD, {"input": {"url": receiver.url}}))["addWebhook"]
        await edict(api, "Battery low", battery_rules(20), appliesTo={"robots": [ALPHA]})
        first = await _worker(settings, tmp_path / "first.log")
        try:
            await Robot(api, ALPHA).battery(10)
            # The first worker has posted the call; the endpoint has not answered yet.
            await eventually(lambda: _calls(receiver, 1), within=20, what="first worker calls")
        finally:
            first.send_signal(signal.SIGKILL)
            await first.wait()
        (row,) = await api.resources.db.fetch("SELECT * FROM notification_deliveries")
        assert (row["state"], row["attempts"]) == ("PENDING", 1)
        second = await _worker(settings, tmp_path / "second.log")
        try:
            await eventually(
                lambda: api.resources.db.fetchval(
                    "SELECT state = 'DELIVERED' FROM notification_deliveries WHERE id = $1", row["id"]
                ),
                within=20,
                what="delivered by the second worker once the lease ran out",
            )
        finally:
            second.send_signal(signal.SIGINT)
            await second.wait()
    assert len(receiver.calls) == 2
    assert {c.headers["x-sepulki-delivery"] for c in receiver.calls} == {str(row["id"])}
    call = receiver.calls[-1]
    assert webhooks.verify(added["secret"], call.body, call.headers["x-sepulki-signature"])


async def _worker(settings: Settings, log: Path) -> asyncio.subprocess.Process:
    """`sepulki worker` in its own process, with the short intervals of the stories."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SEPULKI_")}
    env |= {f"SEPULKI_{name.upper()}": str(value) for name, value in FAST.items()}
    env |= {
        "SEPULKI_ENV": "test",
        "SEPULKI_DATABASE_URL": str(settings.database_url),
        "SEPULKI_DATA_DIR": str(log.parent / "data"),
        "SEPULKI_MIGRATE_ON_START": "false",
        "SEPULKI_DB_POOL_MIN": "1",
        "SEPULKI_DB_POOL_MAX": "2",
    }
    with log.open("wb") as output:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app.cli", "worker", cwd=ROOT, env=env, stdout=output, stderr=output
        )
