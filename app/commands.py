"""Commands to robots, as an outbox: the command is a row first, written in the transaction that
decided it; the dispatcher then publishes it QoS 1 on `robots/{robotId}/commands`, the robot's
acknowledgements (`robots/{robotId}/commands/ack`, applied by the ingest pipeline) move it on,
and the sweeper expires or times out what is left.

    QUEUED -> SENT -> RECEIVED -> SUCCEEDED | FAILED     (SENT -> SUCCEEDED | FAILED too)
    QUEUED past expires_at -> EXPIRED
    SENT or RECEIVED, no further ack within command_ack_timeout_s -> TIMED_OUT

Every change is an event_log row written in its transaction, published after commit on
`commands:{robotId}` and `commands:*`. Delivery is at least once: a dispatcher that dies after
publishing but before committing SENT leaves the row QUEUED, and another sends it again, so a
robot must treat a repeated commandId as the same command. The dispatcher and the sweeper are
app.workers.commands; this module holds the states, their SQL and the rules.

Acks that change nothing are ignored and logged, never dead-lettered: a repeated ack is what
at-least-once MQTT delivery produces, and a late ack for a TIMED_OUT command does not reopen it
(the timeout already told the operator). An ack for an unknown command or for another robot's
command is logged as a warning: it points at a misbehaving robot.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from app import audit
from app.context import Context, Viewer
from app.core.channels import channels
from app.core.errors import Invalid, NotFound
from app.core.jsonable import jsonable
from app.infra.bus import Events
from app.infra.db import Connection, Pool, fetch_by_ids

log = logging.getLogger("sepulki.commands")

TYPE_PATTERN = re.compile(r"[A-Z0-9_]{1,64}")
MAX_TTL_S = 86400
MAX_PARAMS_BYTES = 65536
MAX_DETAIL_CHARS = 1000
ACK_STATES = frozenset({"RECEIVED", "SUCCEEDED", "FAILED"})
# LISTEN/NOTIFY channel: enqueue notifies it (delivered at commit), the dispatcher wakes up.
NOTIFY_CHANNEL = "robot_commands"
SWEEP_BATCH = 1000
# pg_try_advisory_lock key: one sweeper per database acts, whatever the number of replicas.
SWEEPER_LOCK = 0x5E9C_0DE5

# issued_at is the clock's time, not now() (the transaction's start): commands issued in one
# transaction (a preemption's CANCEL_TASK, then the urgent DISPATCH_TASK) keep their order in
# the dispatcher's queue (CLAIM) and in a robot's command history.
INSERT_COMMANDS = """
INSERT INTO robot_commands (robot_id, type, params, task_id, issued_by, issued_at, expires_at)
SELECT robot_id, $2, $3, $4, $5, clock_timestamp(), clock_timestamp() + $6::int * interval '1 second'
FROM unnest($1::uuid[]) AS u(robot_id)
RETURNING *
"""
NOTIFY = "SELECT pg_notify('robot_commands', '')"
LOG_EVENTS = """
INSERT INTO event_log (channels, payload)
SELECT ARRAY[u.channel, $2::text], u.payload
FROM unnest($1::text[], $3::jsonb[]) WITH ORDINALITY AS u(channel, payload, n)
ORDER BY u.n
RETURNING id, payload->>'id' AS command_id, payload->>'state' AS state
"""
ROBOT_EXISTS = "SELECT id FROM robots WHERE id = $1 AND deleted_at IS NULL"
# Commands of a deleted robot leave the API with it.
COMMANDS_OF_ROBOT = """
SELECT c.* FROM robot_commands c JOIN robots r ON r.id = c.robot_id AND r.deleted_at IS NULL
WHERE c.robot_id = $1
ORDER BY c.issued_at DESC, c.id
LIMIT $2 OFFSET $3
"""
COMMANDS_BY_ID = """
SELECT c.* FROM robot_commands c JOIN robots r ON r.id = c.robot_id AND r.deleted_at IS NULL
WHERE c.id = ANY($1::uuid[])
"""
# One statement per ack kind; RECEIVED acks are applied first, so RECEIVED then SUCCEEDED in one
# ingest batch moves a command through both. The robot must match: a robot acks only its own.
APPLY_ACKS = """
UPDATE robot_commands c SET
  state = a.state::command_state,
  detail = COALESCE(a.detail, c.detail),
  received_at = CASE WHEN a.state = 'RECEIVED' THEN a.at ELSE c.received_at END,
  completed_at = CASE WHEN a.state = 'RECEIVED' THEN c.completed_at ELSE a.at END
FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[])
  AS a(id, robot_id, state, detail, at)
WHERE c.id = a.id AND c.robot_id = a.robot_id
  AND c.state = ANY($6::command_state[])
RETURNING c.*
"""
COMMANDS_SEEN = "SELECT id, robot_id, state::text AS state FROM robot_commands WHERE id = ANY($1::uuid[])"
# Emergency stops first; SKIP LOCKED lets several dispatchers split the queue without waiting.
CLAIM = """
SELECT * FROM robot_commands
WHERE state = 'QUEUED' AND expires_at > now()
ORDER BY (type = 'EMERGENCY_STOP') DESC, issued_at, id
LIMIT $1
FOR UPDATE SKIP LOCKED
"""
MARK_SENT = """
UPDATE robot_commands SET state = 'SENT', sent_at = now()
WHERE id = ANY($1::uuid[]) AND state = 'QUEUED'
RETURNING *
"""
EXPIRE = """
UPDATE robot_commands c SET state = 'EXPIRED', completed_at = now()
FROM (SELECT id FROM robot_commands
      WHERE state = 'QUEUED' AND expires_at <= now()
      ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED) due
WHERE c.id = due.id
RETURNING c.*
"""
# The timeout bounds each step: sent -> received, received -> completed.
TIME_OUT = """
UPDATE robot_commands c SET state = 'TIMED_OUT', completed_at = now()
FROM (SELECT id FROM robot_commands
      WHERE state IN ('SENT', 'RECEIVED')
        AND COALESCE(received_at, sent_at) <= now() - $1::int * interval '1 second'
      LIMIT $2 FOR UPDATE SKIP LOCKED) due
WHERE c.id = due.id
RETURNING c.*
"""
TRY_LOCK = "SELECT pg_try_advisory_lock($1)"

_DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


async def _record(conn: Connection, rows: list[Any]) -> list[dict[str, Any]]:
    """The changed rows as event payloads, logged in the caller's transaction; each carries its
    `event_id` for `publish`."""
    if not rows:
        return []
    changes = [jsonable(dict(row)) for row in rows]
    logged = await conn.fetch(
        LOG_EVENTS,
        [channels.commands(c["robot_id"]) for c in changes],
        channels.COMMANDS_ALL,
        changes,
    )
    # One statement may move a command twice (RECEIVED, then SUCCEEDED), never to one state twice.
    event_ids = {(r["command_id"], r["state"]): r["id"] for r in logged}
    for change in changes:
        change["event_id"] = event_ids[change["id"], change["state"]]
    return changes


async def publish(events: Events, changes: list[dict[str, Any]]) -> None:
    """After commit: each change on its robot's channel and on the all-robots channel."""
    for change in changes:
        payload = {k: v for k, v in change.items() if k != "event_id"}
        names = [channels.commands(change["robot_id"]), channels.COMMANDS_ALL]
        await events.publish(names, change["event_id"], payload)


async def enqueue(
    conn: Connection,
    robot_ids: list[str],
    type: str,
    params: dict[str, Any],
    *,
    issued_by: str | None,
    task_id: str | None = None,
    ttl_s: int,
) -> list[dict[str, Any]]:
    """QUEUED commands, one per robot, in the caller's transaction; `publish` them after commit."""
    if not robot_ids:
        return []
    rows = await conn.fetch(INSERT_COMMANDS, robot_ids, type, params, task_id, issued_by, ttl_s)
    await conn.execute(NOTIFY)
    return await _record(conn, rows)


Ack = tuple[str, str, str, str | None, datetime]


def _ack_row(ack: dict[str, Any]) -> Ack | None:
    """The ack as statement arguments (command, robot, state, detail, time), None when it
    cannot be applied at all: a malformed id would abort the caller's whole transaction."""
    state, detail = ack.get("state"), ack.get("detail")
    try:
        command_id, robot_id = (str(uuid.UUID(str(ack.get(k)))) for k in ("command_id", "robot_id"))
    except ValueError:
        return None
    if state not in ACK_STATES:
        return None
    at = ack.get("received_at")
    at = at if isinstance(at, datetime) else datetime.now(UTC)
    detail = str(detail)[:MAX_DETAIL_CHARS] if detail is not None else None
    return command_id, robot_id, state, detail, at


async def apply_acks(conn: Connection, acks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Applies robots' acks (`robot_id`, `command_id`, `state`, `detail`, `received_at`) in the
    caller's transaction, in their order; returns the changed commands for `publish` after commit.
    Acks that change nothing are logged and left out (see the module docstring)."""
    received: dict[str, Ack] = {}
    finished: dict[str, Ack] = {}
    for ack in acks:
        row = _ack_row(ack)
        if row is None:
            log.warning("ignored malformed command ack %r", ack)
            continue
        # The first ack of a kind wins; a repeat is a redelivery.
        (received if row[2] == "RECEIVED" else finished).setdefault(row[0], row)
    changed: list[Any] = []
    for group, from_states in ((received, ["QUEUED", "SENT"]), (finished, ["SENT", "RECEIVED"])):
        if group:
            columns = list(zip(*group.values(), strict=True))
            changed += await conn.fetch(APPLY_ACKS, *map(list, columns), from_states)
    ignored = (set(received) | set(finished)) - {r["id"] for r in changed}
    if ignored:
        await _log_ignored(conn, ignored, {**finished, **received})
    return await _record(conn, changed)


async def _log_ignored(conn: Connection, ids: set[str], acks: dict[str, Ack]) -> None:
    known = {r["id"]: r for r in await conn.fetch(COMMANDS_SEEN, list(ids))}
    for command_id in sorted(ids):
        robot_id, state = acks[command_id][1], acks[command_id][2]
        row = known.get(command_id)
        if row is None:
            log.warning("robot %s acked unknown command %s", robot_id, command_id)
        elif row["robot_id"] != robot_id:
            log.warning("robot %s acked command %s of robot %s", robot_id, command_id, row["robot_id"])
        else:
            # A redelivered ack, or one arriving after the timeout: nothing to change.
            log.debug("ignored %s ack of command %s, already %s", state, command_id, row["state"])


# --- GraphQL -----------------------------------------------------------------------------------


async def commands_by_id(pool: Pool, ids: list[str]) -> list[dict[str, Any] | None]:
    return await fetch_by_ids(pool, COMMANDS_BY_ID, ids)


async def list_commands(pool: Pool, robot_id: str, limit: int, offset: int) -> list[dict[str, Any]]:
    return [dict(r) for r in await pool.fetch(COMMANDS_OF_ROBOT, robot_id, limit, offset)]


def check_command(
    type: str, params: Any, ttl_seconds: int | None, default_ttl_s: int
) -> tuple[dict[str, Any], int]:
    """The params object and the TTL in seconds, or BAD_USER_INPUT naming the argument."""
    if not type:
        raise Invalid("type is required", field="type")
    if len(type) > 64:
        raise Invalid("type must be at most 64 characters", field="type")
    if not TYPE_PATTERN.fullmatch(type):
        raise Invalid("type may hold only A-Z, 0-9 and _, e.g. MOVE_TO", field="type")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise Invalid("params must be a JSON object", field="params")
    if len(json.dumps(params)) > MAX_PARAMS_BYTES:
        raise Invalid(f"params must be at most {MAX_PARAMS_BYTES} bytes of JSON", field="params")
    ttl = default_ttl_s if ttl_seconds is None else ttl_seconds
    if not 1 <= ttl <= MAX_TTL_S:
        raise Invalid(f"ttlSeconds must be between 1 and {MAX_TTL_S}, got {ttl}", field="ttlSeconds")
    return params, ttl


async def send(
    ctx: Context, viewer: Viewer, robot_id: str, type: str, params: Any, ttl_seconds: int | None
) -> dict[str, Any]:
    params, ttl = check_command(type, params, ttl_seconds, ctx.resources.settings.command_ttl_s)
    async with ctx.db.acquire() as conn, conn.transaction():
        if await conn.fetchval(ROBOT_EXISTS, robot_id) is None:
            raise NotFound.of("Robot", robot_id)
        (command,) = await enqueue(conn, [robot_id], type, params, issued_by=viewer.id, ttl_s=ttl)
        changes = {"robotId": robot_id, "type": type, "params": params, "ttlSeconds": ttl}
        await audit.record(conn, ctx, viewer.id, "sendRobotCommand", "RobotCommand", command["id"], changes)
    await publish(ctx.events, [command])
    return command


async def sweep(conn: Connection, ack_timeout_s: int) -> list[dict[str, Any]]:
    """One pass: QUEUED past expiry -> EXPIRED, SENT/RECEIVED past the ack timeout -> TIMED_OUT.
    Returns the changes (at most SWEEP_BATCH of each) for `publish`."""
    async with conn.transaction():
        expired = await conn.fetch(EXPIRE, SWEEP_BATCH)
        timed_out = await conn.fetch(TIME_OUT, ack_timeout_s, SWEEP_BATCH)
        return await _record(conn, [*expired, *timed_out])


async def claim(conn: Connection, limit: int) -> list[asyncpg.Record]:
    """Up to `limit` QUEUED commands, locked for this transaction (emergency stops first)."""
    rows: list[asyncpg.Record] = await conn.fetch(CLAIM, limit)
    return rows


async def mark_sent(conn: Connection, ids: list[str]) -> list[dict[str, Any]]:
    """The claimed commands handed to the broker -> SENT; returns the changes for `publish`."""
    return await _record(conn, await conn.fetch(MARK_SENT, ids)) if ids else []


def command_message(row: Any) -> tuple[str, bytes]:
    """The topic and payload a robot receives for a command row."""
    message = {
        "commandId": row["id"],
        "type": row["type"],
        "params": row["params"],
        "issuedAt": row["issued_at"].isoformat(),
        "expiresAt": row["expires_at"].isoformat(),
    }
    return f"robots/{row['robot_id']}/commands", json.dumps(message).encode()


async def try_lead_sweeping(conn: Connection) -> bool:
    """Takes the sweeper's session advisory lock on this connection, if no other replica holds it."""
    return bool(await conn.fetchval(TRY_LOCK, SWEEPER_LOCK))
