"""Accounts: invitations and sign-up, password reset and change, profiles. The admin's controls
over smiths (role, deactivation) are app.smith_admin's; sessions themselves are app.sessions'.

Tokens of invitation and reset links are 256-bit random values, stored as their SHA-256 only, and
appear nowhere but in the mail: not in a response, an audit row or a log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from app import audit
from app.context import Context, Viewer
from app.core import password_policy
from app.core.errors import GRAPHQL_ONLY, Conflict, DomainError, Forbidden, Invalid, NotFound, RateLimited
from app.core.validation import required_text
from app.infra.db import returned
from app.infra.eventlog import Recorded
from app.infra.logs import mask_email
from app.infra.mail import Mailer, MailError
from app.infra.security import new_secret, secret_digest
from app.sessions import announce, clear_login_failures, revoke_smith_sessions, sign_in
from app.smiths import SMITH_BY_EMAIL, SMITH_COLUMNS, shown_to_self, smith_view

log = logging.getLogger("sepulki.accounts")

MAX_EMAIL_LENGTH = 254
MAX_NAME_LENGTH = 200
MAX_PREFERENCES_BYTES = 16 * 1024
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
INVALID_INVITATION = "This invitation is invalid, has expired or was already used"
INVALID_RESET = "This reset link is invalid, has expired or was already used"
LOCKED = "Too many failed password attempts; try again later"

# Deleted rows included: the unique index on lower(email) covers them too.
EMAIL_TAKEN = "SELECT EXISTS (SELECT 1 FROM smiths WHERE lower(email) = lower($1))"
INSERT_SMITH = (
    "INSERT INTO smiths (email, name, password_hash, role) "  # noqa: S608
    f"VALUES ($1, $2, $3, $4::smith_role) RETURNING {SMITH_COLUMNS}"
)
INVITATION_COLUMNS = "id, email, role::text AS role, invited_by, created_at, expires_at, accepted_at"
REVOKE_PENDING_INVITATIONS = """
UPDATE invitations SET revoked_at = now()
WHERE lower(email) = lower($1) AND accepted_at IS NULL AND revoked_at IS NULL
"""
INSERT_INVITATION = (
    "INSERT INTO invitations (email, role, token_hash, invited_by, expires_at) "  # noqa: S608
    f"VALUES ($1, $2::smith_role, $3, $4, $5) RETURNING {INVITATION_COLUMNS}"
)
LIVE_INVITATION = """
SELECT id, email, role::text AS role FROM invitations
WHERE token_hash = $1 AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > now()
"""
# Conditional, so that of two registrations racing with one token exactly one wins.
ACCEPT_INVITATION = """
UPDATE invitations SET accepted_at = now()
WHERE id = $1 AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > now()
RETURNING id
"""
INSERT_RESET = """
INSERT INTO password_resets (smith_id, token_hash, requested_ip, expires_at) VALUES ($1, $2, $3, $4)
"""
LIVE_RESET = """
SELECT s.id, s.email, s.name FROM password_resets r JOIN smiths s ON s.id = r.smith_id
WHERE r.token_hash = $1 AND r.used_at IS NULL AND r.expires_at > now()
  AND s.is_active AND s.deleted_at IS NULL
"""
USE_RESET = """
UPDATE password_resets SET used_at = now()
WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()
RETURNING smith_id
"""
USE_ALL_RESETS = "UPDATE password_resets SET used_at = now() WHERE smith_id = $1 AND used_at IS NULL"
PASSWORD_HASH_OF = "SELECT password_hash FROM smiths WHERE id = $1"  # noqa: S105
SET_PASSWORD = (
    "UPDATE smiths SET password_hash = $2, password_changed_at = now() "  # noqa: S608
    f"WHERE id = $1 AND is_active AND deleted_at IS NULL RETURNING {SMITH_COLUMNS}"
)
PROFILE_FOR_UPDATE = "SELECT name, preferences FROM smiths WHERE id = $1 FOR UPDATE"
UPDATE_PROFILE = (
    "UPDATE smiths SET name = COALESCE($2, name), preferences = COALESCE($3::jsonb, preferences) "  # noqa: S608
    f"WHERE id = $1 RETURNING {SMITH_COLUMNS}"
)


class MailNotSent(DomainError):
    """The mail of an invitation could not be handed over; nothing was stored."""

    code = "INTERNAL_SERVER_ERROR"


def _email(value: str) -> str:
    email = value.strip()
    if len(email) > MAX_EMAIL_LENGTH or not EMAIL.match(email):
        raise Invalid("Enter a valid email address", field="email")
    return email


def _link(ctx: Context, path: str, query: str) -> str:
    return f"{ctx.resources.settings.public_url.rstrip('/')}{path}?{query}"


def _ip(ctx: Context) -> str:
    return ctx.client_ip or "unknown"


# Invitations and sign-up


async def invite(ctx: Context, viewer: Viewer, email: str, role: str) -> dict[str, Any]:
    """Stores the invitation and mails its link in one transaction: when the mail cannot be
    handed over, no invitation exists, and the admin is told so."""
    email = _email(email)
    role = role or "SMITH"  # an explicit null means the default too
    if role == "ADMIN" and not viewer.is_admin:
        raise Forbidden("Only an admin may invite an admin")
    if await ctx.db.fetchval(EMAIL_TAKEN, email):
        raise Conflict("An account with this email already exists", field="email")
    limiter = ctx.resources.limiter
    await limiter.hit("mail_ip", _ip(ctx), "Too many mails sent from this address; try again later")
    await limiter.hit("mail_account", email, "Too many mails sent to this email; try again later")
    token, digest = new_secret()
    expires_at = datetime.now(UTC) + timedelta(seconds=ctx.resources.settings.invitation_ttl_s)
    try:
        async with ctx.db.acquire() as conn, conn.transaction():
            # Only the newest invitation of an email works: re-inviting replaces a lost mail.
            await conn.execute(REVOKE_PENDING_INVITATIONS, email)
            row = dict(
                returned(await conn.fetchrow(INSERT_INVITATION, email, role, digest, viewer.id, expires_at))
            )
            changes = {"email": email, "role": role, "expiresAt": expires_at.isoformat()}
            await audit.record(conn, ctx, viewer.id, "inviteSmith", "Invitation", row["id"], changes)
            await ctx.resources.mailer.send(
                email,
                "Your invitation to Sepulki Hammer",
                f"{viewer.name} invited you to Sepulki Hammer with the role {role}.\n\n"
                "Create your account with this link; it works once, until "
                f"{expires_at:%Y-%m-%d %H:%M} UTC:\n\n{_link(ctx, '/register', f'invite={token}')}\n\n"
                "If you did not expect this invitation, ignore this mail.\n",
            )
    except MailError:
        raise MailNotSent(
            "The invitation mail could not be sent, so no invitation was stored; try again later",
            field="email",
        ) from None
    log.info("invitation %s sent to %s", row["id"], mask_email(email))
    return row


async def register(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
    """An AuthPayload: the new smith signed in, or why no account was created."""
    try:
        smith = await _create_account(ctx, data)
    except GRAPHQL_ONLY:
        raise
    except DomainError as exc:
        return {"session": None, "smith": None, "errors": [exc.as_payload_error()]}
    return await sign_in(ctx, smith)


async def _create_account(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
    # Each attempt may cost an argon2 hash: counted like a sign-in from the caller's address.
    await ctx.resources.limiter.hit(
        "login_ip", _ip(ctx), "Too many attempts from this address; try again later"
    )
    email = _email(data["email"])
    name = required_text(data["name"], "name", max_length=MAX_NAME_LENGTH)
    token = data.get("invite_token")
    invitation = None
    if token:
        invitation = await ctx.db.fetchrow(LIVE_INVITATION, secret_digest(token))
        if invitation is None:
            raise Invalid(INVALID_INVITATION, field="inviteToken")
        if invitation["email"].lower() != email.lower():
            raise Invalid("Use the email address the invitation was sent to", field="email")
    elif not ctx.resources.settings.open_registration:
        raise Invalid("Sign-up is by invitation: use the link of your invitation mail", field="inviteToken")
    role = invitation["role"] if invitation is not None else "SMITH"
    if await ctx.db.fetchval(EMAIL_TAKEN, email):
        raise Conflict("An account with this email already exists", field="email")
    await password_policy.check(data["password"], field="password", user_inputs=(email, name))
    password_hash = await ctx.resources.passwords.hash(data["password"])
    async with ctx.db.acquire() as conn, conn.transaction():
        if invitation is not None and await conn.fetchval(ACCEPT_INVITATION, invitation["id"]) is None:
            raise Invalid(INVALID_INVITATION, field="inviteToken")
        try:
            row = returned(await conn.fetchrow(INSERT_SMITH, email, name, password_hash, role))
        except asyncpg.UniqueViolationError:
            raise Conflict("An account with this email already exists", field="email") from None
        changes = {
            "email": email,
            "name": name,
            "role": role,
            "invitationId": invitation["id"] if invitation is not None else None,
        }
        await audit.record(conn, ctx, row["id"], "register", "Smith", row["id"], changes)
    log.info("account %s created for %s", row["id"], mask_email(email))
    return smith_view(row)


# Password reset and change

_deliveries: set[asyncio.Task[None]] = set()


async def _deliver(mailer: Mailer, to: str, subject: str, body: str) -> None:
    try:
        await mailer.send(to, subject, body)
    except MailError as exc:
        log.error("password reset mail to %s not sent: %s", mask_email(to), exc)


async def reset_password(ctx: Context, email: str) -> bool:
    """Answers true whatever the email. Known, unknown and throttled emails take the same path
    (one lookup, one transaction, no wait for the mail server, which is handed the mail in the
    background), so neither the answer nor its timing tells whether an account exists."""
    email = email.strip()[:MAX_EMAIL_LENGTH]
    limiter = ctx.resources.limiter
    await limiter.hit("mail_ip", _ip(ctx), "Too many reset requests from this address; try again later")
    try:
        await limiter.hit("mail_account", email)
        allowed = True
    except RateLimited:
        allowed = False
    row = await ctx.db.fetchrow(SMITH_BY_EMAIL, email)
    smith = row if row is not None and row["is_active"] else None
    token = None
    async with ctx.db.acquire() as conn, conn.transaction():
        if smith is not None and allowed:
            token, digest = new_secret()
            expires_at = datetime.now(UTC) + timedelta(seconds=ctx.resources.settings.password_reset_ttl_s)
            await conn.execute(INSERT_RESET, smith["id"], digest, ctx.client_ip, expires_at)
        changes = {"email": email, "linkIssued": token is not None}
        smith_id = smith["id"] if smith is not None else None
        await audit.record(conn, ctx, None, "resetPassword", "Smith", smith_id, changes)
    if smith is not None and token is not None:
        minutes = max(1, ctx.resources.settings.password_reset_ttl_s // 60)
        body = (
            "Someone, hopefully you, asked to reset the password of your Sepulki Hammer account.\n\n"
            f"Choose a new password with this link; it works once, for {minutes} minutes:\n\n"
            f"{_link(ctx, '/reset-password', f'token={token}')}\n\n"
            "If you did not ask for this, ignore this mail: your password stays as it is.\n"
        )
        task = asyncio.create_task(
            _deliver(ctx.resources.mailer, smith["email"], "Reset your Sepulki Hammer password", body)
        )
        _deliveries.add(task)
        task.add_done_callback(_deliveries.discard)
    return True


async def confirm_password_reset(ctx: Context, token: str, new_password: str) -> dict[str, Any]:
    """Sets the password; the link and every other outstanding one of the account stop
    working, and so does every session of the account."""
    digest = secret_digest(token)
    target = await ctx.db.fetchrow(LIVE_RESET, digest)
    if target is None:
        raise Invalid(INVALID_RESET, field="token")
    await password_policy.check(
        new_password, field="newPassword", user_inputs=(target["email"], target["name"])
    )
    password_hash = await ctx.resources.passwords.hash(new_password)
    async with ctx.db.acquire() as conn, conn.transaction():
        smith_id = await conn.fetchval(USE_RESET, digest)
        row = await conn.fetchrow(SET_PASSWORD, smith_id, password_hash) if smith_id else None
        if row is None:
            raise Invalid(INVALID_RESET, field="token")
        await conn.execute(USE_ALL_RESETS, smith_id)
        revoked = await revoke_smith_sessions(conn, smith_id, reason="password_reset")
        changes = {"password": "reset", "sessionsRevoked": revoked_count(revoked)}
        await audit.record(conn, ctx, smith_id, "confirmPasswordReset", "Smith", smith_id, changes)
    await announce(ctx.events, revoked)
    # Whoever holds the mailbox proved who they are: a lockout from earlier guesses ends.
    await clear_login_failures(ctx, row["email"])
    return shown_to_self(smith_view(row))


async def change_password(ctx: Context, viewer: Viewer, old: str, new: str) -> dict[str, Any]:
    """Checks the current password (wrong guesses count towards the sign-in lockout of the
    account, so a stolen access token cannot be used to guess it), sets the new one and revokes
    every other session of the smith."""
    limiter = ctx.resources.limiter
    await limiter.check("login_lockout", viewer.email, LOCKED)
    current = await ctx.db.fetchval(PASSWORD_HASH_OF, viewer.id)
    if current is None or not await ctx.resources.passwords.verify(current, old):
        await limiter.hit("login_lockout", viewer.email, LOCKED)
        raise Invalid("The current password is incorrect", field="old")
    if new == old:
        raise Invalid("The new password must differ from the current one", field="new")
    await password_policy.check(new, field="new", user_inputs=(viewer.email, viewer.name))
    password_hash = await ctx.resources.passwords.hash(new)
    async with ctx.db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(SET_PASSWORD, viewer.id, password_hash)
        if row is None:
            raise NotFound.of("Smith", viewer.id)
        await conn.execute(USE_ALL_RESETS, viewer.id)
        revoked = await revoke_smith_sessions(
            conn, viewer.id, reason="password_changed", keep=viewer.session_id
        )
        changes = {"password": "changed", "sessionsRevoked": revoked_count(revoked)}
        await audit.record(conn, ctx, viewer.id, "changePassword", "Smith", viewer.id, changes)
    await announce(ctx.events, revoked)
    return smith_view(row)


def revoked_count(revoked: Recorded | None) -> int:
    return len(revoked.payload["sessionIds"]) if revoked is not None else 0


# Profile


async def update_profile(ctx: Context, viewer: Viewer, data: dict[str, Any]) -> dict[str, Any]:
    """Changes what is given; an omitted or null field stays as it is."""
    name = data.get("name")
    if name is not None:
        name = required_text(name, "name", max_length=MAX_NAME_LENGTH)
    preferences = data.get("preferences")
    if preferences is not None:
        if not isinstance(preferences, dict):
            raise Invalid("preferences must be a JSON object", field="preferences")
        if len(json.dumps(preferences).encode()) > MAX_PREFERENCES_BYTES:
            raise Invalid(
                f"preferences must be at most {MAX_PREFERENCES_BYTES} bytes of JSON", field="preferences"
            )
    async with ctx.db.acquire() as conn, conn.transaction():
        before = returned(await conn.fetchrow(PROFILE_FOR_UPDATE, viewer.id))
        row = await conn.fetchrow(UPDATE_PROFILE, viewer.id, name, preferences)
        changes: dict[str, Any] = {}
        if name is not None and name != before["name"]:
            changes["name"] = {"from": before["name"], "to": name}
        if preferences is not None and preferences != before["preferences"]:
            changes["preferences"] = {"from": before["preferences"], "to": preferences}
        await audit.record(conn, ctx, viewer.id, "updateProfile", "Smith", viewer.id, changes)
    return smith_view(row)
