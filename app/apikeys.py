"""Robot API keys: how admins issue, rotate, list and revoke them, and how a key presented by a
robot (HTTP ingest, `X-API-Key`) is checked.

A key reads `sk_robot_<8 chars>_<43 chars>`. Only its first part (`sk_robot_<8 chars>`, the
`prefix`, unique) and a hash of the whole key are stored: the plaintext is shown once, when the
key is created or rotated, and cannot be recovered afterwards.
"""

from __future__ import annotations

import hmac
import secrets
import string
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from app import audit
from app.context import Context, Viewer
from app.core.errors import GRAPHQL_ONLY, Conflict, DomainError, Invalid, NotFound
from app.infra import broker_accounts
from app.infra.db import Connection, Pool, returned
from app.infra.security import secret_digest

KEY_SCHEME = "sk_robot_"
PREFIX_CHARS = 8
# 32 random bytes: 256 bits, beyond any guessing, so a fast hash is enough (see `app.security.secret_digest`).
SECRET_BYTES = 32
MAX_EXPIRY_DAYS = 3650
MAX_NAME_LENGTH = 100
# last_used_at is a hint for admins ("is this key still in use?"), not an access log: writing it
# on every telemetry request would turn each read into a write.
LAST_USED_RESOLUTION_S = 60.0
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits

# Key rows leave this module with every column but key_hash.
LIVE_ROBOT = "SELECT id FROM robots WHERE id = $1 AND deleted_at IS NULL"
INSERT_KEY = """
INSERT INTO api_keys (robot_id, prefix, key_hash, name, created_by, expires_at)
VALUES ($1, $2, $3, $4, $5, now() + $6::interval)
RETURNING id, robot_id, name, prefix, created_by, created_at, expires_at, last_used_at, revoked_at
"""
# A deleted robot's keys are listed no more (they stopped working with it, see KEY_BY_PREFIX).
KEYS_OF_ROBOT = """
SELECT k.id, k.robot_id, k.name, k.prefix, k.created_by, k.created_at, k.expires_at, k.last_used_at,
       k.revoked_at
FROM api_keys k JOIN robots r ON r.id = k.robot_id AND r.deleted_at IS NULL
WHERE k.robot_id = $1
ORDER BY k.created_at DESC, k.id
"""
LOCK_KEY = """
SELECT id, robot_id, name, prefix, created_by, created_at, expires_at, last_used_at, revoked_at
FROM api_keys WHERE id = $1
FOR UPDATE
"""
REVOKE_KEY = """
UPDATE api_keys SET revoked_at = now() WHERE id = $1
RETURNING id, robot_id, name, prefix, created_by, created_at, expires_at, last_used_at, revoked_at
"""
REVOKE_PREFIXES = "UPDATE api_keys SET revoked_at = now() WHERE prefix = ANY($1) AND revoked_at IS NULL"
# The key's robot must still exist: deleting a robot disables its keys without touching them.
KEY_BY_PREFIX = """
SELECT k.id, k.robot_id, k.key_hash, k.expires_at, k.revoked_at, k.last_used_at
FROM api_keys k JOIN robots r ON r.id = k.robot_id AND r.deleted_at IS NULL
WHERE k.prefix = $1
"""
TOUCH_KEY = """
UPDATE api_keys SET last_used_at = now()
WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - make_interval(secs => $2))
"""


def generate_key() -> tuple[str, str]:
    """A fresh key and its stored prefix."""
    short = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(PREFIX_CHARS))
    prefix = f"{KEY_SCHEME}{short}"
    return f"{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}", prefix


def key_prefix(key: str) -> str | None:
    """The prefix a well-formed key starts with, or None for anything else."""
    if not key.startswith(KEY_SCHEME):
        return None
    end = len(KEY_SCHEME) + PREFIX_CHARS
    if len(key) <= end + 1 or key[end] != "_":
        return None
    return key[:end]


def check_expiry_days(days: int | None) -> int | None:
    if days is not None and not 1 <= days <= MAX_EXPIRY_DAYS:
        raise Invalid(
            f"expiresInDays must be between 1 and {MAX_EXPIRY_DAYS}, or null for no expiry",
            field="expiresInDays",
        )
    return days


def check_name(name: str | None) -> str | None:
    text = (name or "").strip()
    if len(text) > MAX_NAME_LENGTH:
        raise Invalid(f"name must be at most {MAX_NAME_LENGTH} characters", field="name")
    return text or None


async def list_keys(pool: Pool, robot_id: str) -> list[dict[str, Any]]:
    """Every key of a robot, newest first, revoked and expired ones included (never the hash)."""
    return [dict(row) for row in await pool.fetch(KEYS_OF_ROBOT, robot_id)]


async def _insert(
    conn: Connection,
    robot_id: str,
    name: str | None,
    created_by: str | None,
    lifetime: timedelta | None,
) -> tuple[dict[str, Any], str]:
    # A prefix collision (36^8 values) is astronomically rare; a savepoint lets us draw again.
    for _attempt in range(3):
        key, prefix = generate_key()
        try:
            async with conn.transaction():
                row = returned(
                    await conn.fetchrow(
                        INSERT_KEY, robot_id, prefix, secret_digest(key), name, created_by, lifetime
                    )
                )
        except asyncpg.UniqueViolationError:
            continue
        return dict(row), key
    raise Conflict("Could not draw a unique key prefix, try again")


async def _grant_broker_account(ctx: Context, row: dict[str, Any], key: str) -> None:
    """The key's MQTT account, before the key's transaction commits: if the broker cannot take
    it, the mutation fails (SERVICE_UNAVAILABLE) and no key exists (app/broker_accounts.py)."""
    account = (str(row["robot_id"]), row["prefix"], key)
    await broker_accounts.grant(ctx.resources.settings.mqtt_admin_url, [account])


async def issue_in(
    ctx: Context, conn: Connection, robot_id: str, name: str | None, created_by: str | None
) -> tuple[dict[str, Any], str]:
    """A key that never expires for a robot written in the caller's transaction (registerRobot),
    with its broker account granted before that transaction commits; (row, plaintext key)."""
    row, key = await _insert(conn, robot_id, check_name(name), created_by, None)
    await _grant_broker_account(ctx, row, key)
    return row, key


async def issue_for_service(
    pool: Pool, admin_url: str | None, robot_ids: list[str], name: str, lifetime: timedelta
) -> dict[str, tuple[str, str]]:
    """Keys the service issues itself (no smith: `created_by` is null), one per robot, with their
    broker accounts: {robot id: (prefix, key)}. Used by `sepulki simulate` against a broker that
    requires robots' accounts; `revoke_for_service` ends them."""
    async with pool.acquire() as conn, conn.transaction():
        issued = {}
        for robot_id in robot_ids:
            row, key = await _insert(conn, robot_id, name, None, lifetime)
            issued[robot_id] = (row["prefix"], key)
        await broker_accounts.grant(admin_url, [(r, p, k) for r, (p, k) in issued.items()])
    return issued


async def revoke_for_service(pool: Pool, admin_url: str | None, prefixes: list[str]) -> None:
    await pool.execute(REVOKE_PREFIXES, prefixes)
    await broker_accounts.revoke_quietly(admin_url, *prefixes)


def _audit_view(row: dict[str, Any]) -> dict[str, Any]:
    # Never the key nor its hash: audit rows are readable by more people than keys should be.
    return {
        "robotId": row["robot_id"],
        "name": row["name"],
        "prefix": row["prefix"],
        "expiresAt": row["expires_at"].isoformat() if row["expires_at"] else None,
    }


async def create(
    ctx: Context, viewer: Viewer, robot_id: str, name: str | None, expires_in_days: int | None
) -> dict[str, Any]:
    """A new key for the robot; the payload carries its plaintext, the only time it is shown."""
    try:
        name = check_name(name)
        days = check_expiry_days(expires_in_days)
        lifetime = timedelta(days=days) if days is not None else None
        async with ctx.db.acquire() as conn, conn.transaction():
            if await conn.fetchval(LIVE_ROBOT, robot_id) is None:
                raise NotFound.of("Robot", robot_id)
            row, key = await _insert(conn, robot_id, name, viewer.id, lifetime)
            await _grant_broker_account(ctx, row, key)
            await audit.record(
                conn, ctx, viewer.id, "createRobotApiKey", "RobotApiKey", row["id"], _audit_view(row)
            )
    except GRAPHQL_ONLY:
        raise
    except DomainError as exc:
        return {"api_key": None, "key": None, "errors": [exc.as_payload_error()]}
    return {"api_key": row, "key": key, "errors": None}


async def rotate(ctx: Context, viewer: Viewer, key_id: str) -> dict[str, Any]:
    """Revokes the key and issues its replacement for the same robot, with the same name and the
    same lifetime (counted from now). One transaction: the old key stops working at the commit
    that makes the new one usable, so a robot switches keys with a single restart."""
    try:
        async with ctx.db.acquire() as conn, conn.transaction():
            old = await conn.fetchrow(LOCK_KEY, key_id)
            if old is None:
                raise NotFound.of("RobotApiKey", key_id)
            if old["revoked_at"] is not None:
                raise Conflict("A revoked key cannot be rotated; create a new key instead", field="id")
            if await conn.fetchval(LIVE_ROBOT, old["robot_id"]) is None:
                raise NotFound.of("Robot", old["robot_id"])
            lifetime = old["expires_at"] - old["created_at"] if old["expires_at"] else None
            await conn.execute(REVOKE_KEY, key_id)
            row, key = await _insert(conn, old["robot_id"], old["name"], viewer.id, lifetime)
            await _grant_broker_account(ctx, row, key)
            changes = {"replaces": key_id, "revokedPrefix": old["prefix"], **_audit_view(row)}
            await audit.record(conn, ctx, viewer.id, "rotateRobotApiKey", "RobotApiKey", row["id"], changes)
    except GRAPHQL_ONLY:
        raise
    except DomainError as exc:
        return {"api_key": None, "key": None, "errors": [exc.as_payload_error()]}
    await broker_accounts.revoke_quietly(ctx.resources.settings.mqtt_admin_url, old["prefix"])
    return {"api_key": row, "key": key, "errors": None}


async def revoke(ctx: Context, viewer: Viewer, key_id: str) -> dict[str, Any]:
    """Revokes the key at once; revoking a revoked key changes nothing and returns it as it is."""
    async with ctx.db.acquire() as conn, conn.transaction():
        old = await conn.fetchrow(LOCK_KEY, key_id)
        if old is None:
            raise NotFound.of("RobotApiKey", key_id)
        if old["revoked_at"] is not None:
            return dict(old)
        row = dict(returned(await conn.fetchrow(REVOKE_KEY, key_id)))
        changes = {
            "robotId": row["robot_id"],
            "prefix": row["prefix"],
            "revokedAt": row["revoked_at"].isoformat(),
        }
        await audit.record(conn, ctx, viewer.id, "revokeRobotApiKey", "RobotApiKey", key_id, changes)
    await broker_accounts.revoke_quietly(ctx.resources.settings.mqtt_admin_url, row["prefix"])
    return row


async def authenticate(pool: Pool, key: str) -> str | None:
    """The robot id a presented key belongs to, or None when the key is malformed, unknown,
    wrong, revoked, expired, or its robot deleted. One indexed read; at most one write a minute."""
    prefix = key_prefix(key.strip())
    if prefix is None:
        return None
    row = await pool.fetchrow(KEY_BY_PREFIX, prefix)
    if row is None:
        return None
    # Constant-time comparison: response timing must not reveal how much of a guess was right.
    if not hmac.compare_digest(row["key_hash"], secret_digest(key.strip())):
        return None
    if row["revoked_at"] is not None:
        return None
    if row["expires_at"] is not None and row["expires_at"] <= datetime.now(UTC):
        return None
    last_used = row["last_used_at"]
    if last_used is None or (datetime.now(UTC) - last_used).total_seconds() >= LAST_USED_RESOLUTION_S:
        # The UPDATE re-checks the age, so replicas racing on the same key write it once.
        await pool.execute(TOUCH_KEY, row["id"], LAST_USED_RESOLUTION_S)
    robot_id: str = row["robot_id"]
    return robot_id


# Keys whose broker account may stay: live, unexpired, of a robot that exists.
LIVE_KEYS = """
SELECT k.prefix, k.robot_id FROM api_keys k JOIN robots r ON r.id = k.robot_id AND r.deleted_at IS NULL
WHERE k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())
"""


async def live_keys(pool: Pool) -> dict[str, str]:
    """The keys whose broker accounts may stay: {prefix: robot id, the account's client id}."""
    return {row["prefix"]: str(row["robot_id"]) for row in await pool.fetch(LIVE_KEYS)}


async def reconcile_broker_accounts(pool: Pool, admin_url: str) -> list[str]:
    """Deletes the broker accounts of keys that may no longer be used and binds the others to
    their robot's client id; returns the deleted usernames."""
    return await broker_accounts.reconcile(admin_url, lambda: live_keys(pool))
