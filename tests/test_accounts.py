"""Accounts, as the people running a fleet use them: admins invite operators by mail, smiths
reset a forgotten password by mail or change it, edit their profile, and admins change roles and
deactivate accounts. Mail goes to a real SMTP server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from app.core.channels import channels
from app.settings import Settings
from tests.live import serving
from tests.mailsink import SmtpSink, our_log
from tests.seed_ids import ADMIN_ID, DEV_ID
from tests.support import ADMIN, DEV, LOGIN, Api
from tests.wsclient import subscribe

STRONG = "quench-orbit-lantern-71-marrow"
STRONGER = "brass-tundra-pivot-83-saffron"

INVITE = """
mutation($email: String!, $role: SmithRole) {
  inviteSmith(email: $email, role: $role) {
    invitation { id email role invitedBy { id email } createdAt expiresAt acceptedAt }
    errors { code message field }
  }
}
"""
REGISTER = """
mutation($input: RegisterInput!) {
  register(input: $input) {
    session { token refreshToken role permissions }
    smith { id email name role }
    errors { code message field }
  }
}
"""
RESET = "mutation($email: String!) { resetPassword(email: $email) }"
CONFIRM = """
mutation($token: String!, $password: String!) {
  confirmPasswordReset(token: $token, newPassword: $password) {
    smith { id email } errors { code message field }
  }
}
"""
CHANGE = """
mutation($old: String!, $new: String!) {
  changePassword(old: $old, new: $new) { smith { id } errors { code message field } }
}
"""
PROFILE = """
mutation($input: ProfileInput!) {
  updateProfile(input: $input) { smith { id name preferences } errors { code message field } }
}
"""
SMITHS = (
    "query($limit: Int, $offset: Int) { smiths(limit: $limit, offset: $offset) { id email role isActive } }"
)
ROLE = """
mutation($id: ID!, $role: SmithRole!) {
  updateSmithRole(smithId: $id, role: $role) { smith { id role permissions } errors { code message field } }
}
"""
DEACTIVATE = """
mutation($id: ID!) {
  deactivateSmith(smithId: $id) { smith { id isActive } errors { code message field } }
}
"""
ME = "{ me { id email name role permissions } }"
SERVICE_ROBOT = """
mutation($robot: ID!) { updateRobotStatus(robotId: $robot, status: MAINTENANCE) { id status } }
"""


@contextlib.asynccontextmanager
async def mailing(settings: Settings, sink: SmtpSink, **changes: Any) -> AsyncIterator[Api]:
    """The app sending its mail to `sink`, with `changes` to its settings."""
    async with Api.running(settings.replace(smtp_url=sink.url, **changes)) as api:
        yield api


@pytest.fixture
async def mail_api(settings: Settings, smtp_sink: SmtpSink) -> AsyncIterator[Api]:
    async with mailing(settings, smtp_sink) as api:
        yield api


def link_token(message: Any, path: str, parameter: str) -> str:
    body = message.get_content()
    found = re.search(rf"http://localhost:3000{path}\?{parameter}=([\w-]+)", body)
    assert found, body
    return found.group(1)


async def login(api: Api, who: tuple[str, str]) -> dict[str, Any] | None:
    """A new session (its own token), or None when the credentials are refused."""
    body = await api.execute(LOGIN, {"email": who[0], "password": who[1]}, as_=None)
    session: dict[str, Any] | None = body["data"]["login"]["session"]
    return session


async def register(api: Api, **fields: Any) -> dict[str, Any]:
    data = await api.data(REGISTER, {"input": {"name": "Nova Operator", **fields}}, as_=None)
    result: dict[str, Any] = data["register"]
    return result


async def audit_rows(api: Api, action: str) -> list[dict[str, Any]]:
    rows = await api.resources.db.fetch(
        "SELECT smith_id, action, resource_type, resource_id, changes, ip_address "
        "FROM audit_logs WHERE action = $1 ORDER BY id",
        action,
    )
    return [dict(r) for r in rows]


def codes(payload: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(e["code"], e["field"]) for e in payload["errors"] or []]


async def test_an_admin_invites_an_operator_who_registers_once_with_the_mailed_link(
    mail_api: Api, smtp_sink: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # Given an admin inviting an operator
    invited = (await mail_api.data(INVITE, {"email": "nova@fleet.example", "role": "OVER_SMITH"}))[
        "inviteSmith"
    ]
    assert invited["errors"] is None
    invitation = invited["invitation"]
    assert invitation["role"] == "OVER_SMITH"
    assert invitation["invitedBy"] == {"id": ADMIN_ID, "email": ADMIN[0]}
    assert invitation["acceptedAt"] is None

    # When the mail arrives at the SMTP server
    mail = await smtp_sink.wait_for("nova@fleet.example")
    assert mail["Subject"] == "Your invitation to Sepulki Hammer"
    assert "OVER_SMITH" in mail.get_content()
    token = link_token(mail, "/register", "invite")

    # Then the operator registers with the link's token (email in any letter case) and is signed in
    result = await register(mail_api, email="Nova@Fleet.Example", password=STRONG, inviteToken=token)
    assert result["errors"] is None
    assert result["smith"]["role"] == "OVER_SMITH"
    assert result["session"]["role"] == "OVER_SMITH"
    me = await mail_api.data(ME, token=result["session"]["token"])
    assert me["me"]["email"] == "Nova@Fleet.Example"
    assert "MANAGE_FLEET" in me["me"]["permissions"]
    assert await login(mail_api, ("nova@fleet.example", STRONG)) is not None

    # And the token does not work twice
    again = await register(mail_api, email="nova@fleet.example", password=STRONGER, inviteToken=token)
    assert codes(again) == [("BAD_USER_INPUT", "inviteToken")]
    accepted = await mail_api.resources.db.fetchval(
        "SELECT accepted_at FROM invitations WHERE id = $1", invitation["id"]
    )
    assert accepted is not None

    # The token was only ever in the mail: not stored, not in the audit trail, not in the log
    stored = await mail_api.resources.db.fetchval("SELECT token_hash FROM invitations")
    assert token not in stored
    invite_audit = await audit_rows(mail_api, "inviteSmith")
    register_audit = await audit_rows(mail_api, "register")
    assert invite_audit[0]["smith_id"] == ADMIN_ID
    assert invite_audit[0]["changes"]["email"] == "nova@fleet.example"
    assert register_audit[0]["changes"]["role"] == "OVER_SMITH"
    assert register_audit[0]["ip_address"] == "127.0.0.1"
    trail = json.dumps([r["changes"] for r in invite_audit + register_audit])
    assert token not in trail and STRONG not in trail and "argon2" not in trail
    assert token not in our_log(caplog) and STRONG not in our_log(caplog)


async def test_sign_up_needs_an_invitation_unless_open_registration_is_on(
    settings: Settings, smtp_sink: SmtpSink
) -> None:
    async with mailing(settings, smtp_sink) as api:
        closed = await register(api, email="walkin@fleet.example", password=STRONG)
        assert codes(closed) == [("BAD_USER_INPUT", "inviteToken")]
        assert closed["session"] is None
        forged = await register(api, email="walkin@fleet.example", password=STRONG, inviteToken="made-up")
        assert codes(forged) == [("BAD_USER_INPUT", "inviteToken")]

    async with mailing(settings, smtp_sink, open_registration=True) as api:
        opened = await register(api, email="walkin@fleet.example", password=STRONG)
        assert opened["errors"] is None
        assert opened["smith"]["role"] == "SMITH"
        assert (await api.data(ME, token=opened["session"]["token"]))["me"]["role"] == "SMITH"
        taken = await register(api, email="WALKIN@fleet.example", password=STRONGER)
        assert codes(taken) == [("CONFLICT", "email")]
        weak = await register(api, email="second@fleet.example", password="password1234")
        assert codes(weak) == [("BAD_USER_INPUT", "password")]
        assert weak["errors"][0]["message"].startswith("Password is too easy to guess")
        short = await register(api, email="second@fleet.example", password="Xq7#vL2!")
        assert short["errors"][0]["message"] == "Password must be at least 12 characters long"
        nameless = await register(api, email="second@fleet.example", password=STRONG, name=" ")
        assert codes(nameless) == [("BAD_USER_INPUT", "name")]
        assert codes(await register(api, email="not-an-email", password=STRONG)) == [
            ("BAD_USER_INPUT", "email")
        ]


async def test_an_invitation_works_only_for_its_email_its_newest_link_and_until_it_expires(
    mail_api: Api, smtp_sink: SmtpSink
) -> None:
    await mail_api.data(INVITE, {"email": "vega@fleet.example"})
    first = link_token(await smtp_sink.wait_for("vega@fleet.example"), "/register", "invite")
    wrong_email = await register(
        mail_api, email="someone.else@fleet.example", password=STRONG, inviteToken=first
    )
    assert codes(wrong_email) == [("BAD_USER_INPUT", "email")]

    # Re-inviting (the first mail was lost, say) replaces the first link
    await mail_api.data(INVITE, {"email": "vega@fleet.example"})
    second = link_token(await smtp_sink.wait_for("vega@fleet.example", count=2), "/register", "invite")
    replaced = await register(mail_api, email="vega@fleet.example", password=STRONG, inviteToken=first)
    assert codes(replaced) == [("BAD_USER_INPUT", "inviteToken")]

    await mail_api.resources.db.execute("UPDATE invitations SET expires_at = now() - interval '1 second'")
    expired = await register(mail_api, email="vega@fleet.example", password=STRONG, inviteToken=second)
    assert codes(expired) == [("BAD_USER_INPUT", "inviteToken")]
    assert expired["errors"][0]["message"] == replaced["errors"][0]["message"]


async def test_inviting_is_for_smith_managers_and_admin_invitations_for_admins(
    mail_api: Api, smtp_sink: SmtpSink
) -> None:
    plain = await mail_api.create_smith("plain@sepulki.com", "SMITH")
    assert await mail_api.error_codes(INVITE, {"email": "x@fleet.example"}, as_=plain) == ["FORBIDDEN"]
    # A supervisor granted MANAGE_SMITHS invites operators, but cannot mint admins.
    lead = await mail_api.create_smith("lead@sepulki.com", "OVER_SMITH", permissions=["MANAGE_SMITHS"])
    assert await mail_api.error_codes(INVITE, {"email": "x@fleet.example", "role": "ADMIN"}, as_=lead) == [
        "FORBIDDEN"
    ]
    invited = await mail_api.data(INVITE, {"email": "x@fleet.example", "role": None}, as_=lead)
    assert invited["inviteSmith"]["errors"] is None
    assert invited["inviteSmith"]["invitation"]["role"] == "SMITH"
    # An existing account is not invited again.
    existing = await mail_api.data(INVITE, {"email": DEV[0].upper()})
    assert codes(existing["inviteSmith"]) == [("CONFLICT", "email")]
    assert codes((await mail_api.data(INVITE, {"email": "nope"}))["inviteSmith"]) == [
        ("BAD_USER_INPUT", "email")
    ]
    await smtp_sink.wait_for("x@fleet.example")
    assert len(smtp_sink.messages) == 1


async def test_invitation_mails_are_rate_limited_per_email(settings: Settings, smtp_sink: SmtpSink) -> None:
    async with mailing(settings, smtp_sink, mail_rate_limit_account="2/hour") as api:
        for _ in range(2):
            assert (await api.data(INVITE, {"email": "spam@fleet.example"}))["inviteSmith"]["errors"] is None
        body = await api.execute(INVITE, {"email": "spam@fleet.example"})
    error = body["errors"][0]
    assert error["extensions"]["code"] == "RATE_LIMITED"
    assert error["extensions"]["retryAfter"] > 0
    assert len(smtp_sink.to("spam@fleet.example")) == 2


async def test_an_invitation_whose_mail_cannot_be_sent_is_not_stored(settings: Settings) -> None:
    dead = SmtpSink()  # never started: nothing listens on its port
    async with Api.running(settings.replace(smtp_url=dead.url)) as api:
        result = (await api.data(INVITE, {"email": "lost@fleet.example"}))["inviteSmith"]
        assert result["invitation"] is None
        assert codes(result) == [("INTERNAL_SERVER_ERROR", "email")]
        assert await api.resources.db.fetchval("SELECT count(*) FROM invitations") == 0
        assert await audit_rows(api, "inviteSmith") == []


async def test_a_smith_who_forgot_their_password_sets_a_new_one_from_the_mailed_link(
    mail_api: Api, smtp_sink: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    old = await mail_api.create_smith("forgetful@fleet.example", "SMITH", password="old-password-123")
    laptop, phone = await login(mail_api, old), await login(mail_api, old)
    assert laptop and phone

    # Given a reset link by mail
    assert (await mail_api.data(RESET, {"email": "Forgetful@fleet.example"}, as_=None))[
        "resetPassword"
    ] is True
    mail = await smtp_sink.wait_for("forgetful@fleet.example")
    assert mail["Subject"] == "Reset your Sepulki Hammer password"
    token = link_token(mail, "/reset-password", "token")

    # A weak password is refused, and the link keeps working
    weak = (await mail_api.data(CONFIRM, {"token": token, "password": "forgetful2024"}, as_=None))[
        "confirmPasswordReset"
    ]
    assert codes(weak) == [("BAD_USER_INPUT", "newPassword")]

    # When the smith sets a strong one
    done = (await mail_api.data(CONFIRM, {"token": token, "password": STRONG}, as_=None))[
        "confirmPasswordReset"
    ]
    assert done["errors"] is None
    assert done["smith"]["email"] == "forgetful@fleet.example"

    # Then the old password and every old session stop working; the new password works
    assert await login(mail_api, old) is None
    for session in (laptop, phone):
        assert await mail_api.error_codes(ME, token=session["token"], as_=None) == ["UNAUTHENTICATED"]
    assert await login(mail_api, ("forgetful@fleet.example", STRONG)) is not None
    assert await mail_api.resources.db.fetchval(
        "SELECT password_changed_at IS NOT NULL FROM smiths WHERE email = $1", old[0]
    )

    # And the link does not work twice; an unknown token gets the same answer
    again = (await mail_api.data(CONFIRM, {"token": token, "password": STRONGER}, as_=None))[
        "confirmPasswordReset"
    ]
    unknown = (await mail_api.data(CONFIRM, {"token": "x" * 43, "password": STRONGER}, as_=None))[
        "confirmPasswordReset"
    ]
    assert codes(again) == [("BAD_USER_INPUT", "token")]
    assert again["errors"] == unknown["errors"]

    rows = await audit_rows(mail_api, "resetPassword") + await audit_rows(mail_api, "confirmPasswordReset")
    assert [r["action"] for r in rows] == ["resetPassword", "confirmPasswordReset"]
    assert rows[1]["changes"]["sessionsRevoked"] == 2
    trail = json.dumps([r["changes"] for r in rows])
    assert token not in trail and STRONG not in trail
    assert token not in our_log(caplog) and STRONG not in our_log(caplog)


async def test_a_locked_out_smith_signs_in_again_after_resetting_the_password(
    mail_api: Api, smtp_sink: SmtpSink
) -> None:
    locked = await mail_api.create_smith("locked.out@fleet.example", "SMITH", password="forgotten-pw-123")
    for _ in range(6):  # the 6th failure locks the email
        assert await login(mail_api, (locked[0], "a-wrong-guess-123")) is None
    refused = await mail_api.execute(LOGIN, {"email": locked[0], "password": "forgotten-pw-123"}, as_=None)
    assert [e["extensions"]["code"] for e in refused["errors"]] == ["RATE_LIMITED"]

    await mail_api.data(RESET, {"email": locked[0]}, as_=None)
    token = link_token(await smtp_sink.wait_for(locked[0]), "/reset-password", "token")
    done = (await mail_api.data(CONFIRM, {"token": token, "password": STRONG}, as_=None))[
        "confirmPasswordReset"
    ]
    assert done["errors"] is None

    # Whoever holds the mailbox proved who they are: the lock ends with the reset.
    assert await login(mail_api, (locked[0], STRONG)) is not None


async def test_an_unknown_or_deactivated_email_gets_the_same_answer_and_no_mail(
    mail_api: Api, smtp_sink: SmtpSink
) -> None:
    gone = await mail_api.create_smith("gone@fleet.example", "SMITH")
    await mail_api.resources.db.execute("UPDATE smiths SET is_active = false WHERE email = $1", gone[0])
    unknown = await mail_api.execute(RESET, {"email": "ghost@fleet.example"}, as_=None)
    deactivated = await mail_api.execute(RESET, {"email": gone[0]}, as_=None)
    known = await mail_api.execute(RESET, {"email": DEV[0]}, as_=None)
    assert unknown == deactivated == known == {"data": {"resetPassword": True}}
    await smtp_sink.wait_for(DEV[0])
    await asyncio.sleep(0.2)
    assert [str(m["To"]) for m in smtp_sink.messages] == [DEV[0]]
    assert await mail_api.resources.db.fetchval("SELECT count(*) FROM password_resets") == 1


async def test_reset_mails_are_limited_quietly_per_email_and_openly_per_address(
    settings: Settings, smtp_sink: SmtpSink
) -> None:
    async with mailing(
        settings, smtp_sink, mail_rate_limit_account="1/hour", mail_rate_limit_ip="3/hour"
    ) as api:
        for _ in range(2):
            assert await api.data(RESET, {"email": DEV[0]}, as_=None) == {"resetPassword": True}
        await smtp_sink.wait_for(DEV[0])
        assert await api.data(RESET, {"email": "ghost@fleet.example"}, as_=None) == {"resetPassword": True}
        body = await api.execute(RESET, {"email": DEV[0]}, as_=None)
        assert body["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
        await asyncio.sleep(0.2)
    assert len(smtp_sink.messages) == 1


async def test_using_one_reset_link_voids_the_others_and_an_expired_link_is_refused(
    mail_api: Api, smtp_sink: SmtpSink
) -> None:
    for _ in range(2):
        await mail_api.data(RESET, {"email": DEV[0]}, as_=None)
    await smtp_sink.wait_for(DEV[0], count=2)
    first, second = (link_token(m, "/reset-password", "token") for m in smtp_sink.to(DEV[0]))
    used = await mail_api.data(CONFIRM, {"token": second, "password": STRONG}, as_=None)
    assert used["confirmPasswordReset"]["errors"] is None
    voided = await mail_api.data(CONFIRM, {"token": first, "password": STRONGER}, as_=None)
    assert codes(voided["confirmPasswordReset"]) == [("BAD_USER_INPUT", "token")]

    await mail_api.data(RESET, {"email": ADMIN[0]}, as_=None)
    late = link_token(await smtp_sink.wait_for(ADMIN[0]), "/reset-password", "token")
    await mail_api.resources.db.execute("UPDATE password_resets SET expires_at = now() - interval '1 second'")
    expired = await mail_api.data(CONFIRM, {"token": late, "password": STRONG}, as_=None)
    assert codes(expired["confirmPasswordReset"]) == [("BAD_USER_INPUT", "token")]


async def test_a_smith_changes_their_password_and_their_other_sessions_end(api: Api) -> None:
    me = await api.create_smith("careful@fleet.example", "SMITH", password="old-password-123")
    here, elsewhere = await login(api, me), await login(api, me)
    assert here and elsewhere

    wrong = await api.data(CHANGE, {"old": "not-it", "new": STRONG}, token=here["token"])
    assert codes(wrong["changePassword"]) == [("BAD_USER_INPUT", "old")]
    weak = await api.data(CHANGE, {"old": me[1], "new": "careful12345"}, token=here["token"])
    assert codes(weak["changePassword"]) == [("BAD_USER_INPUT", "new")]
    changed = await api.data(CHANGE, {"old": me[1], "new": STRONG}, token=here["token"])
    assert changed["changePassword"]["errors"] is None

    assert (await api.data(ME, token=here["token"]))["me"]["email"] == me[0]
    assert await api.error_codes(ME, token=elsewhere["token"], as_=None) == ["UNAUTHENTICATED"]
    assert await login(api, me) is None
    assert await login(api, (me[0], STRONG)) is not None
    [row] = await audit_rows(api, "changePassword")
    assert row["changes"] == {"password": "changed", "sessionsRevoked": 1}
    assert await api.error_codes(CHANGE, {"old": STRONG, "new": STRONGER}, as_=None) == ["UNAUTHENTICATED"]


async def test_guessing_the_current_password_through_change_password_locks_it(api: Api) -> None:
    me = await api.create_smith("target@fleet.example", "SMITH", password="old-password-123")
    token = await api.token(*me)
    for attempt in range(5):
        result = await api.data(CHANGE, {"old": f"guess-{attempt}", "new": STRONG}, token=token)
        assert codes(result["changePassword"]) == [("BAD_USER_INPUT", "old")]
    body = await api.execute(CHANGE, {"old": "guess-5", "new": STRONG}, token=token)
    assert body["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    # Locked: even the right password is not checked until the window passes.
    body = await api.execute(CHANGE, {"old": me[1], "new": STRONG}, token=token)
    assert body["errors"][0]["extensions"]["code"] == "RATE_LIMITED"


async def test_a_smith_updates_their_name_and_preferences(api: Api) -> None:
    prefs = {"theme": "dark", "units": "metric", "dashboards": ["fleet", "alerts"]}
    result = await api.data(PROFILE, {"input": {"name": "  Dev Lead  ", "preferences": prefs}}, as_=DEV)
    assert result["updateProfile"] == {
        "smith": {"id": DEV_ID, "name": "Dev Lead", "preferences": prefs},
        "errors": None,
    }
    # Omitted fields stay as they are.
    renamed = await api.data(PROFILE, {"input": {"name": "Dev Smith"}}, as_=DEV)
    assert renamed["updateProfile"]["smith"]["preferences"] == prefs

    for bad, field in [
        ({"name": ""}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"preferences": ["not", "an", "object"]}, "preferences"),
        ({"preferences": {"blob": "x" * 20_000}}, "preferences"),
    ]:
        refused = await api.data(PROFILE, {"input": bad}, as_=DEV)
        assert codes(refused["updateProfile"]) == [("BAD_USER_INPUT", field)], bad

    first, second = await audit_rows(api, "updateProfile")
    assert first["smith_id"] == DEV_ID
    assert first["changes"]["name"] == {"from": "Dev Smith", "to": "Dev Lead"}
    assert first["changes"]["preferences"]["to"] == prefs
    assert second["changes"] == {"name": {"from": "Dev Lead", "to": "Dev Smith"}}
    assert await api.error_codes(PROFILE, {"input": {"name": "Nobody"}}, as_=None) == ["UNAUTHENTICATED"]


async def test_admins_list_every_smith_newest_first(api: Api) -> None:
    await api.create_smith("newest@fleet.example", "SMITH")
    await api.resources.db.execute("UPDATE smiths SET is_active = false WHERE email = 'newest@fleet.example'")
    listed = (await api.data(SMITHS))["smiths"]
    assert listed[0] == {
        "id": listed[0]["id"],
        "email": "newest@fleet.example",
        "role": "SMITH",
        "isActive": False,
    }
    assert {s["email"] for s in listed} >= {ADMIN[0], DEV[0]}
    assert (await api.data(SMITHS, {"limit": 2, "offset": 1}))["smiths"] == listed[1:3]
    assert await api.error_codes(SMITHS, as_=DEV) == ["FORBIDDEN"]


async def test_a_role_change_applies_from_the_smiths_next_request(api: Api) -> None:
    operator = await api.create_smith("operator@fleet.example", "SMITH")
    token = await api.token(*operator)
    service_robot = {"robot": "70000000-0000-4000-8000-000000000001"}
    assert await api.error_codes(SERVICE_ROBOT, service_robot, token=token) == ["FORBIDDEN"]
    smith_id = (await api.data(ME, token=token))["me"]["id"]

    promoted = (await api.data(ROLE, {"id": smith_id, "role": "OVER_SMITH"}))["updateSmithRole"]
    assert promoted["errors"] is None
    assert "MANAGE_ROBOTS" in promoted["smith"]["permissions"]
    # The same access token, on its next request
    done = await api.data(SERVICE_ROBOT, service_robot, token=token)
    assert done["updateRobotStatus"]["status"] == "MAINTENANCE"

    # The seeded dev smith holds individual grants beyond its role; a new role replaces them.
    demoted = (await api.data(ROLE, {"id": DEV_ID, "role": "SMITH"}))["updateSmithRole"]
    assert "VIEW_EDICTS" not in demoted["smith"]["permissions"]
    assert await api.error_codes("{ edicts { id } }", as_=DEV) == ["FORBIDDEN"]
    [_, row] = await audit_rows(api, "updateSmithRole")
    assert row["smith_id"] == ADMIN_ID
    assert row["changes"]["role"] == {"from": "OVER_SMITH", "to": "SMITH"}
    assert "VIEW_EDICTS" in row["changes"]["droppedGrants"]

    unknown = await api.data(ROLE, {"id": "00000000-0000-4000-8000-00000000dead", "role": "SMITH"})
    assert codes(unknown["updateSmithRole"]) == [("NOT_FOUND", None)]
    assert codes((await api.data(ROLE, {"id": "nope", "role": "SMITH"}))["updateSmithRole"]) == [
        ("BAD_USER_INPUT", "smithId")
    ]
    assert await api.error_codes(ROLE, {"id": DEV_ID, "role": "ADMIN"}, as_=DEV) == ["FORBIDDEN"]


async def test_the_last_active_admin_stays_and_nobody_deactivates_themselves(api: Api) -> None:
    alone = await api.data(ROLE, {"id": ADMIN_ID, "role": "OVER_SMITH"})
    assert codes(alone["updateSmithRole"]) == [("CONFLICT", "smithId")]
    myself = await api.data(DEACTIVATE, {"id": ADMIN_ID})
    assert codes(myself["deactivateSmith"]) == [("CONFLICT", "smithId")]

    # A supervisor holding MANAGE_SMITHS does not reach admin accounts.
    lead = await api.create_smith("lead@fleet.example", "OVER_SMITH", permissions=["MANAGE_SMITHS"])
    assert await api.error_codes(DEACTIVATE, {"id": ADMIN_ID}, as_=lead) == ["FORBIDDEN"]
    assert await api.error_codes(ROLE, {"id": ADMIN_ID, "role": "SMITH"}, as_=lead) == ["FORBIDDEN"]

    # With a second admin, the first may step down.
    second = await api.create_smith("second.admin@fleet.example", "ADMIN")
    stepped_down = await api.data(ROLE, {"id": ADMIN_ID, "role": "OVER_SMITH"})
    assert stepped_down["updateSmithRole"]["errors"] is None
    second_id = (await api.data(ME, as_=second))["me"]["id"]
    last = await api.data(ROLE, {"id": second_id, "role": "SMITH"}, as_=second)
    assert codes(last["updateSmithRole"]) == [("CONFLICT", "smithId")]


async def test_a_deactivated_smith_is_signed_out_everywhere_at_once(settings: Settings) -> None:
    robot = "70000000-0000-4000-8000-000000000001"
    async with serving(settings) as live:
        api = live.api
        leaver = await api.create_smith("leaver@fleet.example", "SMITH", password="old-password-123")
        session = await login(api, leaver)
        assert session is not None
        leaver_id = (await api.data(ME, token=session["token"]))["me"]["id"]
        watch = "subscription($id: ID) { robotStatus(robotId: $id) { id status } }"
        init = {"authorization": f"Bearer {session['token']}"}
        async with subscribe(live.ws_url, watch, {"id": robot}, init=init) as updates:
            await live.listening(channels.robot_status(robot))

            result = (await api.data(DEACTIVATE, {"id": leaver_id}))["deactivateSmith"]
            assert result == {"smith": {"id": leaver_id, "isActive": False}, "errors": None}

            with pytest.raises(ConnectionClosed) as closed:
                await updates.next(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
        assert await api.error_codes(ME, token=session["token"], as_=None) == ["UNAUTHENTICATED"]
        refreshed = await api.execute(
            "mutation($t: String!) { refreshToken(refreshToken: $t) { session { token } } }",
            {"t": session["refreshToken"]},
            as_=None,
        )
        assert refreshed["data"]["refreshToken"]["session"] is None
        assert await login(api, leaver) is None
        [row] = await audit_rows(api, "deactivateSmith")
        assert row["smith_id"] == ADMIN_ID and row["resource_id"] == leaver_id
        assert row["changes"] == {"isActive": {"from": True, "to": False}, "sessionsRevoked": 1}
        assert await api.resources.db.fetchval(
            "SELECT deactivated_at IS NOT NULL FROM smiths WHERE id = $1", leaver_id
        )


async def test_a_demoted_supervisor_loses_the_streams_the_new_role_may_not_see(settings: Settings) -> None:
    breaches = "subscription { policyBreaches { id severity } }"
    async with serving(settings) as live:
        api = live.api
        supervisor = await api.create_smith("night@fleet.example", "OVER_SMITH", password="pw-123456789")
        session = await login(api, supervisor)
        assert session is not None
        supervisor_id = (await api.data(ME, token=session["token"]))["me"]["id"]
        init = {"authorization": f"Bearer {session['token']}"}
        async with subscribe(live.ws_url, breaches, init=init) as alerts:
            await live.listening(channels.BREACHES)

            demoted = (await api.data(ROLE, {"id": supervisor_id, "role": "SMITH"}))["updateSmithRole"]
            assert demoted["errors"] is None

            # The subscription was authorized under the old role: its socket closes.
            with pytest.raises(ConnectionClosed) as closed:
                await alerts.next(timeout=10)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4403, "Permissions changed")

        # The session itself lives on; subscribing again is judged by the new role.
        assert (await api.data(ME, token=session["token"]))["me"]["id"] == supervisor_id
        async with subscribe(live.ws_url, breaches, init=init) as again:
            assert [e["extensions"]["code"] for e in await again.errors()] == ["FORBIDDEN"]
