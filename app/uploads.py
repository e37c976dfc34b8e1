"""Program and route uploads (GraphQL multipart requests): checks, storage, and the task they create.

An accepted file is stored (app.infra.storage, key `programs/<fileId>/<name>` or
`routes/<fileId>/<name>`), recorded in `uploaded_files`, and becomes a CUSTOM task, PENDING, with
parameters `{fileId, fileName, fileUrl, uploadType, size, sha256}` (+ `routeId`), assigned to the
robot, or to every robot of the fleet that is not OFFLINE. A route is also read into `routes`.
Limits: SEPULKI_UPLOAD_MAX_BYTES and the extensions of SEPULKI_UPLOAD_PROGRAM_TYPES /
SEPULKI_UPLOAD_ROUTE_TYPES. Malformed ids are GraphQL errors (BAD_USER_INPUT); everything else
the caller can fix is in the payload's `errors`, and then nothing is stored.
"""

from __future__ import annotations

import re
import uuid
from pathlib import PurePath
from typing import Any, Protocol, runtime_checkable

from app import audit
from app.context import Context, Viewer
from app.core import route_files
from app.core.errors import GRAPHQL_ONLY, DomainError, Invalid, NotFound
from app.core.validation import parse_id
from app.infra.db import returned

ROBOT = "SELECT id, fleet_id FROM robots WHERE id = $1 AND deleted_at IS NULL"
FLEET_EXISTS = "SELECT EXISTS (SELECT 1 FROM fleets WHERE id = $1 AND deleted_at IS NULL)"
ONLINE_ROBOTS = """
SELECT * FROM robots WHERE fleet_id = $1 AND deleted_at IS NULL AND status <> 'OFFLINE' ORDER BY name, id
"""
ROBOTS = "SELECT * FROM robots WHERE id = ANY($1::uuid[]) ORDER BY name, id"
INSERT_FILE = """
INSERT INTO uploaded_files (id, kind, file_name, content_type, storage_key, size, sha256, created_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
"""
INSERT_ROUTE = "INSERT INTO routes (name, waypoints, file_id, created_by) VALUES ($1, $2, $3, $4) RETURNING *"
INSERT_TASK = """
INSERT INTO tasks (name, description, type, parameters, status, priority, fleet_id, created_by)
VALUES ($1, $2, 'CUSTOM', $3, 'PENDING', 'NORMAL', $4, $5)
RETURNING id
"""
ASSIGN = "INSERT INTO task_robots (task_id, robot_id) SELECT $1, unnest($2::uuid[])"
LINK_FILE = "UPDATE uploaded_files SET task_id = $2 WHERE id = $1"
# A stored name keeps letters, digits, dot, dash and underscore: no path tricks in keys.
UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@runtime_checkable
class Upload(Protocol):
    """A file of a multipart request (Starlette's UploadFile is one)."""

    filename: str | None
    content_type: str | None

    async def read(self, size: int = -1) -> bytes: ...


def check_target(robot_id: str | None, fleet_id: str | None) -> tuple[str | None, str | None]:
    """Canonical ids; BAD_USER_INPUT when neither is given or one is malformed."""
    if robot_id is None and fleet_id is None:
        raise Invalid("robotId or fleetId is required", field="robotId")
    return (
        parse_id(robot_id, "robotId") if robot_id is not None else None,
        parse_id(fleet_id, "fleetId") if fleet_id is not None else None,
    )


async def _read(ctx: Context, upload: Any, allowed: tuple[str, ...]) -> tuple[bytes, str, str]:
    """The bytes, the lower-case extension and the file name, within the configured limits."""
    if not isinstance(upload, Upload):
        raise Invalid("file must be a multipart file upload", field="file")
    name = PurePath(upload.filename or "").name
    suffix = PurePath(name).suffix.lower().lstrip(".")
    if suffix not in allowed:
        kinds = ", ".join(f".{a}" for a in allowed)
        raise Invalid(
            f"Unsupported file type {('.' + suffix) if suffix else '(none)'}; use {kinds}", field="file"
        )
    limit = ctx.resources.settings.upload_max_bytes
    # One byte over the limit tells it is too large without reading it all.
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise Invalid(f"file must be at most {limit} bytes", field="file")
    if not data:
        raise Invalid("file is empty", field="file")
    return data, suffix, name


async def _robots(conn: Any, robot_id: str | None, fleet_id: str | None) -> tuple[str, list[dict[str, Any]]]:
    """The task's fleet and robots: the robot, or every robot of the fleet that is not OFFLINE."""
    if robot_id is not None:
        robot = await conn.fetchrow(ROBOT, robot_id)
        if robot is None:
            raise NotFound.of("Robot", robot_id)
        if fleet_id is not None and robot["fleet_id"] != fleet_id:
            raise Invalid(f"Robot {robot_id} is not in fleet {fleet_id}", field="robotId")
        return robot["fleet_id"], [dict(r) for r in await conn.fetch(ROBOTS, [robot_id])]
    assert fleet_id is not None
    if not await conn.fetchval(FLEET_EXISTS, fleet_id):
        raise NotFound.of("Fleet", fleet_id)
    robots = [dict(r) for r in await conn.fetch(ONLINE_ROBOTS, fleet_id)]
    if not robots:
        raise Invalid(f"Fleet {fleet_id} has no robot that is not OFFLINE", field="fleetId")
    return fleet_id, robots


def _failed(exc: DomainError, route: bool) -> dict[str, Any]:
    base: dict[str, Any] = {
        "success": False,
        "task_id": None,
        "file_id": None,
        "file_name": None,
        "robots": None,
    }
    return base | ({"route": None} if route else {}) | {"errors": [exc.as_payload_error()]}


async def _accept(
    ctx: Context, viewer: Viewer, robot_id: str | None, fleet_id: str | None, upload: Any, kind: str
) -> dict[str, Any]:
    settings = ctx.resources.settings
    is_route = kind == "ROUTE"
    allowed = settings.upload_route_types if is_route else settings.upload_program_types
    try:
        data, suffix, name = await _read(ctx, upload, allowed)
        route_name: str | None = None
        waypoints: list[dict[str, Any]] = []
        try:
            if is_route:
                route_name, waypoints = route_files.read_route(data, suffix)
            else:
                route_files.read_program(data, suffix)
        except ValueError as exc:
            raise Invalid(str(exc), field="file") from None
        file_id = str(uuid.uuid4())
        safe = UNSAFE.sub("_", name)[:100] or f"file.{suffix}"
        key = f"{kind.lower()}s/{file_id}/{safe}"
        async with ctx.db.acquire() as conn, conn.transaction():
            task_fleet, robots = await _robots(conn, robot_id, fleet_id)
            # Stored inside the transaction: a refused upload leaves no row, and the file is
            # removed again below when the transaction fails.
            stored = await ctx.resources.storage.put(key, data)
            try:
                await conn.execute(
                    INSERT_FILE,
                    file_id,
                    kind,
                    name,
                    upload.content_type,
                    key,
                    stored.size,
                    stored.sha256,
                    viewer.id,
                )
                route = None
                if is_route:
                    for point in waypoints:
                        point["id"] = str(uuid.uuid4())
                        for action in point["actions"]:
                            action["id"] = str(uuid.uuid4())
                    title = route_name or PurePath(name).stem or "Route"
                    route = dict(
                        returned(await conn.fetchrow(INSERT_ROUTE, title, waypoints, file_id, viewer.id))
                    )
                parameters: dict[str, Any] = {
                    "fileId": file_id,
                    "fileName": name,
                    "fileUrl": f"storage://{key}",
                    "uploadType": kind.lower(),
                    "size": stored.size,
                    "sha256": stored.sha256,
                }
                if route is not None:
                    parameters["routeId"] = route["id"]
                label = "Route" if is_route else "Program"
                description = f"{label} {name} uploaded for {len(robots)} robot(s)"
                task_id = await conn.fetchval(
                    INSERT_TASK, f"{label}: {name}", description, parameters, task_fleet, viewer.id
                )
                await conn.execute(ASSIGN, task_id, [r["id"] for r in robots])
                await conn.execute(LINK_FILE, file_id, task_id)
                changes = {**parameters, "taskId": task_id, "robotIds": [r["id"] for r in robots]}
                action = "uploadRoute" if is_route else "uploadProgram"
                await audit.record(conn, ctx, viewer.id, action, "Task", task_id, changes)
            except BaseException:
                await ctx.resources.storage.delete(key)
                raise
    except GRAPHQL_ONLY:
        raise
    except DomainError as exc:
        return _failed(exc, is_route)
    result: dict[str, Any] = {
        "success": True,
        "task_id": task_id,
        "file_id": file_id,
        "file_name": name,
        "robots": robots,
        "errors": None,
    }
    if is_route:
        result["route"] = route
    return result


async def upload_program(
    ctx: Context, viewer: Viewer, robot_id: str | None, fleet_id: str | None, upload: Any
) -> dict[str, Any]:
    return await _accept(ctx, viewer, robot_id, fleet_id, upload, "PROGRAM")


async def upload_route(
    ctx: Context, viewer: Viewer, robot_id: str | None, fleet_id: str | None, upload: Any
) -> dict[str, Any]:
    return await _accept(ctx, viewer, robot_id, fleet_id, upload, "ROUTE")
