"""Smiths see each other's id and name (who created a floor, a task, a command); the rest of a
smith (email, role, permissions, preferences, isActive, lastLoginAt, createdAt) only the smith
themself and holders of MANAGE_SMITHS, on every path that yields a Smith, subscriptions included.

A refused field answers null with a FORBIDDEN error at its path; the private fields are nullable
for that reason, so the entity around an author (a floor, a list of tasks) is never lost with it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.core.channels import channels
from app.settings import Settings
from tests.live import Live, serving
from tests.seed_ids import (
    ADMIN_ID,
    DEMO_ID,
    DEV_FLEET,
    DEV_FLOOR,
    DEV_ID,
    DEVBOT_SEPULKA,
    GEARBOX_TASK,
    WAREHOUSE_SEPULKA,
)
from tests.support import ADMIN, DEMO, DEV, LOGIN, TEST, Api
from tests.wsclient import Subscription, connected

PRIVATE = "email role permissions preferences isActive lastLoginAt createdAt"
FLOOR_AUTHOR = "query($id: ID!) { factoryFloor(id: $id) { name createdBy { %s } } }"
SEPULKA_AUTHOR = "query($id: ID!) { sepulka(id: $id) { name createdBy { %s } } }"
ME = f"{{ me {{ id name {PRIVATE} }} }}"
REFRESH = f"""
mutation($t: String!) {{
  refreshToken(refreshToken: $t) {{ smith {{ id {PRIVATE} }} errors {{ code message }} }}
}}
"""
SIGN_IN = f"""
mutation($email: String!, $password: String!) {{
  login(credentials: {{email: $email, password: $password}}) {{
    session {{ refreshToken }} smith {{ id {PRIVATE} }} errors {{ code message }}
  }}
}}
"""
TASK_AUTHORS = "subscription($fleetId: ID) { taskUpdates(fleetId: $fleetId) { id createdBy { id name %s } } }"


def denials(body: dict[str, Any]) -> list[tuple[str, list[Any]]]:
    return [(e["extensions"]["code"], e["path"]) for e in body.get("errors") or []]


async def test_a_smith_sees_the_name_of_the_admin_who_created_a_floor_but_not_the_email(api: Api) -> None:
    named = await api.data(FLOOR_AUTHOR % "id name", {"id": DEV_FLOOR}, as_=DEMO)
    assert named["factoryFloor"]["createdBy"] == {"id": ADMIN_ID, "name": "System Administrator"}

    body = await api.execute(FLOOR_AUTHOR % "name email", {"id": DEV_FLOOR}, as_=DEMO)
    assert denials(body) == [("FORBIDDEN", ["factoryFloor", "createdBy", "email"])]
    assert "MANAGE_SMITHS" in body["errors"][0]["message"]
    # Only the refused field is null: the floor and the author's name stay.
    author = {"name": "System Administrator", "email": None}
    assert body["data"] == {"factoryFloor": {"name": "Dev Lab Floor", "createdBy": author}}
    assert ADMIN[0] not in json.dumps(body)


async def test_another_smiths_nullable_private_fields_answer_null_each_with_its_own_error(api: Api) -> None:
    body = await api.execute(FLOOR_AUTHOR % "name preferences lastLoginAt", {"id": DEV_FLOOR}, as_=DEMO)
    author = body["data"]["factoryFloor"]["createdBy"]
    assert author == {"name": "System Administrator", "preferences": None, "lastLoginAt": None}
    assert sorted(denials(body)) == [
        ("FORBIDDEN", ["factoryFloor", "createdBy", "lastLoginAt"]),
        ("FORBIDDEN", ["factoryFloor", "createdBy", "preferences"]),
    ]


async def test_an_admin_sees_every_field_of_the_smith_who_created_a_sepulka(api: Api) -> None:
    data = await api.data(SEPULKA_AUTHOR % f"id name {PRIVATE}", {"id": DEVBOT_SEPULKA}, as_=ADMIN)
    author = data["sepulka"]["createdBy"]
    assert (author["id"], author["email"], author["role"], author["isActive"]) == (
        DEV_ID,
        DEV[0],
        "OVER_SMITH",
        True,
    )
    assert "MANAGE_FLEET" in author["permissions"] and author["createdAt"] is not None


async def test_an_over_smith_sees_other_smiths_emails_only_once_granted_manage_smiths(api: Api) -> None:
    # TEST is an over-smith without MANAGE_SMITHS.
    body = await api.execute(SEPULKA_AUTHOR % "email", {"id": DEVBOT_SEPULKA}, as_=TEST)
    assert denials(body) == [("FORBIDDEN", ["sepulka", "createdBy", "email"])]

    manager = await api.create_smith("people@sepulki.com", "OVER_SMITH", permissions=["MANAGE_SMITHS"])
    data = await api.data(SEPULKA_AUTHOR % "email role", {"id": DEVBOT_SEPULKA}, as_=manager)
    assert data["sepulka"]["createdBy"] == {"email": DEV[0], "role": "OVER_SMITH"}


async def test_a_smith_sees_its_own_email_role_and_preferences_through_me(api: Api) -> None:
    me = (await api.data(ME, as_=DEMO))["me"]
    assert (me["id"], me["email"], me["role"], me["isActive"]) == (DEMO_ID, DEMO[0], "SMITH", True)
    assert "CREATE_TASK" in me["permissions"] and me["lastLoginAt"] is not None


async def test_a_smith_sees_its_own_private_fields_on_what_it_created(api: Api) -> None:
    data = await api.data(SEPULKA_AUTHOR % "email role", {"id": WAREHOUSE_SEPULKA}, as_=DEMO)
    assert data["sepulka"]["createdBy"] == {"email": DEMO[0], "role": "SMITH"}


async def test_a_fragment_or_an_alias_does_not_get_around_the_rule(api: Api) -> None:
    query = """
    query($id: ID!) { factoryFloor(id: $id) { createdBy { ...Author } } }
    fragment Author on Smith { name contact: email }
    """
    body = await api.execute(query, {"id": DEV_FLOOR}, as_=DEMO)
    assert denials(body) == [("FORBIDDEN", ["factoryFloor", "createdBy", "contact"])]
    assert ADMIN[0] not in json.dumps(body)


async def test_signing_in_answers_the_accounts_own_private_fields_to_an_anonymous_caller(api: Api) -> None:
    signed_in = await api.execute(SIGN_IN, {"email": DEMO[0], "password": DEMO[1]}, as_=None)
    assert "errors" not in signed_in, signed_in
    smith = signed_in["data"]["login"]["smith"]
    assert (smith["id"], smith["email"], smith["role"]) == (DEMO_ID, DEMO[0], "SMITH")

    refresh_token = signed_in["data"]["login"]["session"]["refreshToken"]
    refreshed = await api.execute(REFRESH, {"t": refresh_token}, as_=None)
    assert "errors" not in refreshed, refreshed
    assert refreshed["data"]["refreshToken"]["smith"]["email"] == DEMO[0]


async def test_signing_in_with_another_smiths_token_attached_shows_the_account_signed_in(api: Api) -> None:
    # The password proves who the answer is about, whatever token came along.
    body = await api.execute(SIGN_IN, {"email": DEV[0], "password": DEV[1]}, as_=DEMO)
    assert "errors" not in body, body
    assert body["data"]["login"]["smith"]["email"] == DEV[0]
    assert (await api.execute(LOGIN, {"email": DEV[0], "password": DEV[1]}, as_=DEMO)).get("errors") is None


# --- subscriptions share results between viewers of the same permissions, never a private field --


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[Live]:
    async with serving(settings) as running:
        yield running


async def payload(subscription: Subscription) -> dict[str, Any]:
    """The next `next` message's payload: data and errors alike."""
    message = await asyncio.wait_for(subscription._queue.get(), 5)
    assert not isinstance(message, BaseException), message
    assert message["type"] == "next", message
    result: dict[str, Any] = message["payload"]
    return result


async def smith_token(live: Live, email: str) -> tuple[str, dict[str, str]]:
    """A new SMITH (the seed's smiths have grants of their own): its id and connection_init."""
    who = await live.api.create_smith(email, "SMITH")
    smith_id = await live.api.resources.db.fetchval("SELECT id FROM smiths WHERE email = $1", email)
    return smith_id, await live.bearer(who)


async def test_two_smiths_of_one_role_watching_tasks_each_see_only_their_own_email(live: Live) -> None:
    author_id, author = await smith_token(live, "author@sepulki.com")
    _, onlooker = await smith_token(live, "onlooker@sepulki.com")
    variables = {"fleetId": DEV_FLEET}
    async with (
        connected(live.ws_url, author) as one,
        connected(live.ws_url, onlooker) as two,
        one.subscribe(TASK_AUTHORS % "email", variables) as authors_view,
        two.subscribe(TASK_AUTHORS % "email", variables) as onlookers_view,
    ):
        channel = channels.tasks(DEV_FLEET)
        deadline = asyncio.get_running_loop().time() + 5
        while live.api.resources.events.subscribers(channel) < 2:
            assert asyncio.get_running_loop().time() < deadline, "the two sockets did not subscribe"
            await asyncio.sleep(0.01)
        task = await live.row("tasks", GEARBOX_TASK) | {"created_by": author_id}
        event_id = await live.publish([channel, channels.TASKS_ALL], task)
        seen_by_author = await payload(authors_view)
        seen_by_onlooker = await payload(onlookers_view)
    created_by = seen_by_author["data"]["taskUpdates"]["createdBy"]
    assert created_by == {"id": author_id, "name": "author", "email": "author@sepulki.com"}
    assert "errors" not in seen_by_author
    onlookers_author = seen_by_onlooker["data"]["taskUpdates"]["createdBy"]
    assert onlookers_author == {"id": author_id, "name": "author", "email": None}, seen_by_onlooker
    assert denials(seen_by_onlooker) == [("FORBIDDEN", ["taskUpdates", "createdBy", "email"])]
    # Same document, variables, role and permissions, yet one execution per viewer.
    assert len(live.api.app.state.subscriptions.results._events[event_id]) == 2


async def test_smiths_selecting_only_public_fields_of_an_author_still_share_one_execution(live: Live) -> None:
    _, first = await smith_token(live, "first@sepulki.com")
    _, second = await smith_token(live, "second@sepulki.com")
    variables = {"fleetId": DEV_FLEET}
    async with (
        connected(live.ws_url, first) as one,
        connected(live.ws_url, second) as two,
        one.subscribe(TASK_AUTHORS % "", variables) as first_view,
        two.subscribe(TASK_AUTHORS % "", variables) as second_view,
    ):
        channel = channels.tasks(DEV_FLEET)
        deadline = asyncio.get_running_loop().time() + 5
        while live.api.resources.events.subscribers(channel) < 2:
            assert asyncio.get_running_loop().time() < deadline, "the two sockets did not subscribe"
            await asyncio.sleep(0.01)
        event_id = await live.publish([channel, channels.TASKS_ALL], await live.row("tasks", GEARBOX_TASK))
        got = [await payload(first_view), await payload(second_view)]
    assert got[0] == got[1]
    assert "errors" not in got[0] and got[0]["data"]["taskUpdates"]["createdBy"]["name"]
    assert len(live.api.app.state.subscriptions.results._events[event_id]) == 1
