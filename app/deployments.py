"""Deployments: quenching an ingot to a share of a fleet, recalling a fleet to a version, and
folding robots' results back in (docs/builds.md).

A deployment is a row plus one `deployment_targets` row per robot it addresses; each target
carries an UPDATE_INGOT command through the command outbox (app.commands), so delivery, expiry
and timeouts are the outbox's. A robot acknowledges SUCCEEDED with the version it now runs as
`detail`; `advance` (run by app.workers.deployments) turns finished commands into target results,
points the robots that report the expected version at their new ingot, and closes a deployment
once no target is pending:

    deployment IN_PROGRESS -> COMPLETED (every target succeeded) | PARTIAL (some) | FAILED (none)
    target     PENDING -> SUCCEEDED | FAILED (command FAILED, EXPIRED, TIMED_OUT, or another version)
"""

from __future__ import annotations

import base64
import binascii
import math
from datetime import datetime
from typing import Any

from app import audit, commands
from app.context import Context, Viewer
from app.core.errors import Conflict, Invalid, NotFound
from app.core.validation import required_text
from app.infra.db import Connection, Pool, fetch_by_ids, group_rows, returned
from app.infra.eventlog import Recorded
from app.robots import record_changes

UPDATE_COMMAND = "UPDATE_INGOT"
DEPLOYABLE = ("READY", "TEMPERED", "DEPLOYED")
MAX_PAGE = 100
OPEN_BATCH = 50

LOCK_FLEET = "SELECT id FROM fleets WHERE id = $1 AND deleted_at IS NULL FOR UPDATE"
INGOT = """
SELECT i.id, i.sepulka_id, i.version, i.build_hash, i.status::text AS status, i.artifacts
FROM ingots i JOIN sepulkas s ON s.id = i.sepulka_id AND s.deleted_at IS NULL WHERE i.id = $1
"""
OPEN_OF_FLEET = (
    "SELECT id FROM deployments WHERE fleet_id = $1 AND status IN ('PENDING', 'IN_PROGRESS') LIMIT 1"
)
# Robots already on the ingot go last and offline robots after online ones: a partial rollout
# reaches robots that need it and can answer.
QUENCH_CANDIDATES = """
SELECT id, name, current_ingot_id FROM robots
WHERE fleet_id = $1 AND sepulka_id = $2 AND deleted_at IS NULL
ORDER BY (current_ingot_id IS NOT DISTINCT FROM $3) , (status = 'OFFLINE'), name, id
"""
RECALL_TARGETS = """
SELECT r.id, r.name, r.current_ingot_id, target.id AS target_ingot_id, target.version, target.build_hash,
       target.artifacts
FROM robots r
LEFT JOIN LATERAL (
  SELECT i.id, i.version, i.build_hash, i.artifacts FROM ingots i
  WHERE i.sepulka_id = r.sepulka_id AND i.version = $2 AND i.status IN ('READY', 'TEMPERED', 'DEPLOYED')
  ORDER BY i.created_at DESC LIMIT 1
) target ON true
WHERE r.fleet_id = $1 AND r.deleted_at IS NULL
ORDER BY r.name, r.id
FOR UPDATE OF r
"""
INSERT_DEPLOYMENT = """
INSERT INTO deployments (ingot_id, fleet_id, status, rollout_percent, kind, details, to_version, created_by,
                         completed_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, CASE WHEN $3 IN ('PENDING', 'IN_PROGRESS') THEN NULL ELSE now() END)
RETURNING *
"""
INSERT_TARGETS = """
INSERT INTO deployment_targets
  (deployment_id, robot_id, from_ingot_id, to_ingot_id, command_id, state, detail)
SELECT $1, t.robot_id, t.from_id, t.to_id, t.command_id, t.state, t.detail
FROM unnest($2::uuid[], $3::uuid[], $4::uuid[], $5::uuid[], $6::text[], $7::text[])
  AS t(robot_id, from_id, to_id, command_id, state, detail)
"""
# One round of `advance`: the open deployments it holds (SKIP LOCKED: workers split them).
LOCK_OPEN = """
SELECT id, kind, ingot_id, to_version FROM deployments WHERE status IN ('PENDING', 'IN_PROGRESS')
ORDER BY created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED
"""
SETTLE_TARGETS = """
UPDATE deployment_targets t SET
  state = CASE WHEN c.state = 'SUCCEEDED' AND c.detail = d.to_version THEN 'SUCCEEDED' ELSE 'FAILED' END,
  reported_version = CASE WHEN c.state = 'SUCCEEDED' THEN c.detail END,
  detail = CASE
    WHEN c.state = 'SUCCEEDED' AND c.detail = d.to_version THEN NULL
    WHEN c.state = 'SUCCEEDED'
      THEN 'robot reports version ' || COALESCE(c.detail, '(none)') || ', expected ' || d.to_version
    ELSE 'command ' || c.state::text || COALESCE(': ' || c.detail, '') END,
  updated_at = now()
FROM deployments d, robot_commands c
WHERE d.id = ANY($1::uuid[]) AND t.deployment_id = d.id AND t.state = 'PENDING' AND c.id = t.command_id
  AND c.state IN ('SUCCEEDED', 'FAILED', 'EXPIRED', 'TIMED_OUT')
RETURNING t.robot_id, t.to_ingot_id, t.state
"""
MOVE_ROBOTS = """
UPDATE robots r SET current_ingot_id = m.ingot_id
FROM unnest($1::uuid[], $2::uuid[]) AS m(robot_id, ingot_id)
WHERE r.id = m.robot_id
RETURNING r.*
"""
CLOSE_FINISHED = """
UPDATE deployments d SET completed_at = now(), status = CASE
    WHEN s.ok = s.total THEN 'COMPLETED' WHEN s.ok = 0 THEN 'FAILED' ELSE 'PARTIAL' END
FROM (SELECT deployment_id, count(*) AS total, count(*) FILTER (WHERE state = 'SUCCEEDED') AS ok,
             count(*) FILTER (WHERE state = 'PENDING') AS pending
      FROM deployment_targets WHERE deployment_id = ANY($1::uuid[]) GROUP BY deployment_id) s
WHERE d.id = s.deployment_id AND s.pending = 0
RETURNING d.*
"""
MARK_DEPLOYED = (
    "UPDATE ingots SET status = 'DEPLOYED' WHERE id = ANY($1::uuid[]) AND status IN ('READY', 'TEMPERED')"
)
DEPLOYMENTS_BY_ID = "SELECT * FROM deployments WHERE id = ANY($1::uuid[])"
TARGETS_BY_DEPLOYMENT_ID = """
SELECT t.*, r.name AS robot_name FROM deployment_targets t JOIN robots r ON r.id = t.robot_id
WHERE t.deployment_id = ANY($1::uuid[]) ORDER BY r.name, t.robot_id
"""
# Newest first; $1 fleet, $2 ingot (either may be null), $3/$4 the cursor, $5 the page size + 1.
PAGE = """
SELECT * FROM deployments
WHERE ($1::uuid IS NULL OR fleet_id = $1) AND ($2::uuid IS NULL OR ingot_id = $2)
  AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
ORDER BY created_at DESC, id DESC LIMIT $5
"""
# One statement for the pages of many parents (a DataLoader batch): a window per parent.
PAGES_BY_FLEET = """
SELECT * FROM (
  SELECT d.*, row_number() OVER (PARTITION BY d.fleet_id ORDER BY d.created_at DESC, d.id DESC) AS n
  FROM deployments d
  WHERE d.fleet_id = ANY($1::uuid[]) AND ($2::timestamptz IS NULL OR (d.created_at, d.id) < ($2, $3::uuid))
) page WHERE n <= $4 ORDER BY created_at DESC, id DESC
"""
PAGES_BY_INGOT = """
SELECT * FROM (
  SELECT d.*, row_number() OVER (PARTITION BY d.ingot_id ORDER BY d.created_at DESC, d.id DESC) AS n
  FROM deployments d
  WHERE d.ingot_id = ANY($1::uuid[]) AND ($2::timestamptz IS NULL OR (d.created_at, d.id) < ($2, $3::uuid))
) page WHERE n <= $4 ORDER BY created_at DESC, id DESC
"""


def _update_params(deployment_id: str, ingot: Any) -> dict[str, Any]:
    """What a robot needs to fetch and verify the build it is told to run."""
    return {
        "deploymentId": deployment_id,
        "ingotId": ingot["id"],
        "version": ingot["version"],
        "buildHash": ingot["build_hash"],
        "artifacts": ingot["artifacts"],
    }


async def _start(
    conn: Connection,
    ctx: Context,
    viewer: Viewer,
    deployment: dict[str, Any],
    targets: list[tuple[Any, Any | None]],
) -> list[dict[str, Any]]:
    """Queues one UPDATE_INGOT per target with an ingot and records the targets; (robot, ingot)
    pairs without an ingot are recorded FAILED at once. Returns the commands to publish."""
    ttl = ctx.resources.settings.command_ttl_s
    queued: list[dict[str, Any]] = []
    rows: list[tuple[Any, ...]] = []
    for robot, ingot in targets:
        if ingot is None:
            rows.append(
                (
                    robot["id"],
                    robot["current_ingot_id"],
                    None,
                    None,
                    "FAILED",
                    "no such version for its sepulka",
                )
            )
            continue
        (command,) = await commands.enqueue(
            conn,
            [robot["id"]],
            UPDATE_COMMAND,
            _update_params(deployment["id"], ingot),
            issued_by=viewer.id,
            ttl_s=ttl,
        )
        queued.append(command)
        rows.append((robot["id"], robot["current_ingot_id"], ingot["id"], command["id"], "PENDING", None))
    columns = [list(c) for c in zip(*rows, strict=True)] if rows else [[]] * 6
    await conn.execute(INSERT_TARGETS, deployment["id"], *columns)
    return queued


async def quench(
    ctx: Context, viewer: Viewer, ingot_id: str, fleet_id: str, rollout_percent: int | None
) -> dict[str, Any]:
    percent = 100 if rollout_percent is None else rollout_percent
    if not 0 < percent <= 100:
        raise Invalid("rolloutPercent must be between 1 and 100", field="rolloutPercent")
    async with ctx.db.acquire() as conn, conn.transaction():
        if await conn.fetchrow(LOCK_FLEET, fleet_id) is None:
            raise NotFound.of("Fleet", fleet_id)
        ingot = await conn.fetchrow(INGOT, ingot_id)
        if ingot is None:
            raise NotFound.of("Ingot", ingot_id)
        if ingot["status"] not in DEPLOYABLE:
            raise Conflict(
                f"Ingot must be READY, TEMPERED or DEPLOYED, currently: {ingot['status']}", field="ingotId"
            )
        if await conn.fetchval(OPEN_OF_FLEET, fleet_id) is not None:
            raise Conflict("The fleet has a deployment in progress; wait for it to finish", field="fleetId")
        candidates = await conn.fetch(QUENCH_CANDIDATES, fleet_id, ingot["sepulka_id"], ingot_id)
        if not candidates:
            raise Invalid("The fleet has no robots built from this ingot's sepulka", field="fleetId")
        chosen = candidates[: math.ceil(len(candidates) * percent / 100)]
        details = {"robotIds": [r["id"] for r in chosen], "eligible": len(candidates)}
        deployment = dict(
            returned(
                await conn.fetchrow(
                    INSERT_DEPLOYMENT,
                    ingot_id,
                    fleet_id,
                    "IN_PROGRESS",
                    percent,
                    "QUENCH",
                    details,
                    ingot["version"],
                    viewer.id,
                )
            )
        )
        queued = await _start(conn, ctx, viewer, deployment, [(r, ingot) for r in chosen])
        changes = {
            "deploymentId": deployment["id"],
            "ingotId": ingot_id,
            "rolloutPercent": percent,
            **details,
        }
        await audit.record(conn, ctx, viewer.id, "quenchToFleet", "Fleet", fleet_id, changes)
    await commands.publish(ctx.events, queued)
    return deployment


def _recall_error(robot: Any, version: str) -> dict[str, Any]:
    message = (
        f"Robot {robot['name']} ({robot['id']}) has no READY, TEMPERED or DEPLOYED ingot of version "
        f"{version} built from its sepulka"
    )
    return {"code": NotFound.code, "message": message, "field": "robotId"}


async def recall(ctx: Context, viewer: Viewer, fleet_id: str, to_version: str) -> dict[str, Any]:
    """Rolls the fleet back to `to_version` through UPDATE_INGOT commands, like a quench at 100 %;
    robots without such an ingot are recorded FAILED and named in `errors`."""
    version = required_text(to_version, "toVersion", max_length=64)
    async with ctx.db.acquire() as conn, conn.transaction():
        if await conn.fetchrow(LOCK_FLEET, fleet_id) is None:
            raise NotFound.of("Fleet", fleet_id)
        if await conn.fetchval(OPEN_OF_FLEET, fleet_id) is not None:
            raise Conflict("The fleet has a deployment in progress; wait for it to finish", field="fleetId")
        robots = await conn.fetch(RECALL_TARGETS, fleet_id, version)
        if not robots:
            raise Invalid(f"Fleet {fleet_id} has no robots to recall", field="fleetId")
        movable = [r for r in robots if r["target_ingot_id"] is not None]
        failed = [r for r in robots if r["target_ingot_id"] is None]
        status = "IN_PROGRESS" if movable else "FAILED"
        # deployments.ingot_id is required: a failed recall records the ingot robots stayed on.
        ingot_id = movable[0]["target_ingot_id"] if movable else robots[0]["current_ingot_id"]
        details = {"robotIds": [r["id"] for r in movable], "failedRobotIds": [r["id"] for r in failed]}
        deployment = dict(
            returned(
                await conn.fetchrow(
                    INSERT_DEPLOYMENT, ingot_id, fleet_id, status, 100, "RECALL", details, version, viewer.id
                )
            )
        )
        targets = [
            (
                r,
                {
                    "id": r["target_ingot_id"],
                    "version": r["version"],
                    "build_hash": r["build_hash"],
                    "artifacts": r["artifacts"],
                }
                if r["target_ingot_id"]
                else None,
            )
            for r in robots
        ]
        queued = await _start(conn, ctx, viewer, deployment, targets)
        changes = {"deploymentId": deployment["id"], "status": status, "toVersion": version, **details}
        await audit.record(conn, ctx, viewer.id, "recallFleet", "Fleet", fleet_id, changes)
    await commands.publish(ctx.events, queued)
    errors = [_recall_error(r, version) for r in failed]
    return {"deployment": deployment, "errors": errors or None}


async def advance(conn: Connection) -> tuple[list[dict[str, Any]], list[Recorded]]:
    """One round over the open deployments this worker could lock: settles targets whose command
    finished, moves the robots that succeeded, closes finished deployments. Returns the closed
    deployments and the robot events to publish after commit."""
    async with conn.transaction():
        open_rows = await conn.fetch(LOCK_OPEN, OPEN_BATCH)
        if not open_rows:
            return [], []
        ids = [r["id"] for r in open_rows]
        settled = await conn.fetch(SETTLE_TARGETS, ids)
        ok = [r for r in settled if r["state"] == "SUCCEEDED"]
        moved = await conn.fetch(MOVE_ROBOTS, [r["robot_id"] for r in ok], [r["to_ingot_id"] for r in ok])
        events = await record_changes(conn, [dict(r) for r in moved])
        closed = [dict(r) for r in await conn.fetch(CLOSE_FINISHED, ids)]
        deployed = [d["ingot_id"] for d in closed if d["kind"] == "QUENCH" and d["status"] != "FAILED"]
        if deployed:
            await conn.execute(MARK_DEPLOYED, deployed)
    return closed, events


# --- GraphQL -----------------------------------------------------------------------------------


async def deployments_by_id(pool: Pool, ids: list[str]) -> list[dict[str, Any] | None]:
    return await fetch_by_ids(pool, DEPLOYMENTS_BY_ID, ids)


async def targets_by_deployment_id(pool: Pool, ids: list[str]) -> list[list[dict[str, Any]]]:
    grouped = group_rows(await pool.fetch(TARGETS_BY_DEPLOYMENT_ID, ids), "deployment_id")
    return [grouped.get(i, []) for i in ids]


def encode_cursor(row: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(f"{row['created_at'].isoformat()}|{row['id']}".encode()).decode()


def decode_cursor(cursor: str | None) -> tuple[datetime | None, str | None]:
    if cursor is None:
        return None, None
    try:
        stamp, _, ident = base64.urlsafe_b64decode(cursor.encode("ascii")).decode().partition("|")
        at = datetime.fromisoformat(stamp)
        if at.tzinfo is None or not ident:
            raise ValueError("not a cursor")
        return at, ident
    except (UnicodeError, ValueError, binascii.Error):
        raise Invalid("after is not a cursor of this connection", field="after") from None


def page_size(first: int | None) -> int:
    size = 20 if first is None else first
    if not 1 <= size <= MAX_PAGE:
        raise Invalid(f"first must be between 1 and {MAX_PAGE}", field="first")
    return size


def connection(rows: list[dict[str, Any]], size: int, after: str | None) -> dict[str, Any]:
    page = rows[:size]
    edges = [{"cursor": encode_cursor(r), "node": r} for r in page]
    return {
        "edges": edges,
        "page_info": {
            "has_next_page": len(rows) > size,
            "has_previous_page": after is not None,
            "start_cursor": edges[0]["cursor"] if edges else None,
            "end_cursor": edges[-1]["cursor"] if edges else None,
        },
    }


async def list_page(
    pool: Pool, fleet_id: str | None, ingot_id: str | None, first: int | None, after: str | None
) -> dict[str, Any]:
    size = page_size(first)
    at, ident = decode_cursor(after)
    rows = [dict(r) for r in await pool.fetch(PAGE, fleet_id, ingot_id, at, ident, size + 1)]
    return connection(rows, size, after)


PageKey = tuple[str, int, str | None]  # (parent id, first, after)


async def _pages(pool: Pool, sql: str, column: str, keys: list[PageKey]) -> list[dict[str, Any]]:
    """Pages for many parents: one statement per distinct (first, after), whatever the parents."""
    results: dict[PageKey, dict[str, Any]] = {}
    by_window: dict[tuple[int, str | None], list[str]] = {}
    for parent, size, after in keys:
        by_window.setdefault((size, after), []).append(parent)
    for (size, after), parents in by_window.items():
        at, ident = decode_cursor(after)
        grouped = group_rows(await pool.fetch(sql, parents, at, ident, size + 1), column)
        for parent in parents:
            results[parent, size, after] = connection(grouped.get(parent, []), size, after)
    return [results[k] for k in keys]


async def pages_by_fleet(pool: Pool, keys: list[PageKey]) -> list[dict[str, Any]]:
    return await _pages(pool, PAGES_BY_FLEET, "fleet_id", keys)


async def pages_by_ingot(pool: Pool, keys: list[PageKey]) -> list[dict[str, Any]]:
    return await _pages(pool, PAGES_BY_INGOT, "ingot_id", keys)
