"""Smiths hear of alerts the way they chose: in the app (a list, an unread count, live) and by mail."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.settings import Settings
from tests.alerting import DEACTIVATE, Robot, battery_rules, edict, fast, settled
from tests.live import Live, serving
from tests.mailsink import SmtpSink
from tests.seed_ids import ALPHA, BATTERY_EDICT, BETA, DEV_FLEET, WAREHOUSE_FLEET
from tests.support import ADMIN, DEMO, DEV, TEST, Api, eventually
from tests.wsclient import connected

NOTIFICATIONS = """
query($unreadOnly: Boolean, $first: Int, $after: String) {
  notifications(unreadOnly: $unreadOnly, first: $first, after: $after) {
    edges { node { id alertId severity title body data readAt } }
    pageInfo { hasNextPage endCursor }
  }
  unreadNotificationCount
}
"""
MARK_READ = "mutation($id: ID!) { markNotificationRead(id: $id) { id readAt } }"
MARK_ALL = "mutation { markAllNotificationsRead }"
PREFERENCES = "query { notificationPreferences { severities fleets channels } }"
SAVE = """
mutation($input: NotificationPreferencesInput!) {
  updateNotificationPreferences(input: $input) { severities fleets channels }
}
"""
LIVE = "subscription($after: String) { notifications(after: $after) { id title severity eventId } }"


@pytest.fixture
async def live(settings: Settings, smtp_sink: SmtpSink) -> AsyncIterator[Live]:
    async with serving(fast(settings, smtp_url=smtp_sink.url)) as running:
        await running.api.data(DEACTIVATE, {"id": BATTERY_EDICT}, as_=ADMIN)
        yield running


async def test_an_operator_reads_the_alerts_notifications_and_clears_the_unread_count(live: Live) -> None:
    api = live.api
    low = await edict(api, "Battery low", battery_rules(20), appliesTo={"robots": [ALPHA, BETA]})
    init = await live.bearer(DEV)
    async with connected(live.ws_url, init) as socket:
        async with socket.subscribe(LIVE) as incoming:
            await eventually(lambda: _listening(live), what="notification subscriber registered")
            await Robot(api, ALPHA).battery(12)
            first = (await incoming.next())["notifications"]
    assert first["severity"] == "WARNING" and first["title"] == "[WARNING] Battery low"
    await Robot(api, BETA).battery(11)
    body = await eventually(lambda: _page_with(api, 2), what="two notifications")
    assert body["unreadNotificationCount"] == 2
    newest, oldest = (e["node"] for e in body["notifications"]["edges"])
    assert oldest["id"] == first["id"] and oldest["data"]["robotId"] == ALPHA
    assert newest["data"]["edictId"] == low and BETA in newest["body"]

    read = (await api.data(MARK_READ, {"id": oldest["id"]}, as_=DEV))["markNotificationRead"]
    assert read["readAt"] is not None
    unread = await api.data(NOTIFICATIONS, {"unreadOnly": True}, as_=DEV)
    assert [e["node"]["id"] for e in unread["notifications"]["edges"]] == [newest["id"]]
    assert unread["unreadNotificationCount"] == 1
    # Another smith cannot touch it; the admin got notifications of their own.
    assert await api.error_codes(MARK_READ, {"id": newest["id"]}, as_=ADMIN) == ["NOT_FOUND"]
    assert (await api.data(MARK_ALL, as_=DEV))["markAllNotificationsRead"] == 1
    assert (await api.data(NOTIFICATIONS, as_=DEV))["unreadNotificationCount"] == 0
    assert (await api.data(NOTIFICATIONS, as_=ADMIN))["unreadNotificationCount"] == 2
    # A smith who may not manage fleets and chose nothing hears nothing.
    assert (await api.data(NOTIFICATIONS, as_=DEMO))["unreadNotificationCount"] == 0
    page = (await api.data(NOTIFICATIONS, {"first": 1}, as_=DEV))["notifications"]
    rest = (await api.data(NOTIFICATIONS, {"after": page["pageInfo"]["endCursor"]}, as_=DEV))["notifications"]
    assert page["pageInfo"]["hasNextPage"] and [e["node"]["id"] for e in rest["edges"]] == [oldest["id"]]
    assert await api.error_codes(NOTIFICATIONS, as_=None) == ["UNAUTHENTICATED"]


async def _listening(live: Live) -> bool:
    return any(
        live.api.resources.events.subscribers(f"notifications:{smith}") > 0
        for smith in [await live.api.resources.db.fetchval("SELECT id FROM smiths WHERE email = $1", DEV[0])]
    )


async def _page_with(api: Api, count: int) -> dict | None:
    body = await api.data(NOTIFICATIONS, as_=DEV)
    # The list and the count are read by separate statements: both must have seen the last commit.
    return body if len(body["notifications"]["edges"]) == body["unreadNotificationCount"] == count else None


async def test_preferences_choose_severities_fleets_and_mail(live: Live, smtp_sink: SmtpSink) -> None:
    api = live.api
    assert (await api.data(PREFERENCES, as_=TEST))["notificationPreferences"] == {
        "severities": ["INFO", "WARNING", "CRITICAL"],
        "fleets": [],
        "channels": ["IN_APP"],
    }
    # TEST wants only critical alerts of the dev fleet, by mail and in the app; DEMO (a plain
    # smith) opts in to warnings of the warehouse fleet only.
    critical = {"severities": ["CRITICAL"], "fleets": [DEV_FLEET], "channels": ["EMAIL", "IN_APP"]}
    saved = (await api.data(SAVE, {"input": critical}, as_=TEST))["updateNotificationPreferences"]
    assert saved == critical
    await api.data(SAVE, {"input": {"severities": ["WARNING"], "fleets": [WAREHOUSE_FLEET]}}, as_=DEMO)
    assert await api.error_codes(SAVE, {"input": {"fleets": ["dev"]}}, as_=TEST) == ["BAD_USER_INPUT"]

    await edict(api, "Battery low", battery_rules(20), appliesTo={"robots": [ALPHA]})
    await edict(api, "Battery empty", battery_rules(5), severity="CRITICAL", appliesTo={"robots": [ALPHA]})
    await Robot(api, ALPHA).battery(12, 3)
    mail = await smtp_sink.wait_for(TEST[0])
    assert str(mail["Subject"]) == "[CRITICAL] Battery empty"
    await settled(api, "SELECT count(*) FROM notification_deliveries WHERE state = 'DELIVERED'")
    assert len(smtp_sink.to(TEST[0])) == 1 and smtp_sink.to(DEV[0]) == []
    test_titles = [
        e["node"]["title"] for e in (await api.data(NOTIFICATIONS, as_=TEST))["notifications"]["edges"]
    ]
    assert test_titles == ["[CRITICAL] Battery empty"]
    assert (await api.data(NOTIFICATIONS, as_=DEMO))["unreadNotificationCount"] == 0
    dev_titles = {
        e["node"]["title"] for e in (await api.data(NOTIFICATIONS, as_=DEV))["notifications"]["edges"]
    }
    assert dev_titles == {"[WARNING] Battery low", "[CRITICAL] Battery empty"}
    (delivery,) = await api.resources.db.fetch(
        "SELECT * FROM notification_deliveries WHERE channel = 'EMAIL'"
    )
    assert (delivery["state"], delivery["attempts"]) == ("DELIVERED", 1)
