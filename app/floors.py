"""Factory floors: their queries and loader, blueprint uploads, and placing robots on a floor."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path, PurePath
from typing import Any, Protocol, runtime_checkable

from app import audit
from app.context import Context, Viewer
from app.core.errors import Invalid, NotFound
from app.core.validation import finite, parse_id, required_text
from app.infra.db import Pool, fetch_by_ids, returned
from app.robots import record_changes

MAX_BLUEPRINT_BYTES = 20 * 1024 * 1024
BLUEPRINT_TYPES = {
    **dict.fromkeys((".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"), "IMAGE"),
    ".pdf": "PDF",
    **dict.fromkeys((".dwg", ".dxf", ".step", ".stp"), "CAD"),
}
DIMENSIONS = {"width_meters": "widthMeters", "height_meters": "heightMeters", "scale_factor": "scaleFactor"}
ORIGIN = {"origin_x": "originX", "origin_y": "originY"}

LIST_FLOORS = "SELECT * FROM factory_floors WHERE deleted_at IS NULL ORDER BY name, id LIMIT $1 OFFSET $2"
FLOORS_BY_ID = "SELECT * FROM factory_floors WHERE id = ANY($1::uuid[]) AND deleted_at IS NULL"
LOCK_FLOOR = "SELECT * FROM factory_floors WHERE id = $1 AND deleted_at IS NULL FOR UPDATE"
INSERT_FLOOR = """
INSERT INTO factory_floors (id, name, description, blueprint_url, blueprint_type, width_meters,
                            height_meters, scale_factor, origin_x, origin_y, created_by)
VALUES ($1, $2, $3, $4, $5::blueprint_type, $6, $7, $8, $9, $10, $11)
RETURNING *
"""
# NULL keeps a column; only the description may be cleared, which $3 says.
UPDATE_FLOOR = """
UPDATE factory_floors SET
  name = COALESCE($2, name),
  description = CASE WHEN $3::boolean THEN $4 ELSE description END,
  width_meters = COALESCE($5, width_meters),
  height_meters = COALESCE($6, height_meters),
  scale_factor = COALESCE($7, scale_factor),
  origin_x = COALESCE($8, origin_x),
  origin_y = COALESCE($9, origin_y),
  blueprint_url = COALESCE($10, blueprint_url),
  blueprint_type = COALESCE($11::blueprint_type, blueprint_type)
WHERE id = $1
RETURNING *
"""
DELETE_FLOOR = (
    "UPDATE factory_floors SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL RETURNING id"
)
UNPLACE_ROBOTS = """
UPDATE robots SET factory_floor_id = NULL, floor_position_x = NULL, floor_position_y = NULL,
  floor_position_theta = NULL, floor_rotation_degrees = NULL
WHERE factory_floor_id = $1
RETURNING *
"""
LOCK_ROBOT = "SELECT * FROM robots WHERE id = $1 AND deleted_at IS NULL FOR UPDATE"
PLACE_ROBOT = """
UPDATE robots SET factory_floor_id = $2, floor_position_x = $3, floor_position_y = $4,
  floor_position_theta = $5, floor_rotation_degrees = $6
WHERE id = $1
RETURNING *
"""


async def list_floors(pool: Pool, limit: int, offset: int) -> list[dict[str, Any]]:
    return [dict(r) for r in await pool.fetch(LIST_FLOORS, limit, offset)]


async def floors_by_id(pool: Pool, ids: list[str]) -> list[dict[str, Any] | None]:
    return await fetch_by_ids(pool, FLOORS_BY_ID, ids)


def _check_fields(values: dict[str, Any]) -> None:
    for key, field in DIMENSIONS.items():
        value = values.get(key)
        finite(value, field)
        if value is not None and value <= 0:
            raise Invalid(f"{field} must be greater than 0", field=field)
    for key, field in ORIGIN.items():
        finite(values.get(key), field)


@runtime_checkable
class Upload(Protocol):
    """A file of a multipart request (Starlette's UploadFile is one)."""

    filename: str | None

    async def read(self, size: int = -1) -> bytes: ...


async def _read_blueprint(upload: Any) -> tuple[bytes, str, str]:
    """The file's bytes, its lower-case suffix and its BlueprintType."""
    if not isinstance(upload, Upload):
        raise Invalid("blueprintFile must be a multipart file upload", field="blueprintFile")
    suffix = PurePath(upload.filename or "").suffix.lower()
    kind = BLUEPRINT_TYPES.get(suffix)
    if kind is None:
        allowed = ", ".join(sorted(BLUEPRINT_TYPES))
        raise Invalid(
            f"Unsupported blueprint file type {suffix or '(none)'}; use {allowed}", field="blueprintFile"
        )
    # One byte over the limit is enough to know it is too large, without reading it all.
    data = await upload.read(MAX_BLUEPRINT_BYTES + 1)
    if len(data) > MAX_BLUEPRINT_BYTES:
        raise Invalid("blueprintFile must be at most 20 MB", field="blueprintFile")
    if not data:
        raise Invalid("blueprintFile is empty", field="blueprintFile")
    return data, suffix, kind


def _blueprint_path(ctx: Context, floor_id: str, suffix: str) -> tuple[Path, str]:
    name = f"{floor_id}{suffix}"
    return ctx.resources.uploads_dir / "blueprints" / name, f"/uploads/blueprints/{name}"


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


async def create_floor(ctx: Context, viewer: Viewer, values: dict[str, Any], upload: Any) -> dict[str, Any]:
    name = required_text(values.get("name"), "name")
    _check_fields(values)
    data, suffix, kind = await _read_blueprint(upload)
    floor_id = str(uuid.uuid4())
    path, url = _blueprint_path(ctx, floor_id, suffix)
    await asyncio.to_thread(_write, path, data)
    try:
        async with ctx.db.acquire() as conn, conn.transaction():
            args = [values[k] for k in DIMENSIONS] + [values.get(k) or 0.0 for k in ORIGIN]
            floor = dict(
                returned(
                    await conn.fetchrow(
                        INSERT_FLOOR, floor_id, name, values.get("description"), url, kind, *args, viewer.id
                    )
                )
            )
            changes = {"name": name, "blueprint_url": url, "size": len(data)}
            await audit.record(conn, ctx, viewer.id, "createFactoryFloor", "FactoryFloor", floor_id, changes)
    except BaseException:
        # No row points at the file: do not leave it behind.
        await asyncio.to_thread(path.unlink, True)
        raise
    return floor


async def update_floor(
    ctx: Context, viewer: Viewer, raw_id: str, values: dict[str, Any], upload: Any | None
) -> dict[str, Any]:
    floor_id = parse_id(raw_id)
    name = required_text(values["name"], "name") if values.get("name") is not None else None
    _check_fields(values)
    blueprint = await _read_blueprint(upload) if upload is not None else None
    async with ctx.db.acquire() as conn, conn.transaction():
        current = await conn.fetchrow(LOCK_FLOOR, floor_id)
        if current is None:
            raise NotFound.of("FactoryFloor", floor_id)
        url = kind = None
        if blueprint is not None:
            data, suffix, kind = blueprint
            path, url = _blueprint_path(ctx, floor_id, suffix)
            await asyncio.to_thread(_write, path, data)
        fields = [values.get(k) for k in (*DIMENSIONS, *ORIGIN)]
        floor = dict(
            returned(
                await conn.fetchrow(
                    UPDATE_FLOOR,
                    floor_id,
                    name,
                    "description" in values,
                    values.get("description"),
                    *fields,
                    url,
                    kind,
                )
            )
        )
        changes = dict(values) | ({"blueprint_url": url} if url else {})
        await audit.record(conn, ctx, viewer.id, "updateFactoryFloor", "FactoryFloor", floor_id, changes)
    old_url = current["blueprint_url"]
    if url and old_url and old_url != url and old_url.startswith("/uploads/blueprints/"):
        # A blueprint of another type was replaced: its file is no longer referenced.
        old = ctx.resources.uploads_dir / "blueprints" / PurePath(old_url).name
        await asyncio.to_thread(old.unlink, True)
    return floor


async def delete_floor(ctx: Context, viewer: Viewer, floor_id: str) -> bool:
    """Soft delete; its robots stay in their fleets but leave the floor."""
    async with ctx.db.acquire() as conn, conn.transaction():
        if await conn.fetchval(DELETE_FLOOR, floor_id) is None:
            raise NotFound.of("FactoryFloor", floor_id)
        robots = [dict(r) for r in await conn.fetch(UNPLACE_ROBOTS, floor_id)]
        changes = {"unplaced_robots": [r["id"] for r in robots]}
        await audit.record(conn, ctx, viewer.id, "deleteFactoryFloor", "FactoryFloor", floor_id, changes)
        events = await record_changes(conn, robots)
    await ctx.events.publish_recorded(events)
    return True


def _position(floor: dict[str, Any], position: dict[str, Any] | None) -> tuple[float, float, float, float]:
    """(x, y, theta, rotation) inside the floor; the floor's centre when no position is given."""
    if position is None:
        x = floor["origin_x"] + floor["width_meters"] / 2
        y = floor["origin_y"] + floor["height_meters"] / 2
        return x, y, 0.0, 0.0
    x, y = position["position_x"], position["position_y"]
    theta, rotation = position.get("position_theta") or 0.0, position.get("rotation_degrees") or 0.0
    for value, field in (
        (x, "positionX"),
        (y, "positionY"),
        (theta, "positionTheta"),
        (rotation, "rotationDegrees"),
    ):
        finite(value, f"position.{field}")
    bounds = (
        (x, "positionX", floor["origin_x"], floor["width_meters"]),
        (y, "positionY", floor["origin_y"], floor["height_meters"]),
    )
    for value, field, low, size in bounds:
        if not low <= value <= low + size:
            raise Invalid(
                f"position.{field} {value} lies outside the floor ({low} to {low + size})",
                field=f"position.{field}",
            )
    return x, y, theta, rotation


async def _place(
    ctx: Context, viewer: Viewer, action: str, robot_id: str, floor_id: str | None, position: dict | None
) -> dict[str, Any]:
    async with ctx.db.acquire() as conn, conn.transaction():
        before = await conn.fetchrow(LOCK_ROBOT, robot_id)
        if before is None:
            raise NotFound.of("Robot", robot_id)
        if floor_id is None:
            floor_id = before["factory_floor_id"]
            if floor_id is None:
                raise Invalid("Robot is not assigned to a factory floor", field="robotId")
        floor = await conn.fetchrow(LOCK_FLOOR, floor_id)
        if floor is None:
            raise NotFound.of("FactoryFloor", floor_id)
        x, y, theta, rotation = _position(dict(floor), position)
        robot = dict(returned(await conn.fetchrow(PLACE_ROBOT, robot_id, floor_id, x, y, theta, rotation)))
        changes = {"floor_id": floor_id, "x": x, "y": y, "theta": theta, "rotation_degrees": rotation}
        await audit.record(conn, ctx, viewer.id, action, "Robot", robot_id, changes)
        events = await record_changes(conn, [robot])
    await ctx.events.publish_recorded(events)
    return robot


async def assign_robot(
    ctx: Context, viewer: Viewer, robot_id: str, floor_id: str, position: dict[str, Any] | None
) -> dict[str, Any]:
    return await _place(ctx, viewer, "assignRobotToFloor", robot_id, floor_id, position)


async def move_robot(ctx: Context, viewer: Viewer, robot_id: str, position: dict[str, Any]) -> dict[str, Any]:
    return await _place(ctx, viewer, "updateRobotFloorPosition", robot_id, None, position)
